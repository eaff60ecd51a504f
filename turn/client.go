package turn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"
)

// Client reaches one TURN server over TCP (or TLS) with long-term
// credentials. Its zero value is not usable: Server, Username and Password
// are required. A Client holds no connection; each Allocate makes one.
type Client struct {
	// Server is the TURN server's HOST:PORT.
	Server string
	// Username and Password are the long-term credentials (RFC 8489 §9.2);
	// for REST API credentials, see RESTCredentials.
	Username, Password string
	// TLSConfig, if set, makes every connection to the server TLS
	// (turns:, RFC 8656 §3.1). ServerName defaults to Server's host.
	TLSConfig *tls.Config
	// Lifetime is the allocation lifetime to ask for; 0: the server's
	// default (10 minutes). The allocation is refreshed at half of it.
	Lifetime time.Duration
	// PermissionRefresh is how often permissions are refreshed; 0: every
	// 4 minutes (they last 5, RFC 8656 §9).
	PermissionRefresh time.Duration
	// DialContext opens TCP connections to the server; nil: net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives debug logs; nil: slog.Default().
	Logger *slog.Logger
}

// ErrAllocationClosed is returned by an Allocation's methods after Close or
// after the control connection was lost.
var ErrAllocationClosed = fmt.Errorf("turn: allocation closed: %w", net.ErrClosed)

// bindTimeout bounds the ConnectionBind of an incoming connection; the
// server drops an unbound peer connection after 30 s (RFC 6062 §5.3).
const bindTimeout = 30 * time.Second

func (c *Client) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// dial opens a connection to the server, TLS if configured.
func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	dial := c.DialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	conn, err := dial(ctx, "tcp", c.Server)
	if err != nil {
		return nil, fmt.Errorf("turn: dial %s: %w", c.Server, err)
	}
	if c.TLSConfig == nil {
		return conn, nil
	}
	cfg := c.TLSConfig.Clone()
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(c.Server)
		cfg.ServerName = host
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("turn: tls handshake with %s: %w", c.Server, err)
	}
	return tc, nil
}

// Allocate makes a TCP allocation (RFC 6062 §5.1) on a new control
// connection. The Allocation is a net.Listener on the relayed address; it is
// refreshed until Close.
func (c *Client) Allocate(ctx context.Context) (*Allocation, error) {
	if c.Server == "" || c.Username == "" {
		return nil, errors.New("turn: client needs a server and a user name")
	}
	ctrl, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	a := &Allocation{
		c: c, ctrl: ctrl, log: c.logger().With("turn", c.Server),
		pending:  map[[stun.TransactionIDSize]byte]chan *stun.Message{},
		perms:    map[netip.Addr]bool{},
		accepted: make(chan net.Conn),
		done:     make(chan struct{}),
		closing:  make(chan struct{}),
	}
	a.life, a.endLife = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.readLoop()

	attrs := []stun.Setter{requestedTransport(protoTCP)}
	if c.Lifetime > 0 {
		attrs = append(attrs, lifetime(c.Lifetime))
	}
	resp, err := a.do(ctx, stun.MethodAllocate, attrs...)
	if err != nil {
		a.shutdown(err)
		a.wg.Wait()
		return nil, err
	}
	relayed, err1 := getXORAddr(resp, stun.AttrXORRelayedAddress)
	mapped, _ := getXORAddr(resp, stun.AttrXORMappedAddress)
	life, err2 := getLifetime(resp)
	if err := errors.Join(err1, err2); err != nil {
		a.shutdown(err)
		a.wg.Wait()
		return nil, fmt.Errorf("turn: Allocate response: %w", err)
	}
	a.relayed, a.mapped = relayed, mapped
	a.mu.Lock()
	a.lifetime = life
	a.mu.Unlock()
	a.log.Debug("turn: allocated", "relayed", relayed, "mapped", mapped, "lifetime", life)
	a.wg.Add(1)
	go a.refreshLoop()
	return a, nil
}

// Allocation is a TCP allocation on a TURN server. As a net.Listener it
// accepts peers that connect to the relayed address (each peer's IP needs a
// permission first, see Permit); DialPeer connects out through it. Close
// releases it, and with it every connection relayed through it: keep it
// open while they are in use.
type Allocation struct {
	c       *Client
	ctrl    net.Conn
	log     *slog.Logger
	relayed netip.AddrPort
	mapped  netip.AddrPort

	writeMu sync.Mutex // serialises writes on ctrl

	mu       sync.Mutex // guards the fields below
	realm    string
	nonce    string
	key      stun.MessageIntegrity
	pending  map[[stun.TransactionIDSize]byte]chan *stun.Message
	perms    map[netip.Addr]bool
	lifetime time.Duration
	err      error // why the allocation ended

	accepted  chan net.Conn
	done      chan struct{} // closed when the control connection is gone
	closing   chan struct{} // closed when Close starts
	closeOnce sync.Once
	failOnce  sync.Once
	wg        sync.WaitGroup  // readLoop, refreshLoop, binds of incoming connections
	life      context.Context // cancelled when done closes
	endLife   context.CancelFunc
}

// RelayedAddr is the relayed transport address peers connect to.
func (a *Allocation) RelayedAddr() netip.AddrPort { return a.relayed }

// MappedAddr is this client's address as the server saw it (server reflexive).
func (a *Allocation) MappedAddr() netip.AddrPort { return a.mapped }

// Addr is RelayedAddr as a *net.TCPAddr (net.Listener).
func (a *Allocation) Addr() net.Addr { return net.TCPAddrFromAddrPort(a.relayed) }

// Lifetime is the lifetime the server granted at the last Allocate or Refresh.
func (a *Allocation) Lifetime() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lifetime
}

// Done is closed when the allocation has ended (Close, or the control
// connection was lost); Err then says why.
func (a *Allocation) Done() <-chan struct{} { return a.done }

// Err is why the allocation ended, nil while it lives.
func (a *Allocation) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Permit installs (or refreshes) permissions for peer IPs
// (CreatePermission, RFC 8656 §9); they are refreshed until Close.
func (a *Allocation) Permit(ctx context.Context, ips ...netip.Addr) error {
	if len(ips) == 0 {
		return nil
	}
	attrs := make([]stun.Setter, 0, len(ips))
	for _, ip := range ips {
		attrs = append(attrs, xorAddr{stun.AttrXORPeerAddress, netip.AddrPortFrom(ip.Unmap(), 0)})
	}
	if _, err := a.do(ctx, stun.MethodCreatePermission, attrs...); err != nil {
		return err
	}
	a.mu.Lock()
	for _, ip := range ips {
		a.perms[ip.Unmap()] = true
	}
	a.mu.Unlock()
	return nil
}

// Accept waits for a peer's connection to the relayed address
// (ConnectionAttempt, then ConnectionBind on a new connection; RFC 6062 §5.3)
// and returns it. Its RemoteAddr is the peer, LocalAddr the relayed address.
func (a *Allocation) Accept() (net.Conn, error) {
	select {
	case c := <-a.accepted:
		return c, nil
	case <-a.done:
		return nil, a.endErr()
	}
}

// DialPeer connects to a peer through the relay (Connect, then
// ConnectionBind on a new connection; RFC 6062 §4.3), creating the peer's
// permission first if needed.
func (a *Allocation) DialPeer(ctx context.Context, addr string) (net.Conn, error) {
	peer, err := netip.ParseAddrPort(addr)
	if err != nil {
		tcp, rerr := net.DefaultResolver.LookupNetIP(ctx, "ip", hostOf(addr))
		if rerr != nil || len(tcp) == 0 {
			return nil, fmt.Errorf("turn: peer address %q: %w", addr, err)
		}
		_, port, _ := net.SplitHostPort(addr)
		peer, err = netip.ParseAddrPort(net.JoinHostPort(tcp[0].String(), port))
		if err != nil {
			return nil, fmt.Errorf("turn: peer address %q: %w", addr, err)
		}
	}
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	a.mu.Lock()
	permitted := a.perms[peer.Addr()]
	a.mu.Unlock()
	if !permitted {
		if err := a.Permit(ctx, peer.Addr()); err != nil {
			return nil, err
		}
	}
	resp, err := a.do(ctx, stun.MethodConnect, xorAddr{stun.AttrXORPeerAddress, peer})
	if err != nil {
		return nil, err
	}
	cid, err := getConnectionID(resp)
	if err != nil {
		return nil, fmt.Errorf("turn: Connect response: %w", err)
	}
	conn, err := a.bind(ctx, cid)
	if err != nil {
		return nil, err
	}
	return &relayConn{Conn: conn, local: a.Addr(), remote: net.TCPAddrFromAddrPort(peer)}, nil
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// Close releases the allocation (Refresh with LIFETIME 0, RFC 8656 §7.2),
// closes the control connection and waits for the allocation's goroutines.
// Connections returned by Accept or DialPeer end with it (the server closes
// them). Safe to call more than once.
func (a *Allocation) Close() error {
	a.closeOnce.Do(func() {
		close(a.closing)
		select {
		case <-a.done:
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if _, err := a.do(ctx, stun.MethodRefresh, lifetime(0)); err != nil {
				a.log.Debug("turn: release", "err", err)
			}
			cancel()
		}
		a.shutdown(ErrAllocationClosed)
		a.wg.Wait()
		for {
			select {
			case c := <-a.accepted:
				c.Close()
				continue
			default:
			}
			break
		}
	})
	return nil
}

// shutdown ends the allocation with err: the control connection closes,
// which ends readLoop, which closes done.
func (a *Allocation) shutdown(err error) {
	a.failOnce.Do(func() {
		a.mu.Lock()
		if a.err == nil {
			a.err = err
		}
		a.mu.Unlock()
		a.ctrl.Close()
	})
}

func (a *Allocation) endErr() error {
	if err := a.Err(); err != nil && !errors.Is(err, ErrAllocationClosed) {
		return fmt.Errorf("%w: %w", ErrAllocationClosed, err)
	}
	return ErrAllocationClosed
}

// readLoop reads the control connection: responses go to the waiting
// request, ConnectionAttempt indications start a ConnectionBind.
func (a *Allocation) readLoop() {
	defer a.wg.Done()
	defer a.endLife()
	defer close(a.done)
	for {
		m, err := readMessage(a.ctrl)
		if err != nil {
			a.shutdown(fmt.Errorf("turn: control connection: %w", err))
			return
		}
		switch m.Type.Class {
		case stun.ClassSuccessResponse, stun.ClassErrorResponse:
			a.mu.Lock()
			ch := a.pending[m.TransactionID]
			delete(a.pending, m.TransactionID)
			a.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case stun.ClassIndication:
			if m.Type.Method == stun.MethodConnectionAttempt {
				a.onConnectionAttempt(m)
			}
		}
	}
}

func (a *Allocation) onConnectionAttempt(m *stun.Message) {
	cid, err := getConnectionID(m)
	if err != nil {
		a.log.Debug("turn: bad ConnectionAttempt", "err", err)
		return
	}
	peer, err := getXORAddr(m, stun.AttrXORPeerAddress)
	if err != nil {
		a.log.Debug("turn: bad ConnectionAttempt", "err", err)
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithTimeout(a.life, bindTimeout)
		defer cancel()
		conn, err := a.bind(ctx, cid)
		if err != nil {
			a.log.Debug("turn: ConnectionBind", "peer", peer, "err", err)
			return
		}
		rc := &relayConn{Conn: conn, local: a.Addr(), remote: net.TCPAddrFromAddrPort(peer)}
		select {
		case a.accepted <- rc:
		case <-a.done:
			rc.Close()
		}
	}()
}

// refreshLoop refreshes the allocation at half its lifetime and the
// permissions every PermissionRefresh.
func (a *Allocation) refreshLoop() {
	defer a.wg.Done()
	every := a.c.PermissionRefresh
	if every <= 0 {
		every = 4 * time.Minute
	}
	perms := time.NewTicker(every)
	defer perms.Stop()
	alloc := time.NewTimer(max(a.Lifetime()/2, time.Second))
	defer alloc.Stop()
	for {
		select {
		case <-a.closing:
			return
		case <-a.done:
			return
		case <-alloc.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			want := a.c.Lifetime
			if want <= 0 {
				want = a.Lifetime()
			}
			resp, err := a.do(ctx, stun.MethodRefresh, lifetime(want))
			cancel()
			next := 5 * time.Second
			if err == nil {
				if life, lerr := getLifetime(resp); lerr == nil && life > 0 {
					a.mu.Lock()
					a.lifetime = life
					a.mu.Unlock()
					next = max(life/2, time.Second)
				}
			} else {
				a.log.Warn("turn: refresh failed", "err", err)
				if IsCode(err, CodeAllocationMismatch) {
					a.shutdown(err)
					return
				}
			}
			alloc.Reset(next)
		case <-perms.C:
			a.mu.Lock()
			ips := make([]netip.Addr, 0, len(a.perms))
			for ip := range a.perms {
				ips = append(ips, ip)
			}
			a.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := a.Permit(ctx, ips...); err != nil {
				a.log.Warn("turn: permission refresh failed", "err", err)
			}
			cancel()
		}
	}
}

// build makes a request with the current credentials (if any yet).
func (a *Allocation) build(method stun.Method, attrs []stun.Setter) (*stun.Message, bool, error) {
	setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
	setters = append(setters, attrs...)
	a.mu.Lock()
	authed := a.key != nil
	if authed {
		setters = append(setters, stun.NewUsername(a.c.Username), stun.NewRealm(a.realm), stun.NewNonce(a.nonce), a.key)
	}
	a.mu.Unlock()
	setters = append(setters, stun.Fingerprint)
	m, err := stun.Build(setters...)
	return m, authed, err
}

// learn takes realm and nonce from a 401 or 438 answer (RFC 8489 §9.2.4).
// It reports whether a retry can succeed.
func (a *Allocation) learn(resp *stun.Message, authed bool, code int) bool {
	var realm stun.Realm
	var nonce stun.Nonce
	if nonce.GetFrom(resp) != nil {
		return false
	}
	hasRealm := realm.GetFrom(resp) == nil
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case code == CodeUnauthorized && !authed && hasRealm:
		a.realm = realm.String()
		a.key = stun.NewLongTermIntegrity(a.c.Username, a.realm, a.c.Password)
	case code == CodeStaleNonce:
		if hasRealm && realm.String() != a.realm {
			a.realm = realm.String()
			a.key = stun.NewLongTermIntegrity(a.c.Username, a.realm, a.c.Password)
		}
	default:
		return false
	}
	a.nonce = nonce.String()
	return true
}

// do sends a request on the control connection and waits for its answer,
// authenticating on 401 and renewing the nonce on 438.
func (a *Allocation) do(ctx context.Context, method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	for try := 0; try < 3; try++ {
		m, authed, err := a.build(method, attrs)
		if err != nil {
			return nil, err
		}
		ch := make(chan *stun.Message, 1)
		a.mu.Lock()
		a.pending[m.TransactionID] = ch
		a.mu.Unlock()
		forget := func() {
			a.mu.Lock()
			delete(a.pending, m.TransactionID)
			a.mu.Unlock()
		}
		a.writeMu.Lock()
		if dl, ok := ctx.Deadline(); ok {
			a.ctrl.SetWriteDeadline(dl)
		}
		_, err = a.ctrl.Write(m.Raw)
		a.ctrl.SetWriteDeadline(time.Time{})
		a.writeMu.Unlock()
		if err != nil {
			forget()
			a.shutdown(err)
			return nil, fmt.Errorf("turn: %v: %w", method, err)
		}
		var resp *stun.Message
		select {
		case resp = <-ch:
		case <-ctx.Done():
			forget()
			return nil, fmt.Errorf("turn: %v: %w", method, ctx.Err())
		case <-a.done:
			forget()
			return nil, fmt.Errorf("turn: %v: %w", method, a.endErr())
		}
		if e := errorOf(resp); e != nil {
			if (e.Code == CodeUnauthorized || e.Code == CodeStaleNonce) && a.learn(resp, authed, e.Code) {
				continue
			}
			return resp, e
		}
		if authed {
			a.mu.Lock()
			key := a.key
			a.mu.Unlock()
			if err := key.Check(resp); err != nil {
				return nil, fmt.Errorf("turn: %v response: bad MESSAGE-INTEGRITY: %w", method, err)
			}
		}
		return resp, nil
	}
	return nil, fmt.Errorf("turn: %v: server keeps asking for credentials", method)
}

// bind opens a data connection and binds it to connection id cid
// (ConnectionBind, RFC 6062 §4.4/§5.4). After the success response the
// connection carries the peer's bytes only.
func (a *Allocation) bind(ctx context.Context, cid connectionID) (net.Conn, error) {
	conn, err := a.c.dial(ctx)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(bindTimeout))
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for try := 0; try < 3; try++ {
		m, authed, err := a.build(stun.MethodConnectionBind, []stun.Setter{cid})
		if err != nil {
			conn.Close()
			return nil, err
		}
		if _, err := conn.Write(m.Raw); err != nil {
			conn.Close()
			return nil, fmt.Errorf("turn: ConnectionBind: %w", err)
		}
		resp, err := readMessage(conn)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("turn: ConnectionBind: %w", err)
		}
		if resp.TransactionID != m.TransactionID {
			conn.Close()
			return nil, errors.New("turn: ConnectionBind: answer to another transaction")
		}
		if e := errorOf(resp); e != nil {
			if (e.Code == CodeUnauthorized || e.Code == CodeStaleNonce) && a.learn(resp, authed, e.Code) {
				continue
			}
			conn.Close()
			return nil, e
		}
		if !stop() {
			conn.Close()
			return nil, fmt.Errorf("turn: ConnectionBind: %w", ctx.Err())
		}
		conn.SetDeadline(time.Time{})
		return conn, nil
	}
	conn.Close()
	return nil, errors.New("turn: ConnectionBind: server keeps asking for credentials")
}

// readMessage reads exactly one STUN message from a stream, never more, so
// that what follows a ConnectionBind answer stays in the socket.
func readMessage(r io.Reader) (*stun.Message, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n, err := frameLen(hdr[:])
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[headerSize:]); err != nil {
		return nil, err
	}
	return decodeMessage(buf)
}

// relayConn is a connection relayed by the TURN server: LocalAddr is the
// relayed address and RemoteAddr the peer. It keeps the socket's ReadFrom,
// WriteTo and CloseWrite so that copies can use sendfile/splice.
type relayConn struct {
	net.Conn
	local, remote net.Addr
}

func (c *relayConn) LocalAddr() net.Addr  { return c.local }
func (c *relayConn) RemoteAddr() net.Addr { return c.remote }

func (c *relayConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c *relayConn) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := c.Conn.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}

// CloseWrite shuts the sending half. Through del turn the peer then reads
// EOF and can still answer; coturn 4.6 instead resets the peer connection,
// so a protocol must not rely on it.
func (c *relayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
