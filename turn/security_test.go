package turn

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// rawRequest writes one STUN message on c and reads one answer.
func rawRequest(t *testing.T, c net.Conn, setters ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(setters...)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(m.Raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := readMessage(c)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	if resp.TransactionID != m.TransactionID {
		t.Fatalf("answer to another transaction")
	}
	return resp
}

func dialRaw(t *testing.T, addr netip.AddrPort) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func allocateRequest() []stun.Setter {
	return []stun.Setter{stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedTransport(protoTCP)}
}

func TestAllocateWithoutCredentialsGets401WithRealmAndNonce(t *testing.T) {
	s := startServer(t, nil)
	resp := rawRequest(t, dialRaw(t, s.Addr()), append(allocateRequest(), stun.Fingerprint)...)
	e := errorOf(resp)
	if e == nil || e.Code != CodeUnauthorized {
		t.Fatalf("answer %v, want 401", resp)
	}
	var realm stun.Realm
	var nonce stun.Nonce
	if err := realm.GetFrom(resp); err != nil || realm.String() != testRealm {
		t.Errorf("REALM %q (%v), want %q", realm, err, testRealm)
	}
	if err := nonce.GetFrom(resp); err != nil || len(nonce) == 0 {
		t.Errorf("no NONCE in the 401: %v", err)
	}
	if n := s.Allocations(); n != 0 {
		t.Errorf("%d allocations after an unauthenticated request", n)
	}
}

func TestWrongPasswordGets401(t *testing.T) {
	s := startServer(t, nil)
	c := clientFor(s.Addr().String())
	c.Password = "not-the-password"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Allocate(ctx)
	if !IsCode(err, CodeUnauthorized) {
		t.Fatalf("Allocate with a wrong password: %v, want 401", err)
	}
	c.Username, c.Password = "mallory", testPass
	if _, err := c.Allocate(ctx); !IsCode(err, CodeUnauthorized) {
		t.Fatalf("Allocate as an unknown user: %v, want 401", err)
	}
	if got := s.Metrics().Snapshot().AuthFailures; got != 2 {
		t.Errorf("auth failures counted %d, want 2", got)
	}
	if n := s.Allocations(); n != 0 {
		t.Errorf("%d allocations after refused credentials", n)
	}
}

func TestWrongRealmGets401(t *testing.T) {
	s := startServer(t, nil)
	c := dialRaw(t, s.Addr())
	resp := rawRequest(t, c, append(allocateRequest(), stun.Fingerprint)...)
	var nonce stun.Nonce
	nonce.GetFrom(resp)
	key := stun.NewLongTermIntegrity(testUser, "other.realm", testPass)
	resp = rawRequest(t, c, append(allocateRequest(), stun.NewUsername(testUser), stun.NewRealm("other.realm"), nonce, key, stun.Fingerprint)...)
	if e := errorOf(resp); e == nil || e.Code != CodeUnauthorized {
		t.Fatalf("answer %v, want 401", resp)
	}
}

// A nonce the server did not issue (here: one from another server, as
// after a restart) is stale: 438 with a fresh NONCE, and DEL's client
// retries with it transparently.
func TestStaleNonceGets438AndClientRecovers(t *testing.T) {
	s := startServer(t, nil)
	other := startServer(t, nil)
	oc := dialRaw(t, other.Addr())
	var staleNonce stun.Nonce
	staleNonce.GetFrom(rawRequest(t, oc, append(allocateRequest(), stun.Fingerprint)...))

	c := dialRaw(t, s.Addr())
	key := stun.NewLongTermIntegrity(testUser, testRealm, testPass)
	resp := rawRequest(t, c, append(allocateRequest(), stun.NewUsername(testUser), stun.NewRealm(testRealm), staleNonce, key, stun.Fingerprint)...)
	e := errorOf(resp)
	if e == nil || e.Code != CodeStaleNonce {
		t.Fatalf("answer %v, want 438", resp)
	}
	var fresh stun.Nonce
	if err := fresh.GetFrom(resp); err != nil || string(fresh) == string(staleNonce) {
		t.Fatalf("438 without a new NONCE (%v)", err)
	}
	resp = rawRequest(t, c, append(allocateRequest(), stun.NewUsername(testUser), stun.NewRealm(testRealm), fresh, key, stun.Fingerprint)...)
	if e := errorOf(resp); e != nil {
		t.Fatalf("Allocate with the fresh nonce: %v", e)
	}

	// The client, holding a stale nonce mid-session, still gets through.
	a := allocate(t, clientFor(s.Addr().String()))
	a.mu.Lock()
	a.nonce = staleNonce.String()
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Permit(ctx, loopback); err != nil {
		t.Fatalf("Permit with a stale nonce: %v", err)
	}
	a.mu.Lock()
	got := a.nonce
	a.mu.Unlock()
	if got == staleNonce.String() {
		t.Error("client kept the stale nonce")
	}
}

// A peer whose IP has no permission is refused at the relayed address; a
// permitted one gets through.
func TestPeerWithoutPermissionCannotConnect(t *testing.T) {
	s := startServer(t, nil)
	a := allocate(t, clientFor(s.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Permit(ctx, loopback); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := a.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	// 127.0.0.2 is loopback too, but has no permission.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	intruder, err := d.Dial("tcp", a.RelayedAddr().String())
	if err != nil {
		t.Fatalf("dial from 127.0.0.2: %v", err)
	}
	defer intruder.Close()
	intruder.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = intruder.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("connection without permission was not closed by the server: %v", err)
	}
	friend, err := net.Dial("tcp", a.RelayedAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer friend.Close()
	select {
	case c := <-accepted:
		defer c.Close()
		if c.RemoteAddr().String() != friend.LocalAddr().String() {
			t.Fatalf("accepted %v, want the permitted peer %v", c.RemoteAddr(), friend.LocalAddr())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("permitted peer not accepted")
	}
}

func TestDeniedPeerRangesGet403(t *testing.T) {
	s := startServer(t, func(c *ServerConfig) { c.AllowedPeers = nil })
	for _, ip := range []string{"::1", "fe80::1", "fd00::1", "ff02::1", "::", "::ffff:10.0.0.1", "::ffff:127.0.0.1"} {
		if s.PeerAllowed(netip.MustParseAddr(ip)) {
			t.Errorf("PeerAllowed(%s) = true", ip)
		}
	}
	for _, ip := range []string{"198.51.100.7", "2001:db8::1", "8.8.8.8", "172.32.0.1", "100.64.0.1"} {
		if !s.PeerAllowed(netip.MustParseAddr(ip)) {
			t.Errorf("PeerAllowed(%s) = false", ip)
		}
	}
	a := allocate(t, clientFor(s.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, ip := range []string{"127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.1.1",
		"0.0.0.0", "224.0.0.1", "255.255.255.255"} {
		if err := a.Permit(ctx, netip.MustParseAddr(ip)); !IsCode(err, CodeForbidden) {
			t.Errorf("Permit %s: %v, want 403", ip, err)
		}
	}
	if _, err := a.DialPeer(ctx, "192.168.1.1:80"); !IsCode(err, CodeForbidden) {
		t.Errorf("DialPeer to a private address: %v, want 403", err)
	}
	// A public address (TEST-NET-2; CreatePermission sends it nothing) is fine.
	if err := a.Permit(ctx, netip.MustParseAddr("198.51.100.7")); err != nil {
		t.Errorf("Permit of a public address: %v", err)
	}
	if got := s.Metrics().Snapshot().RefusedPeers; got != 9 {
		t.Errorf("refused peers counted %d, want 9", got)
	}
}

func TestQuotaGets486(t *testing.T) {
	s := startServer(t, func(c *ServerConfig) { c.UserQuota = 2 })
	c := clientFor(s.Addr().String())
	a1 := allocate(t, c)
	allocate(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Allocate(ctx); !IsCode(err, CodeQuotaReached) {
		t.Fatalf("third allocation: %v, want 486", err)
	}
	// Another user has a quota of their own.
	bob := clientFor(s.Addr().String())
	bob.Username, bob.Password = "bob", "hunter2"
	allocate(t, bob)
	// Releasing one gives the slot back.
	a1.Close()
	a3, err := c.Allocate(ctx)
	if err != nil {
		t.Fatalf("allocation after releasing one: %v", err)
	}
	a3.Close()
	if got := s.Metrics().Snapshot().QuotaRejections; got != 1 {
		t.Errorf("quota rejections counted %d, want 1", got)
	}
}

func TestRefreshLifetimeZeroReleases(t *testing.T) {
	s := startServer(t, nil)
	a := allocate(t, clientFor(s.Addr().String()))
	if n := s.Allocations(); n != 1 {
		t.Fatalf("%d allocations, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := a.do(ctx, stun.MethodRefresh, lifetime(0))
	if err != nil {
		t.Fatalf("Refresh 0: %v", err)
	}
	if life, err := getLifetime(resp); err != nil || life != 0 {
		t.Errorf("Refresh answer LIFETIME %v (%v), want 0", life, err)
	}
	// The control connection is still open, yet the allocation is gone.
	if n := s.Allocations(); n != 0 {
		t.Errorf("%d allocations after Refresh 0, want 0", n)
	}
	if c, err := net.Dial("tcp", a.RelayedAddr().String()); err == nil {
		c.Close()
		t.Errorf("relayed address %v still accepts connections", a.RelayedAddr())
	}
	if got := s.Metrics().Snapshot().TCPAllocations; got != 0 {
		t.Errorf("allocation gauge %d after release, want 0", got)
	}
}

func TestRefreshKeepsAllocationAlive(t *testing.T) {
	s := startServer(t, func(c *ServerConfig) { c.AllocationLifetime = 2 * time.Second })
	c := clientFor(s.Addr().String())
	a := allocate(t, c)
	if a.Lifetime() != 2*time.Second {
		t.Fatalf("granted lifetime %v, want the server's 2s", a.Lifetime())
	}
	// Wait for three lifetimes: without refreshes the server would drop it.
	select {
	case <-a.Done():
		t.Fatalf("allocation ended: %v", a.Err())
	case <-time.After(6 * time.Second):
	}
	if n := s.Allocations(); n != 1 {
		t.Fatalf("%d allocations after 3 lifetimes, want 1 (refreshed)", n)
	}
}

// Permissions expire (here after 1 s) unless the client refreshes them; a
// refreshed one still lets the peer in after several lifetimes, an expired
// one does not.
func TestPermissionRefresh(t *testing.T) {
	s := startServer(t, func(c *ServerConfig) { c.PermissionLifetime = time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fresh := clientFor(s.Addr().String())
	fresh.PermissionRefresh = 300 * time.Millisecond
	kept := allocate(t, fresh)
	stale := clientFor(s.Addr().String())
	stale.PermissionRefresh = time.Hour
	lapsed := allocate(t, stale)
	for _, a := range []*Allocation{kept, lapsed} {
		if err := a.Permit(ctx, loopback); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-time.After(3 * time.Second): // three permission lifetimes
	case <-kept.Done():
		t.Fatal(kept.Err())
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := kept.Accept(); err == nil {
			accepted <- c
		}
	}()
	peer, err := net.Dial("tcp", kept.RelayedAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("refreshed permission: peer not accepted")
	}
	intruder, err := net.Dial("tcp", lapsed.RelayedAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Close()
	intruder.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = intruder.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("expired permission still lets the peer in: %v", err)
	}
}

func TestConnectionBindUnknownIDGets400(t *testing.T) {
	s := startServer(t, nil)
	a := allocate(t, clientFor(s.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.bind(ctx, connectionID(0x5eed)); !IsCode(err, CodeBadRequest) {
		t.Fatalf("ConnectionBind of an unknown id: %v, want 400", err)
	}
}

// Garbage, truncated or oversized STUN on a control connection closes that
// connection; other clients and their relayed connections carry on.
func TestGarbageClosesOnlyThatConnection(t *testing.T) {
	s := startServer(t, func(c *ServerConfig) { c.HandshakeTimeout = time.Second })
	a := allocate(t, clientFor(s.Addr().String()))
	ln := loopbackListener(t)
	peerCh := acceptOne(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := a.DialPeer(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	peer := recvConn(t, peerCh, "peer")

	valid, _ := stun.Build(append(allocateRequest(), stun.Fingerprint)...)
	truncated := append([]byte(nil), valid.Raw[:headerSize]...)
	truncated[3] = 100 // announces 100 bytes, sends 8
	truncated = append(truncated, 1, 2, 3, 4, 5, 6, 7, 8)
	oversized := append([]byte(nil), valid.Raw[:headerSize]...)
	oversized[2], oversized[3] = 0x10, 0 // 4096-byte body
	oversized = append(oversized, make([]byte, 4096)...)
	cases := map[string][]byte{
		// Starts like ChannelData announcing 21536 bytes: the handshake
		// timeout ends it.
		"http":      []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"silent":    nil,
		"zeros":     make([]byte, 64),
		"truncated": truncated,
		"oversized": oversized,
		"bad-magic": append([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x43}, make([]byte, 12)...),
	}
	for name, b := range cases {
		c := dialRaw(t, s.Addr())
		c.Write(b)
		if name == "truncated" {
			c.(*net.TCPConn).CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("%s: server did not close the connection: %v", name, err)
		}
	}
	// The allocation, its control connection and its relayed connection live on.
	sendAndCheck(t, out, peer, 1<<20)
	sendAndCheck(t, peer, out, 1<<20)
	if err := a.Permit(ctx, netip.MustParseAddr("127.0.0.3")); err != nil {
		t.Fatalf("control connection broken by others' garbage: %v", err)
	}
	if n := s.Allocations(); n != 1 {
		t.Errorf("%d allocations, want 1", n)
	}
}

func TestRESTCredentials(t *testing.T) {
	now := time.Now()
	s := startServer(t, func(c *ServerConfig) {
		c.SharedSecret = "s3cret"
		c.UserQuota = 1
		c.Now = func() time.Time { return now }
	})
	u, p := RESTCredentials("s3cret", "carol", now.Add(time.Hour))
	if !strings.HasSuffix(u, ":carol") {
		t.Fatalf("REST user name %q", u)
	}
	c := &Client{Server: s.Addr().String(), Username: u, Password: p, Logger: testLogger()}
	allocate(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The quota counts carol, whatever the expiry in the user name.
	u2, p2 := RESTCredentials("s3cret", "carol", now.Add(2*time.Hour))
	c2 := &Client{Server: s.Addr().String(), Username: u2, Password: p2}
	if _, err := c2.Allocate(ctx); !IsCode(err, CodeQuotaReached) {
		t.Errorf("second allocation of carol: %v, want 486", err)
	}
	u3, p3 := RESTCredentials("s3cret", "dave", now.Add(-time.Second))
	c3 := &Client{Server: s.Addr().String(), Username: u3, Password: p3}
	if _, err := c3.Allocate(ctx); !IsCode(err, CodeUnauthorized) {
		t.Errorf("expired REST credential: %v, want 401", err)
	}
	u4, _ := RESTCredentials("s3cret", "erin", now.Add(time.Hour))
	c4 := &Client{Server: s.Addr().String(), Username: u4, Password: RESTPassword("wrong", u4)}
	if _, err := c4.Allocate(ctx); !IsCode(err, CodeUnauthorized) {
		t.Errorf("REST credential under another secret: %v, want 401", err)
	}
}

// REST credentials made here are accepted by coturn's --use-auth-secret,
// so the construction is coturn's.
func TestRESTCredentialsWithCoturn(t *testing.T) {
	addr := startCoturn(t, "--use-auth-secret", "--static-auth-secret=north")
	u, p := RESTCredentials("north", "carol", time.Now().Add(time.Hour))
	c := &Client{Server: addr, Username: u, Password: p, Logger: testLogger()}
	allocate(t, c)
	c.Password = RESTPassword("south", u)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Allocate(ctx); !IsCode(err, CodeUnauthorized) {
		t.Errorf("coturn accepted a password made with another secret: %v", err)
	}
}
