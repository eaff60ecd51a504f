package turn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pionturn "github.com/pion/turn/v5"
	"golang.org/x/sys/unix"
)

// Errors of the relay address generator; pion answers them with 508
// (Insufficient Capacity).
var (
	ErrNoRelayPort = errors.New("turn: no free relay port")
	ErrQuota       = errors.New("turn: allocation quota reached")
)

// connectTimeout bounds an outgoing peer connection for Connect: RFC 6062
// §5.2 wants at least 30 s before answering 447.
const connectTimeout = 30 * time.Second

// relayGen is del turn's RelayAddressGenerator. It differs from pion's
// built-in generators in one way that matters for security: a relayed
// address belongs to exactly one allocation. pion's generators set
// SO_REUSEPORT on every relay listener, so with a port range two allocations
// can be handed the same address and the kernel splits peers between them.
//
// Here a TCP relay port is first claimed in ports (this process), then probed
// with a listener that does not set SO_REUSEPORT (which fails if any other
// socket, reuseport or not, already holds it), and only then bound for real
// with SO_REUSEPORT — needed so that Connect's outgoing connection can use the
// relayed address as its source (RFC 6062 §5.2). Outgoing sockets never
// listen, so they never receive another allocation's peers.
type relayGen struct {
	bindIP  netip.Addr // address relay sockets bind to
	relayIP netip.Addr // address told to clients in XOR-RELAYED-ADDRESS
	minPort int        // 0: kernel-chosen ports
	maxPort int
	quota   int   // allocations per user; 0: none
	rate    int64 // bytes/s per allocation; 0: unlimited
	m       *Metrics

	mu      sync.Mutex // guards the fields below
	tcp     map[int]*relayAlloc
	udp     map[int]*relayAlloc
	perUser map[string]int
	peers   map[string]*peerConn // by connKey
}

// relayAlloc is what the generator knows of one allocation.
type relayAlloc struct {
	g       *relayGen
	port    int
	tcp     bool
	user    string
	limit   *limiter
	release sync.Once
}

func newRelayGen(bind, relay netip.Addr, minPort, maxPort, quota int, rate int64, m *Metrics) *relayGen {
	return &relayGen{
		bindIP: bind, relayIP: relay, minPort: minPort, maxPort: maxPort,
		quota: quota, rate: rate, m: m,
		tcp: map[int]*relayAlloc{}, udp: map[int]*relayAlloc{}, perUser: map[string]int{},
		peers: map[string]*peerConn{},
	}
}

func (g *relayGen) Validate() error {
	if !g.bindIP.IsValid() || !g.relayIP.IsValid() {
		return errors.New("turn: relay address not set")
	}
	if g.minPort < 0 || g.maxPort > 65535 || g.minPort > g.maxPort || (g.minPort == 0) != (g.maxPort == 0) {
		return fmt.Errorf("turn: bad relay port range %d-%d", g.minPort, g.maxPort)
	}
	return nil
}

// admit reports whether user may make one more allocation; the QuotaHandler
// calls it so that the answer is 486. claim re-checks under the same lock
// when the socket exists, so concurrent Allocates never exceed the quota.
func (g *relayGen) admit(user string) bool {
	if g.quota <= 0 {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.perUser[user] < g.quota
}

// claimLocked reserves port for a new allocation of user. g.mu is held.
func (g *relayGen) claimLocked(tcp bool, port int, user string) (*relayAlloc, error) {
	table := g.udp
	if tcp {
		table = g.tcp
	}
	if _, busy := table[port]; busy {
		return nil, ErrNoRelayPort
	}
	if g.quota > 0 && g.perUser[user] >= g.quota {
		return nil, ErrQuota
	}
	a := &relayAlloc{g: g, port: port, tcp: tcp, user: user}
	if g.rate > 0 {
		a.limit = newLimiter(g.rate)
	}
	table[port] = a
	g.perUser[user]++
	return a, nil
}

// done releases a's port and quota; it runs once, when the relay socket closes.
func (a *relayAlloc) done() {
	a.release.Do(func() {
		g := a.g
		g.mu.Lock()
		if a.tcp {
			delete(g.tcp, a.port)
		} else {
			delete(g.udp, a.port)
		}
		if g.perUser[a.user]--; g.perUser[a.user] <= 0 {
			delete(g.perUser, a.user)
		}
		g.mu.Unlock()
		g.m.allocationClosed(a.tcp)
	})
}

// candidates returns the ports to try, in order: the requested one, the
// range from a random start, or 0 (kernel's choice) a few times.
func (g *relayGen) candidates(requested int) []int {
	if requested != 0 {
		return []int{requested}
	}
	if g.minPort == 0 {
		return []int{0, 0, 0, 0}
	}
	n := g.maxPort - g.minPort + 1
	start := rand.IntN(n)
	ports := make([]int, n)
	for i := range ports {
		ports[i] = g.minPort + (start+i)%n
	}
	return ports
}

func (g *relayGen) hostPort(port int) string {
	return net.JoinHostPort(g.bindIP.String(), strconv.Itoa(port))
}

func (g *relayGen) relayAddr(port int, tcp bool) net.Addr {
	ip := net.IP(g.relayIP.AsSlice())
	if tcp {
		return &net.TCPAddr{IP: ip, Port: port}
	}
	return &net.UDPAddr{IP: ip, Port: port}
}

// AllocateListener binds the relayed address of a TCP allocation (RFC 6062 §5.1).
func (g *relayGen) AllocateListener(conf pionturn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	if !g.familyOK(conf.Network) {
		return nil, nil, fmt.Errorf("turn: relay address %v cannot serve %s", g.bindIP, conf.Network)
	}
	var lastErr error = ErrNoRelayPort
	for _, port := range g.candidates(conf.RequestedPort) {
		ln, a, err := g.listenTCP(conf.Network, port, conf.UserID)
		if errors.Is(err, ErrQuota) {
			return nil, nil, err
		}
		if err != nil {
			lastErr = err
			continue
		}
		g.m.allocationOpened(true)
		return &relayListener{Listener: ln, a: a}, g.relayAddr(a.port, true), nil
	}
	return nil, nil, lastErr
}

func (g *relayGen) listenTCP(network string, port int, user string) (net.Listener, *relayAlloc, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if port != 0 {
		if _, busy := g.tcp[port]; busy {
			return nil, nil, ErrNoRelayPort
		}
	}
	// Probe: a plain listener fails if any socket already listens on port.
	probe, err := net.Listen(network, g.hostPort(port))
	if err != nil {
		return nil, nil, err
	}
	port = probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	a, err := g.claimLocked(true, port, user)
	if err != nil {
		return nil, nil, err
	}
	lc := net.ListenConfig{Control: reusePort}
	ln, err := lc.Listen(context.Background(), network, g.hostPort(port))
	if err != nil {
		delete(g.tcp, port)
		g.perUser[user]--
		return nil, nil, err
	}
	return ln, a, nil
}

// AllocatePacketConn binds the relayed address of a UDP allocation.
func (g *relayGen) AllocatePacketConn(conf pionturn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	if !g.familyOK(conf.Network) {
		return nil, nil, fmt.Errorf("turn: relay address %v cannot serve %s", g.bindIP, conf.Network)
	}
	var lastErr error = ErrNoRelayPort
	for _, port := range g.candidates(conf.RequestedPort) {
		pc, a, err := g.listenUDP(conf.Network, port, conf.UserID)
		if errors.Is(err, ErrQuota) {
			return nil, nil, err
		}
		if err != nil {
			lastErr = err
			continue
		}
		g.m.allocationOpened(false)
		return &relayPacketConn{PacketConn: pc, a: a}, g.relayAddr(a.port, false), nil
	}
	return nil, nil, lastErr
}

func (g *relayGen) listenUDP(network string, port int, user string) (net.PacketConn, *relayAlloc, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if port != 0 {
		if _, busy := g.udp[port]; busy {
			return nil, nil, ErrNoRelayPort
		}
	}
	pc, err := net.ListenPacket(network, g.hostPort(port))
	if err != nil {
		return nil, nil, err
	}
	a, err := g.claimLocked(false, pc.LocalAddr().(*net.UDPAddr).Port, user)
	if err != nil {
		pc.Close()
		return nil, nil, err
	}
	return pc, a, nil
}

// AllocateConn opens Connect's outgoing connection from the relayed address
// (RFC 6062 §5.2).
func (g *relayGen) AllocateConn(conf pionturn.AllocateConnConfig) (net.Conn, error) {
	local, ok := conf.LocalAddr.(*net.TCPAddr)
	if !ok {
		return nil, fmt.Errorf("turn: relay address %v is not TCP", conf.LocalAddr)
	}
	g.mu.Lock()
	a := g.tcp[local.Port]
	g.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("turn: no allocation on relay port %d", local.Port)
	}
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IP(g.bindIP.AsSlice()), Port: local.Port},
		Control:   reusePort,
		Timeout:   connectTimeout,
	}
	c, err := d.Dial(conf.Network, conf.RemoteAddr.String())
	if err != nil {
		return nil, err
	}
	return newPeerConn(c.(*net.TCPConn), a), nil
}

func (g *relayGen) familyOK(network string) bool {
	switch network {
	case "tcp4", "udp4":
		return g.bindIP.Is4() || g.bindIP.IsUnspecified()
	case "tcp6", "udp6":
		return g.bindIP.Is6()
	}
	return false
}

func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// relayListener is a TCP allocation's relayed address.
type relayListener struct {
	net.Listener
	a *relayAlloc
}

func (l *relayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newPeerConn(c.(*net.TCPConn), l.a), nil
}

func (l *relayListener) Close() error {
	err := l.Listener.Close()
	l.a.done()
	return err
}

// relayPacketConn is a UDP allocation's relayed address.
type relayPacketConn struct {
	net.PacketConn
	a *relayAlloc
}

func (c *relayPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(p)
	if n > 0 {
		c.a.limit.wait(n)
		c.a.g.m.relayed(n)
	}
	return n, addr, err
}

func (c *relayPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	c.a.limit.wait(len(p))
	n, err := c.PacketConn.WriteTo(p, addr)
	c.a.g.m.relayed(n)
	return n, err
}

func (c *relayPacketConn) Close() error {
	err := c.PacketConn.Close()
	c.a.done()
	return err
}

// peerConn is the peer side of a relayed TCP connection. pion relays a bound
// connection with io.Copy in both directions through its own wrapper of this
// conn, so the generic path is Read and Write here: counted, and held to the
// allocation's bandwidth limit. When the client's data connection is a plain
// TCP socket accepted by this server (a *clientConn), io.Copy lands in that
// conn's ReadFrom/WriteTo instead, which find this peerConn in the generator's
// table by its addresses and run pumpUp/pumpDown: the same counting and limit,
// but with splice(2) between the two sockets, and a relayed half-close (when
// one side stops sending the other side's write half is shut, and the pair is
// closed only when both directions have ended; pion closes both sockets as
// soon as either io.Copy returns, so each direction waits for the other).
type peerConn struct {
	*net.TCPConn
	a   *relayAlloc
	key string // local|remote, the table key

	upDone, downDone chan struct{} // closed when that direction ended
	upOnce, downOnce sync.Once
	closed           chan struct{}
	closeOnce        sync.Once
}

func newPeerConn(c *net.TCPConn, a *relayAlloc) *peerConn {
	pc := &peerConn{
		TCPConn: c, a: a, key: connKey(c),
		upDone: make(chan struct{}), downDone: make(chan struct{}), closed: make(chan struct{}),
	}
	g := a.g
	g.m.tcpConns.Add(1)
	g.mu.Lock()
	g.peers[pc.key] = pc
	g.mu.Unlock()
	return pc
}

// connKey names a TCP connection by its two addresses.
func connKey(c interface {
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}) string {
	l, r := c.LocalAddr(), c.RemoteAddr()
	if l == nil || r == nil {
		return ""
	}
	return l.String() + "|" + r.String()
}

// lookupPeer finds the peerConn that x (pion's wrapper of it) stands for.
func (g *relayGen) lookupPeer(x any) *peerConn {
	c, ok := x.(interface {
		LocalAddr() net.Addr
		RemoteAddr() net.Addr
	})
	if !ok {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peers[connKey(c)]
}

// chunk is how much moves between two counter updates and limiter waits.
func (c *peerConn) chunk() int64 {
	if c.a.limit != nil {
		return c.a.limit.chunk()
	}
	return 1 << 20
}

func (c *peerConn) Read(p []byte) (int, error) {
	if c.a.limit != nil && int64(len(p)) > c.chunk() {
		p = p[:c.chunk()]
	}
	n, err := c.TCPConn.Read(p)
	c.a.limit.wait(n)
	c.a.g.m.relayed(n)
	return n, err
}

func (c *peerConn) Write(p []byte) (int, error) {
	c.a.limit.wait(len(p))
	n, err := c.TCPConn.Write(p)
	c.a.g.m.relayed(n)
	return n, err
}

// ReadFrom and WriteTo hide the embedded TCPConn's, which would skip the
// counter and the limit.
func (c *peerConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *peerConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}

// pumpUp moves the client's bytes to the peer until the client stops sending.
func (c *peerConn) pumpUp(client *net.TCPConn) (int64, error) {
	var total int64
	for {
		chunk := c.chunk()
		c.a.limit.wait(int(chunk))
		n, err := c.TCPConn.ReadFrom(&io.LimitedReader{R: client, N: chunk})
		c.a.limit.refund(int(chunk - n))
		c.a.g.m.relayed(int(n))
		total += n
		if err != nil {
			c.upOnce.Do(func() { close(c.upDone) })
			return total, err
		}
		if n < chunk { // end of the client's stream
			c.TCPConn.CloseWrite()
			c.upOnce.Do(func() { close(c.upDone) })
			c.waitFor(c.downDone)
			return total, nil
		}
	}
}

// pumpDown moves the peer's bytes to the client until the peer stops sending.
func (c *peerConn) pumpDown(client *net.TCPConn) (int64, error) {
	var total int64
	for {
		chunk := c.chunk()
		c.a.limit.wait(int(chunk))
		n, err := client.ReadFrom(&io.LimitedReader{R: c.TCPConn, N: chunk})
		c.a.limit.refund(int(chunk - n))
		c.a.g.m.relayed(int(n))
		total += n
		if err != nil {
			c.downOnce.Do(func() { close(c.downDone) })
			return total, err
		}
		if n < chunk { // the peer closed its write half
			client.CloseWrite()
			c.downOnce.Do(func() { close(c.downDone) })
			c.waitFor(c.upDone)
			return total, nil
		}
	}
}

func (c *peerConn) waitFor(other chan struct{}) {
	select {
	case <-other:
	case <-c.closed:
	}
}

func (c *peerConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		g := c.a.g
		g.m.tcpConns.Add(-1)
		g.mu.Lock()
		if g.peers[c.key] == c {
			delete(g.peers, c.key)
		}
		g.mu.Unlock()
	})
	return c.TCPConn.Close()
}

// limiter is a token bucket in bytes. A nil limiter does nothing.
type limiter struct {
	rate  float64 // bytes per second
	burst float64

	mu     sync.Mutex // guards the fields below
	tokens float64
	last   time.Time
}

func newLimiter(rate int64) *limiter {
	burst := float64(rate) / 10
	if burst < 16<<10 {
		burst = 16 << 10
	}
	return &limiter{rate: float64(rate), burst: burst, tokens: burst, last: time.Now()}
}

func (l *limiter) chunk() int64 {
	return int64(min(l.burst, 64<<10))
}

// wait takes n tokens, sleeping for as long as the bucket is in debt.
func (l *limiter) wait(n int) {
	if l == nil || n <= 0 {
		return
	}
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	debt := -l.tokens
	l.mu.Unlock()
	if debt > 0 {
		time.Sleep(time.Duration(debt / l.rate * float64(time.Second)))
	}
}

// refund returns n tokens taken by wait but not used.
func (l *limiter) refund(n int) {
	if l == nil || n <= 0 {
		return
	}
	l.mu.Lock()
	l.tokens = min(l.burst, l.tokens+float64(n))
	l.mu.Unlock()
}

// Metrics counts what a server does; Server.Metrics exposes it to
// Prometheus. All fields are safe for concurrent use.
type Metrics struct {
	tcpAllocs, udpAllocs atomic.Int64
	allocsTotal          atomic.Int64
	tcpConns             atomic.Int64
	relayedBytes         atomic.Int64
	authFailures         atomic.Int64
	refusedPeers         atomic.Int64
	quotaRejections      atomic.Int64
}

func (m *Metrics) allocationOpened(tcp bool) {
	m.allocsTotal.Add(1)
	if tcp {
		m.tcpAllocs.Add(1)
	} else {
		m.udpAllocs.Add(1)
	}
}

func (m *Metrics) allocationClosed(tcp bool) {
	if tcp {
		m.tcpAllocs.Add(-1)
	} else {
		m.udpAllocs.Add(-1)
	}
}

func (m *Metrics) relayed(n int) {
	if n > 0 {
		m.relayedBytes.Add(int64(n))
	}
}

// MetricsSnapshot is a copy of the counters at one moment.
type MetricsSnapshot struct {
	TCPAllocations, UDPAllocations int64
	AllocationsTotal               int64
	TCPConnections                 int64
	RelayedBytes                   int64
	AuthFailures                   int64
	RefusedPeers                   int64
	QuotaRejections                int64
}

// Snapshot returns the current values.
func (m *Metrics) Snapshot() MetricsSnapshot {
	return MetricsSnapshot{
		TCPAllocations: m.tcpAllocs.Load(), UDPAllocations: m.udpAllocs.Load(),
		AllocationsTotal: m.allocsTotal.Load(), TCPConnections: m.tcpConns.Load(),
		RelayedBytes: m.relayedBytes.Load(), AuthFailures: m.authFailures.Load(),
		RefusedPeers: m.refusedPeers.Load(), QuotaRejections: m.quotaRejections.Load(),
	}
}

// WritePrometheus writes the metrics in the Prometheus text exposition
// format (version 0.0.4).
func (m *Metrics) WritePrometheus(w io.Writer) error {
	s := m.Snapshot()
	_, err := fmt.Fprintf(w, `# HELP del_turn_allocations Current allocations by relay transport.
# TYPE del_turn_allocations gauge
del_turn_allocations{transport="tcp"} %d
del_turn_allocations{transport="udp"} %d
# HELP del_turn_allocations_total Allocations created since start.
# TYPE del_turn_allocations_total counter
del_turn_allocations_total %d
# HELP del_turn_tcp_connections Current relayed TCP peer connections.
# TYPE del_turn_tcp_connections gauge
del_turn_tcp_connections %d
# HELP del_turn_relayed_bytes_total Bytes relayed between clients and peers, both directions.
# TYPE del_turn_relayed_bytes_total counter
del_turn_relayed_bytes_total %d
# HELP del_turn_auth_failures_total Requests refused for unknown users, bad passwords, expired or wrong-realm credentials.
# TYPE del_turn_auth_failures_total counter
del_turn_auth_failures_total %d
# HELP del_turn_refused_peers_total Peer addresses refused by the denied ranges (403).
# TYPE del_turn_refused_peers_total counter
del_turn_refused_peers_total %d
# HELP del_turn_quota_rejections_total Allocate requests refused by the per-user quota (486).
# TYPE del_turn_quota_rejections_total counter
del_turn_quota_rejections_total %d
`, s.TCPAllocations, s.UDPAllocations, s.AllocationsTotal, s.TCPConnections, s.RelayedBytes,
		s.AuthFailures, s.RefusedPeers, s.QuotaRejections)
	return err
}
