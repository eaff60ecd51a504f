package turn

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/logging"
	pionturn "github.com/pion/turn/v5"
)

// DefaultDeniedPeers are the peer ranges a server refuses unless allowed
// explicitly: relaying into them lets anyone reach the server's own host
// or private networks (CVE-2020-26262 in coturn). Unspecified and "this
// network", loopback, RFC 1918, link-local, unique-local, multicast,
// broadcast.
var DefaultDeniedPeers = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("ff00::/8"),
}

// LoopbackPeers are the ranges --allow-loopback-peers allows.
var LoopbackPeers = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
}

// ServerConfig configures a Server. Zero values are safe where documented.
type ServerConfig struct {
	// Listen is the HOST:PORT of the TCP and UDP listeners (same port;
	// port 0 picks one). Empty: no plain listener (TLSListen must be set).
	Listen string
	// TLSListen is the HOST:PORT of a TURN-over-TLS listener (RFC 8656
	// §3.1); TLSConfig must then hold a certificate. Empty: no TLS.
	TLSListen string
	TLSConfig *tls.Config

	// Realm of the long-term credentials (RFC 8489 §9.2). Required.
	Realm string
	// Users maps user names to passwords.
	Users map[string]string
	// SharedSecret enables coturn-compatible TURN REST API credentials
	// (draft-uberti-behave-turn-rest-00): user name "EXPIRY:NAME" (or just
	// "EXPIRY"), EXPIRY in Unix seconds, password
	// base64(HMAC-SHA1(SharedSecret, username)). Quotas count NAME.
	SharedSecret string

	// RelayIP is the address given to clients as XOR-RELAYED-ADDRESS;
	// default: the host of Listen (or TLSListen) when it is a specific IP.
	RelayIP netip.Addr
	// RelayBind is the address relay sockets bind to; default: RelayIP.
	RelayBind netip.Addr
	// MinPort, MaxPort bound relay ports (inclusive); both 0: the kernel
	// picks. Never shared between allocations.
	MinPort, MaxPort int

	// DeniedPeers are peer ranges refused with 403; nil means
	// DefaultDeniedPeers. AllowedPeers are exceptions to them.
	DeniedPeers  []netip.Prefix
	AllowedPeers []netip.Prefix

	// UserQuota caps concurrent allocations per user; 0: no cap.
	UserQuota int
	// BandwidthLimit caps each allocation, bytes per second over all its
	// connections and both directions; 0: no cap.
	BandwidthLimit int64
	// AllocationLifetime is the lifetime granted when the client asks for
	// none or for more than an hour (RFC 8656 §7.2; pion grants any asked
	// lifetime under an hour); 0: 10 minutes.
	AllocationLifetime time.Duration

	// HandshakeTimeout closes a client connection that has not sent an
	// authenticated request after that long of silence (half-sent frames
	// included); 0: 30 seconds. Authenticated connections have no timeout:
	// allocation lifetimes bound them.
	HandshakeTimeout time.Duration

	// PermissionLifetime is how long a permission lasts without refresh
	// (RFC 8656 §9: 300 s); 0: 5 minutes. Tests shorten it.
	PermissionLifetime time.Duration

	// Logger receives the server's logs; nil: slog.Default().
	Logger *slog.Logger
	// Now is the clock for REST credential expiry; nil: time.Now.
	Now func() time.Time
}

func (c *ServerConfig) validate() error {
	if c.Realm == "" {
		return errors.New("turn: a realm is required")
	}
	if c.Listen == "" && c.TLSListen == "" {
		return errors.New("turn: nothing to listen on")
	}
	if c.TLSListen != "" && (c.TLSConfig == nil || (len(c.TLSConfig.Certificates) == 0 && c.TLSConfig.GetCertificate == nil)) {
		return errors.New("turn: TLS listener without a certificate")
	}
	if len(c.Users) == 0 && c.SharedSecret == "" {
		return errors.New("turn: no users and no shared secret: nobody could allocate")
	}
	if c.MinPort < 0 || c.MaxPort > 65535 || c.MinPort > c.MaxPort || (c.MinPort == 0) != (c.MaxPort == 0) {
		return fmt.Errorf("turn: bad relay port range %d-%d", c.MinPort, c.MaxPort)
	}
	if c.UserQuota < 0 || c.BandwidthLimit < 0 || c.AllocationLifetime < 0 || c.PermissionLifetime < 0 {
		return errors.New("turn: negative quota, bandwidth or lifetime")
	}
	return nil
}

// Server is a TURN server (RFC 8656) with TCP allocations (RFC 6062), UDP
// allocations and STUN Binding (RFC 8489), built on pion/turn's server.
type Server struct {
	cfg     ServerConfig
	log     *slog.Logger
	metrics *Metrics
	gen     *relayGen
	pion    *pionturn.Server

	tcpAddr, udpAddr, tlsAddr netip.AddrPort

	mu     sync.Mutex // guards conns, byAddr and closed
	conns  map[*clientConn]struct{}
	byAddr map[string]*clientConn // by remote address
	// closed is set once Close has started.
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// NewServer validates cfg, binds the listeners and starts serving.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: &Metrics{}, conns: map[*clientConn]struct{}{}, byAddr: map[string]*clientConn{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.cfg.Now == nil {
		s.cfg.Now = time.Now
	}
	if s.cfg.HandshakeTimeout <= 0 {
		s.cfg.HandshakeTimeout = 30 * time.Second
	}
	if s.cfg.DeniedPeers == nil {
		s.cfg.DeniedPeers = DefaultDeniedPeers
	}
	relayIP, bindIP, err := s.relayAddrs()
	if err != nil {
		return nil, err
	}
	s.gen = newRelayGen(bindIP, relayIP, cfg.MinPort, cfg.MaxPort, cfg.UserQuota, cfg.BandwidthLimit, s.metrics)
	if err := s.gen.Validate(); err != nil {
		return nil, err
	}

	var pcs []pionturn.PacketConnConfig
	var lns []pionturn.ListenerConfig
	closeAll := func() {
		for _, p := range pcs {
			p.PacketConn.Close()
		}
		for _, l := range lns {
			l.Listener.Close()
		}
	}
	if cfg.Listen != "" {
		tcp, udp, err := listenTCPUDP(cfg.Listen)
		if err != nil {
			return nil, err
		}
		s.tcpAddr = tcp.Addr().(*net.TCPAddr).AddrPort()
		s.udpAddr = udp.LocalAddr().(*net.UDPAddr).AddrPort()
		lns = append(lns, pionturn.ListenerConfig{Listener: &trackingListener{Listener: tcp, s: s}, RelayAddressGenerator: s.gen, PermissionHandler: s.permit})
		pcs = append(pcs, pionturn.PacketConnConfig{PacketConn: udp, RelayAddressGenerator: s.gen, PermissionHandler: s.permit})
	}
	if cfg.TLSListen != "" {
		ln, err := net.Listen("tcp", cfg.TLSListen)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("turn: tls listen: %w", err)
		}
		s.tlsAddr = ln.Addr().(*net.TCPAddr).AddrPort()
		tl := tls.NewListener(&trackingListener{Listener: ln, s: s}, cfg.TLSConfig)
		lns = append(lns, pionturn.ListenerConfig{Listener: tl, RelayAddressGenerator: s.gen, PermissionHandler: s.permit})
	}

	s.pion, err = pionturn.NewServer(pionturn.ServerConfig{
		PacketConnConfigs:  pcs,
		ListenerConfigs:    lns,
		LoggerFactory:      slogFactory{s.log},
		Realm:              cfg.Realm,
		AuthHandler:        s.auth,
		QuotaHandler:       s.quota,
		AllocationLifetime: cfg.AllocationLifetime,
		PermissionTimeout:  cfg.PermissionLifetime,
		EventHandler: pionturn.EventHandler{
			OnAuth: func(src, dst net.Addr, proto, user, realm, method string, ok bool) {
				if ok {
					s.authenticated(src)
				} else {
					s.metrics.authFailures.Add(1)
					s.log.Info("turn: bad credentials", "client", src, "user", user, "method", method)
				}
			},
			OnAllocationCreated: func(src, dst net.Addr, proto, user, realm string, relay net.Addr, port int) {
				s.log.Info("turn: allocation", "client", src, "user", user, "relay", relay)
			},
			OnAllocationDeleted: func(src, dst net.Addr, proto, user, realm string) {
				s.log.Info("turn: allocation released", "client", src, "user", user)
			},
		},
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	return s, nil
}

func (s *Server) relayAddrs() (relay, bind netip.Addr, err error) {
	relay, bind = s.cfg.RelayIP, s.cfg.RelayBind
	if !relay.IsValid() {
		l := s.cfg.Listen
		if l == "" {
			l = s.cfg.TLSListen
		}
		host, _, err := net.SplitHostPort(l)
		if err != nil {
			return relay, bind, fmt.Errorf("turn: listen address %q: %w", l, err)
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || ip.IsUnspecified() {
			return relay, bind, fmt.Errorf("turn: listening on %q: set the relay address", l)
		}
		relay = ip
	}
	if !bind.IsValid() {
		bind = relay
	}
	return relay.Unmap(), bind.Unmap(), nil
}

// listenTCPUDP binds TCP and UDP on the same port, retrying a few times when
// the port was chosen by the kernel for TCP and is taken for UDP.
func listenTCPUDP(addr string) (net.Listener, net.PacketConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("turn: listen address %q: %w", addr, err)
	}
	for try := 0; ; try++ {
		tcp, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("turn: listen: %w", err)
		}
		p := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err == nil {
			return tcp, udp, nil
		}
		tcp.Close()
		if port != "0" || try == 10 {
			return nil, nil, fmt.Errorf("turn: listen udp: %w", err)
		}
	}
}

// Addr is the TCP (and UDP) listening address; invalid without Listen.
func (s *Server) Addr() netip.AddrPort { return s.tcpAddr }

// TLSAddr is the TLS listening address; invalid without TLSListen.
func (s *Server) TLSAddr() netip.AddrPort { return s.tlsAddr }

// Metrics returns the server's counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Allocations returns the number of live allocations.
func (s *Server) Allocations() int { return s.pion.AllocationCount() }

// Close stops listening, releases every allocation and closes every client
// connection. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := s.conns
		s.conns = map[*clientConn]struct{}{}
		s.mu.Unlock()
		s.closeErr = s.pion.Close()
		for c := range conns {
			c.TCPConn.Close()
		}
	})
	return s.closeErr
}

// auth is the long-term credential check (RFC 8489 §9.2): it returns the
// key MD5(username:realm:password) for the user, or refuses.
func (s *Server) auth(ra *pionturn.RequestAttributes) (string, []byte, bool) {
	if ra.Realm != s.cfg.Realm {
		return s.refuse(ra, "wrong realm")
	}
	if pw, ok := s.cfg.Users[ra.Username]; ok {
		return ra.Username, pionturn.GenerateAuthKey(ra.Username, ra.Realm, pw), true
	}
	if s.cfg.SharedSecret == "" {
		return s.refuse(ra, "unknown user")
	}
	expiry, name, _ := strings.Cut(ra.Username, ":")
	t, err := strconv.ParseInt(expiry, 10, 64)
	if err != nil {
		return s.refuse(ra, "unknown user")
	}
	if s.cfg.Now().Unix() > t {
		return s.refuse(ra, "expired REST credential")
	}
	if name == "" {
		name = ra.Username
	}
	return name, pionturn.GenerateAuthKey(ra.Username, ra.Realm, RESTPassword(s.cfg.SharedSecret, ra.Username)), true
}

func (s *Server) refuse(ra *pionturn.RequestAttributes, why string) (string, []byte, bool) {
	s.metrics.authFailures.Add(1)
	s.log.Info("turn: refused credentials", "client", ra.SrcAddr, "user", ra.Username, "why", why)
	return "", nil, false
}

// RESTPassword is the TURN REST API password of username under secret:
// base64(HMAC-SHA1(secret, username)), as coturn's --use-auth-secret.
func RESTPassword(secret, username string) string {
	h := hmac.New(sha1.New, []byte(secret))
	io.WriteString(h, username)
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// RESTCredentials returns a user name and password for name valid until
// expiry, for a server with this shared secret.
func RESTCredentials(secret, name string, expiry time.Time) (username, password string) {
	username = strconv.FormatInt(expiry.Unix(), 10) + ":" + name
	return username, RESTPassword(secret, username)
}

// PeerAllowed reports whether the server relays to ip.
func (s *Server) PeerAllowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.cfg.AllowedPeers {
		if p.Contains(ip) {
			return true
		}
	}
	for _, p := range s.cfg.DeniedPeers {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// permit is pion's PermissionHandler: CreatePermission, ChannelBind and
// Connect to a denied peer get 403.
func (s *Server) permit(client net.Addr, peer net.IP) bool {
	ip, ok := netip.AddrFromSlice(peer)
	if ok && s.PeerAllowed(ip) {
		return true
	}
	s.metrics.refusedPeers.Add(1)
	s.log.Info("turn: refused peer", "client", client, "peer", peer)
	return false
}

// quota is pion's QuotaHandler (486 when it says no).
func (s *Server) quota(user, realm string, src net.Addr) bool {
	if s.gen.admit(user) {
		return true
	}
	s.metrics.quotaRejections.Add(1)
	s.log.Info("turn: allocation quota reached", "client", src, "user", user)
	return false
}

// trackingListener remembers the connections it accepts so Close can cut
// them; pion's server does not close its clients' sockets.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &clientConn{TCPConn: c.(*net.TCPConn), s: l.s}
	l.s.mu.Lock()
	if l.s.closed {
		l.s.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	}
	l.s.conns[cc] = struct{}{}
	l.s.byAddr[cc.RemoteAddr().String()] = cc
	l.s.mu.Unlock()
	return cc, nil
}

// authenticated lifts the handshake timeout of the connection from src. pion
// calls it (OnAuth) from that connection's read loop, between two Reads.
func (s *Server) authenticated(src net.Addr) {
	s.mu.Lock()
	c := s.byAddr[src.String()]
	s.mu.Unlock()
	if c != nil && !c.authed {
		c.authed = true
		c.TCPConn.SetReadDeadline(time.Time{})
	}
}

// clientConn is a connection from a client: a control connection, or a
// data connection once ConnectionBind has succeeded (RFC 6062 §5.4). Then
// pion relays with io.Copy(peer, clientConn) and io.Copy(clientConn, peer),
// which call WriteTo and ReadFrom here: if the peer side is one of ours, the
// bytes move with splice(2) (see peerConn).
type clientConn struct {
	*net.TCPConn
	s      *Server
	once   sync.Once
	authed bool // only touched by the connection's read loop
}

// Read bounds the wait for each read until the client has authenticated.
func (c *clientConn) Read(p []byte) (int, error) {
	if !c.authed {
		c.TCPConn.SetReadDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	}
	return c.TCPConn.Read(p)
}

func (c *clientConn) WriteTo(w io.Writer) (int64, error) {
	if pc := c.s.gen.lookupPeer(w); pc != nil {
		return pc.pumpUp(c.TCPConn)
	}
	return io.Copy(w, struct{ io.Reader }{c.TCPConn})
}

func (c *clientConn) ReadFrom(r io.Reader) (int64, error) {
	if pc := c.s.gen.lookupPeer(r); pc != nil {
		return pc.pumpDown(c.TCPConn)
	}
	return io.Copy(struct{ io.Writer }{c.TCPConn}, r)
}

func (c *clientConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		if k := c.RemoteAddr().String(); c.s.byAddr[k] == c {
			delete(c.s.byAddr, k)
		}
		c.s.mu.Unlock()
	})
	return c.TCPConn.Close()
}

// slogFactory sends pion's logs to slog: trace and debug at Debug, the rest
// at their level.
type slogFactory struct{ l *slog.Logger }

func (f slogFactory) NewLogger(scope string) logging.LeveledLogger {
	return slogLogger{f.l.With("scope", "pion/"+scope)}
}

type slogLogger struct{ l *slog.Logger }

const levelTrace = slog.LevelDebug - 4

func (l slogLogger) logf(level slog.Level, format string, args ...any) {
	if l.l.Enabled(context.Background(), level) {
		l.l.Log(context.Background(), level, fmt.Sprintf(format, args...))
	}
}

func (l slogLogger) Trace(msg string)                  { l.logf(levelTrace, "%s", msg) }
func (l slogLogger) Tracef(format string, args ...any) { l.logf(levelTrace, format, args...) }
func (l slogLogger) Debug(msg string)                  { l.logf(slog.LevelDebug, "%s", msg) }
func (l slogLogger) Debugf(format string, args ...any) { l.logf(slog.LevelDebug, format, args...) }
func (l slogLogger) Info(msg string)                   { l.logf(slog.LevelInfo, "%s", msg) }
func (l slogLogger) Infof(format string, args ...any)  { l.logf(slog.LevelInfo, format, args...) }
func (l slogLogger) Warn(msg string)                   { l.logf(slog.LevelWarn, "%s", msg) }
func (l slogLogger) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args...) }
func (l slogLogger) Error(msg string)                  { l.logf(slog.LevelError, "%s", msg) }
func (l slogLogger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
