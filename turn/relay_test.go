package turn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/del-share/del/internal/testenv"
	"github.com/pion/stun/v4"
)

// With a narrow port range, every allocation gets its own relayed address,
// a port another program holds with SO_REUSEPORT is skipped, and every peer
// reaches the allocation whose address it dialed. pion's own generators set
// SO_REUSEPORT on relay listeners and fail this (facts.md: 134/200 shared).
func TestRelayPortsNeverShared(t *testing.T) {
	const n = 24
	base := 31000 + int(time.Now().UnixNano()%50)*40
	// Another program's listener on a port of the range, with SO_REUSEPORT.
	squatPort := base + 5
	lc := net.ListenConfig{Control: reusePort}
	squatter, err := lc.Listen(context.Background(), "tcp4", net.JoinHostPort("127.0.0.1", itoa(squatPort)))
	if err == nil {
		defer squatter.Close()
	}
	s := startServer(t, func(c *ServerConfig) { c.MinPort, c.MaxPort = base, base+n-1 })
	c := clientFor(s.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var allocs []*Allocation
	ports := map[uint16]bool{}
	for {
		a, err := c.Allocate(ctx)
		if err != nil {
			if !IsCode(err, CodeInsufficientCapacity) {
				t.Fatalf("Allocate %d: %v, want success or 508 when the range is used up", len(allocs)+1, err)
			}
			break
		}
		t.Cleanup(func() { a.Close() })
		p := a.RelayedAddr().Port()
		if ports[p] {
			t.Fatalf("relayed port %d handed out twice", p)
		}
		if int(p) < base || int(p) >= base+n {
			t.Fatalf("relayed port %d outside %d-%d", p, base, base+n-1)
		}
		if int(p) == squatPort {
			t.Fatalf("relayed port %d is held by another socket with SO_REUSEPORT", p)
		}
		ports[p] = true
		allocs = append(allocs, a)
		if len(allocs) > n {
			t.Fatal("more allocations than ports")
		}
	}
	if len(allocs) < n/2 {
		t.Fatalf("only %d allocations in a range of %d ports", len(allocs), n)
	}
	t.Logf("%d allocations on %d ports", len(allocs), n)

	// Each peer writes the index of the allocation it dialed; each
	// allocation must read its own index.
	var wg sync.WaitGroup
	errs := make(chan error, len(allocs))
	for i, a := range allocs {
		if err := a.Permit(ctx, loopback); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := a.Accept()
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			var b [4]byte
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(conn, b[:]); err != nil {
				errs <- err
				return
			}
			if got := int(binary.BigEndian.Uint32(b[:])); got != i {
				errs <- errors.New("allocation " + itoa(i) + " got the peer of allocation " + itoa(got))
			}
		}()
	}
	var peers []net.Conn
	for i, a := range allocs {
		conn, err := net.Dial("tcp", a.RelayedAddr().String())
		if err != nil {
			t.Fatalf("dial relayed %v: %v", a.RelayedAddr(), err)
		}
		peers = append(peers, conn)
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(i))
		conn.Write(b[:])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, p := range peers {
		p.Close()
	}
	// Released ports come back.
	allocs[0].Close()
	a, err := c.Allocate(ctx)
	if err != nil {
		t.Fatalf("Allocate after a release: %v", err)
	}
	a.Close()
}

func itoa(i int) string { return big.NewInt(int64(i)).String() }

// Through del turn, a half-close is relayed: each side can still answer
// after the other stopped sending. (coturn resets instead.)
func TestHalfCloseRelayed(t *testing.T) {
	s := startServer(t, nil)
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
	peer := recvConn(t, peerCh, "peer").(*net.TCPConn)
	out.SetDeadline(time.Now().Add(10 * time.Second))
	peer.SetDeadline(time.Now().Add(10 * time.Second))

	peer.Write([]byte("question"))
	peer.CloseWrite()
	got, err := io.ReadAll(out)
	if err != nil || string(got) != "question" {
		t.Fatalf("client read %q, %v; want question then EOF", got, err)
	}
	if _, err := out.Write([]byte("answer")); err != nil {
		t.Fatalf("client answer after the peer's half-close: %v", err)
	}
	out.(interface{ CloseWrite() error }).CloseWrite()
	got, err = io.ReadAll(peer)
	if err != nil || string(got) != "answer" {
		t.Fatalf("peer read %q, %v; want answer then EOF", got, err)
	}
}

// A peer may send before the client has bound its connection: del turn
// leaves the bytes in the socket until ConnectionBind, nothing is lost.
func TestEarlyPeerDataKept(t *testing.T) {
	s := startServer(t, nil)
	a := allocate(t, clientFor(s.Addr().String()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Permit(ctx, loopback); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	peer, err := net.Dial("tcp", a.RelayedAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	wrote := make(chan error, 1)
	go func() { _, err := peer.Write(data); wrote <- err }()
	in, err := a.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	in.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(data))
	if _, err := io.ReadFull(in, got); err != nil {
		t.Fatalf("read early data: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("early data differs")
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

func TestBandwidthLimit(t *testing.T) {
	const rate = 1_000_000
	s := startServer(t, func(c *ServerConfig) { c.BandwidthLimit = rate })
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
	const size = 1_500_000
	start := time.Now()
	sendAndCheck(t, out, peer, size)
	took := time.Since(start)
	// Burst is rate/10; the rest moves at the rate: at least ~1.3 s.
	if min := 1200 * time.Millisecond; took < min {
		t.Errorf("%d bytes at %d B/s took %v, want at least %v", size, rate, took, min)
	}
	if took > 6*time.Second {
		t.Errorf("%d bytes at %d B/s took %v: far too slow", size, rate, took)
	}
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	s := startServer(t, func(c *ServerConfig) {
		c.TLSListen = "127.0.0.1:0"
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c := clientFor(s.TLSAddr().String())
	c.TLSConfig = &tls.Config{RootCAs: pool}
	a := allocate(t, c)
	ln := loopbackListener(t)
	peerCh := acceptOne(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := a.DialPeer(ctx, ln.Addr().String())
	if err != nil {
		t.Fatalf("DialPeer over TLS: %v", err)
	}
	defer out.Close()
	peer := recvConn(t, peerCh, "peer")
	sendAndCheck(t, out, peer, 2<<20)
	sendAndCheck(t, peer, out, 2<<20)

	// A client that does not trust the certificate gets nowhere.
	bad := clientFor(s.TLSAddr().String())
	bad.TLSConfig = &tls.Config{}
	if _, err := bad.Allocate(ctx); err == nil {
		t.Error("Allocate over TLS with an untrusted certificate succeeded")
	}
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// The server answers STUN Binding requests on TCP and UDP with the
// client's address (RFC 8489 §7.3), without credentials.
func TestSTUNBinding(t *testing.T) {
	s := startServer(t, nil)
	tc := dialRaw(t, s.Addr())
	resp := rawRequest(t, tc, stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if got, err := getXORAddr(resp, stun.AttrXORMappedAddress); err != nil || got.String() != tc.LocalAddr().String() {
		t.Errorf("TCP Binding: XOR-MAPPED-ADDRESS %v (%v), want %v", got, err, tc.LocalAddr())
	}
	uc, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	uc.Write(m.Raw)
	buf := make([]byte, 1500)
	n, err := uc.Read(buf)
	if err != nil {
		t.Fatalf("UDP Binding: %v", err)
	}
	resp, err = decodeMessage(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	if got, err := getXORAddr(resp, stun.AttrXORMappedAddress); err != nil || got.String() != uc.LocalAddr().String() {
		t.Errorf("UDP Binding: XOR-MAPPED-ADDRESS %v (%v), want %v", got, err, uc.LocalAddr())
	}
}

// A UDP allocation over UDP (RFC 8656) also works: Allocate with
// REQUESTED-TRANSPORT=17 gets a relayed UDP address in the range.
func TestUDPAllocation(t *testing.T) {
	s := startServer(t, nil)
	uc, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	ask := func(setters ...stun.Setter) *stun.Message {
		m := stun.MustBuild(setters...)
		uc.SetDeadline(time.Now().Add(5 * time.Second))
		uc.Write(m.Raw)
		buf := make([]byte, 1500)
		n, err := uc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := decodeMessage(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	base := []stun.Setter{stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedTransport(protoUDP)}
	resp := ask(append(base, stun.Fingerprint)...)
	var nonce stun.Nonce
	nonce.GetFrom(resp)
	resp = ask(append(base, stun.NewUsername(testUser), stun.NewRealm(testRealm), nonce,
		stun.NewLongTermIntegrity(testUser, testRealm, testPass), stun.Fingerprint)...)
	if e := errorOf(resp); e != nil {
		t.Fatalf("UDP Allocate: %v", e)
	}
	relayed, err := getXORAddr(resp, stun.AttrXORRelayedAddress)
	if err != nil || relayed.Addr() != loopback {
		t.Fatalf("relayed %v (%v)", relayed, err)
	}
	if got := s.Metrics().Snapshot().UDPAllocations; got != 1 {
		t.Errorf("UDP allocation gauge %d, want 1", got)
	}
}

func TestMetricsCount(t *testing.T) {
	s := startServer(t, nil)
	a := allocate(t, clientFor(s.Addr().String()))
	ln := loopbackListener(t)
	peerCh := acceptOne(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := a.DialPeer(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := recvConn(t, peerCh, "peer")
	sendAndCheck(t, out, peer, 3<<20)
	m := s.Metrics().Snapshot()
	if m.TCPAllocations != 1 || m.TCPConnections != 1 || m.AllocationsTotal != 1 {
		t.Errorf("gauges %+v, want 1 allocation and 1 connection", m)
	}
	var sb strings.Builder
	s.Metrics().WritePrometheus(&sb)
	for _, line := range []string{`del_turn_allocations{transport="tcp"} 1`, "del_turn_tcp_connections 1", "del_turn_allocations_total 1"} {
		if !strings.Contains(sb.String(), line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, sb.String())
		}
	}
	// Bytes are counted per chunk of a splice, and all of them once the
	// connection has ended.
	out.Close()
	peer.Close()
	waitGauges := func(what string, done func(MetricsSnapshot) bool) {
		deadline := time.Now().Add(5 * time.Second)
		for !done(s.Metrics().Snapshot()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v", what, s.Metrics().Snapshot())
			}
			time.Sleep(10 * time.Millisecond) // polling the gauges
		}
	}
	waitGauges("connection gauge did not return to 0", func(m MetricsSnapshot) bool { return m.TCPConnections == 0 })
	if got := s.Metrics().Snapshot().RelayedBytes; got != 3<<20+1 {
		t.Errorf("relayed bytes %d, want %d (3 MiB + 1 confirmation byte)", got, 3<<20+1)
	}
	a.Close()
	waitGauges("allocation gauge did not return to 0", func(m MetricsSnapshot) bool { return m.TCPAllocations == 0 })
}

// 1,000 concurrent TCP allocations on loopback, each relaying an echo
// exchange, within a bounded time; afterwards goroutines and file
// descriptors return to where they were.
func TestLoad1000Allocations(t *testing.T) {
	if testing.Short() {
		t.Skip("load test skipped in -short mode")
	}
	const n = 1000
	const payload = 16 << 10
	raiseFDLimit(t, 10*n+1000)
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), countFDs(t)

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s, err := NewServer(ServerConfig{Listen: "127.0.0.1:0", Realm: testRealm,
		Users: map[string]string{testUser: testPass}, AllowedPeers: LoopbackPeers, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var echoWG sync.WaitGroup
	echoWG.Add(1)
	go func() {
		defer echoWG.Done()
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			echoWG.Add(1)
			go func() { defer echoWG.Done(); io.Copy(c, c); c.Close() }()
		}
	}()

	start := time.Now()
	allocs := make([]*Allocation, n)
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			a, err := clientFor(s.Addr().String()).Allocate(ctx)
			if err != nil {
				errs <- err
				return
			}
			allocs[i] = a
			c, err := a.DialPeer(ctx, echo.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	setup := time.Since(start)
	if got := s.Allocations(); got != n && len(errs) == 0 {
		t.Errorf("server holds %d allocations, want %d", got, n)
	}
	// All at once: every allocation relays an echo of payload bytes.
	for i := range n {
		if conns[i] == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conns[i]
			c.SetDeadline(time.Now().Add(60 * time.Second))
			data := make([]byte, payload)
			rand.Read(data)
			go c.Write(data)
			got := make([]byte, payload)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- err
				return
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				errs <- errors.New("echo differs")
			}
		}()
	}
	wg.Wait()
	relay := time.Since(start) - setup
	close(errs)
	nerr := 0
	for err := range errs {
		if nerr++; nerr <= 5 {
			t.Error(err)
		}
	}
	if nerr > 0 {
		t.Errorf("%d errors", nerr)
	}
	t.Logf("%d allocations set up in %v, all relayed %d KiB in %v; server relayed %d bytes",
		n, setup.Round(time.Millisecond), payload>>10, relay.Round(time.Millisecond), s.Metrics().Snapshot().RelayedBytes)

	for i := range n {
		if conns[i] != nil {
			conns[i].Close()
		}
		if allocs[i] != nil {
			allocs[i].Close()
		}
	}
	s.Close()
	echo.Close()
	echoWG.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for {
		g, fd := runtime.NumGoroutine(), countFDs(t)
		if g <= baseG+2 && fd <= baseFD+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("leak: %d goroutines (baseline %d), %d fds (baseline %d)\n%s", g, baseG, fd, baseFD, buf[:min(len(buf), 4000)])
		}
		time.Sleep(20 * time.Millisecond) // polling for goroutines to exit
	}
}

func raiseFDLimit(t *testing.T, want uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= want {
		return
	}
	if rl.Max < want {
		testenv.Missing(t, "the file descriptor limit %d (hard %d) is below the %d this test needs", rl.Cur, rl.Max, want)
	}
	old := rl
	rl.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// On an IPv6 listener the relay is IPv6 too (RFC 6156), both ways.
func TestIPv6(t *testing.T) {
	probe, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		testenv.Missing(t, "no IPv6 loopback: %v", err)
	}
	probe.Close()
	s := startServer(t, func(c *ServerConfig) { c.Listen = "[::1]:0" })
	a := allocate(t, clientFor(s.Addr().String()))
	if !a.RelayedAddr().Addr().Is6() {
		t.Fatalf("relayed address %v is not IPv6", a.RelayedAddr())
	}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peerCh := acceptOne(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := a.DialPeer(ctx, ln.Addr().String())
	if err != nil {
		t.Fatalf("DialPeer over IPv6: %v", err)
	}
	defer out.Close()
	peer := recvConn(t, peerCh, "peer")
	sendAndCheck(t, out, peer, 1<<20)
	sendAndCheck(t, peer, out, 1<<20)
}
