package dht

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
)

// Clock gives the node its time, so tests and simulations can drive
// maintenance without sleeping.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Transport sends datagrams for a node. The UDP transport is in udp.go; the
// simulation supplies a virtual one. Send must not keep b after it returns:
// the node encodes its replies into one buffer it reuses.
type Transport interface {
	Send(b []byte, to netip.AddrPort) error
}

// Config configures a node. The zero value is a valid config for the public
// OpenDHT network id 0 with a random node id and no identity.
type Config struct {
	ID       wire.ID            // node id; zero means random (OpenDHT node ids are random)
	Network  uint32             // network id; messages of other networks are ignored
	Identity *identity.Identity // signs, encrypts and decrypts values; optional
	// Client marks every message with OpenDHT's "is client" flag ("s",
	// honoured by 2.4.x): other nodes answer but keep us out of their routing
	// tables, so short-lived nodes (one `del dht get`) do not leave dead
	// entries behind.
	Client bool
	Clock  Clock // nil: wall clock

	StorageLimit   int // bytes of stored values; 0: DefaultStorageLimit
	RateLimitPerIP int // requests per second accepted from one IP; 0: 1024, <0: unlimited
	RateLimit      int // requests per second accepted in total; 0: 8192, <0: unlimited

	Logger *slog.Logger // nil: slog.Default()

	// Random fills b with random bytes; nil: crypto/rand. The simulation
	// sets a seeded source.
	Random func(b []byte)
}

func (c *Config) validate() error {
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Random == nil {
		c.Random = func(b []byte) { rand.Read(b) }
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RateLimitPerIP == 0 {
		c.RateLimitPerIP = 1024
	}
	if c.RateLimit == 0 {
		c.RateLimit = 8192
	}
	if c.ID.IsZero() {
		c.Random(c.ID[:])
	}
	return nil
}

// ErrClosed is returned by operations on a closed node.
var ErrClosed = errors.New("dht node closed")

// ErrNoNodes is returned when an operation finds no node to talk to.
var ErrNoNodes = errors.New("no reachable DHT node")

// Stats counts a node's traffic.
type Stats struct {
	Sent, Received           uint64 // datagrams
	RequestsSent             uint64
	Dropped                  uint64 // rate-limited, malformed, foreign network, own id
	Nodes, Values, Listeners int
	Buckets                  int
	Searches                 int
	AmplificationLimited     uint64
}

// Node is a DHT node: routing table, storage, and the client operations.
// mu guards every field below it; all protocol work happens under mu,
// driven by HandlePacket (incoming datagrams) and Tick (time).
type Node struct {
	cfg  Config
	tr   Transport
	self wire.ID
	log  *slog.Logger

	wg sync.WaitGroup // listen pumps

	mu        sync.Mutex
	closed    bool
	tab       *table
	st        *store
	tok       *tokens
	reqs      map[uint32]*request
	nextTID   uint32
	partials  map[partialKey]*partial
	searches  map[*search]struct{}
	listens   map[uint32]*listenOp
	announces map[*announcement]struct{}
	boot      []netip.AddrPort
	bootNext  time.Time
	bootDelay time.Duration
	nextMaint time.Time
	selfLook  time.Time
	rates     map[netip.Addr]*rate
	global    rate
	srcs      map[netip.AddrPort]*source
	stats     Stats

	wake chan struct{} // signalled when Tick has work sooner than NextTick said

	// Scratch space of the reply path, reused so that answering a request
	// allocates little (fresh heap pages cost page faults).
	in             wire.Message // the datagram being handled
	out            []byte
	peerBuf        []*peer
	nodes4, nodes6 []wire.Node
}

// New makes a node that sends through tr. Feed it datagrams with
// HandlePacket and time with Tick; ListenUDP does both over a real socket.
func New(cfg Config, tr Transport) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	now := cfg.Clock.Now()
	n := &Node{
		cfg: cfg, tr: tr, self: cfg.ID, log: cfg.Logger,
		tab:       newTable(cfg.ID, now),
		st:        newStore(cfg.StorageLimit),
		tok:       newTokens(cfg.Random, now),
		reqs:      map[uint32]*request{},
		partials:  map[partialKey]*partial{},
		searches:  map[*search]struct{}{},
		listens:   map[uint32]*listenOp{},
		announces: map[*announcement]struct{}{},
		rates:     map[netip.Addr]*rate{},
		srcs:      map[netip.AddrPort]*source{},
		bootDelay: 10 * time.Second,
		wake:      make(chan struct{}, 1),
	}
	var b [4]byte
	cfg.Random(b[:])
	n.nextTID = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return n, nil
}

// ID returns the node id.
func (n *Node) ID() wire.ID { return n.self }

// Stats returns counters and sizes.
func (n *Node) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stats
	s.Nodes = n.tab.len()
	s.Buckets = len(n.tab.buckets)
	s.Values = n.st.count()
	for _, k := range n.st.keys {
		s.Listeners += len(k.listeners)
	}
	s.Searches = len(n.searches)
	return s
}

// Bootstrap adds nodes to contact to join the network. They are pinged now
// and again (10 s, doubling, up to 24 h) while the routing table is empty.
func (n *Node) Bootstrap(addrs ...netip.AddrPort) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.boot = append(n.boot, addrs...)
	n.bootDelay = 10 * time.Second
	n.bootNext = time.Time{}
	n.maintainLocked(n.now())
}

// Close stops the node's operations. The transport is the caller's.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	for _, l := range n.listens {
		l.stopLocked()
	}
	for s := range n.searches {
		s.finishLocked(n, ErrClosed)
	}
	n.mu.Unlock()
	n.wg.Wait()
	return nil
}

func (n *Node) now() time.Time { return n.cfg.Clock.Now() }

func (n *Node) newTID() uint32 {
	n.nextTID += 2
	if n.nextTID == 0 {
		n.nextTID = 2
	}
	return n.nextTID
}

func (n *Node) randID() wire.ID {
	var id wire.ID
	n.cfg.Random(id[:])
	return id
}

func (n *Node) randUint64() uint64 {
	var b [8]byte
	n.cfg.Random(b[:])
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

// sendLocked writes one datagram.
func (n *Node) sendLocked(b []byte, to netip.AddrPort) {
	n.stats.Sent++
	if err := n.tr.Send(b, to); err != nil {
		n.log.Debug("dht send", "to", to, "err", err)
	}
}

// base fills the fields every outgoing message has.
func (n *Node) base(kind wire.Kind, tid uint32) wire.Message {
	return wire.Message{Kind: kind, TID: tid, UA: wire.UserAgent, Network: n.cfg.Network, ID: n.self, IsClient: n.cfg.Client}
}

// martian reports addresses OpenDHT refuses to talk to (§1).
func martian(a netip.AddrPort) bool {
	ip := a.Addr().Unmap()
	if a.Port() == 0 || !ip.IsValid() {
		return true
	}
	if ip.Is4() {
		b := ip.As4()
		return b[0] == 0 || b[0] >= 224
	}
	return ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
}

func normAddr(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// Tick runs timers: retransmissions, expiry, maintenance. ListenUDP calls
// it every 50 ms; a simulation calls it after moving its clock.
func (n *Node) Tick() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	now := n.now()
	n.retransmitLocked(now)
	n.expirePartialsLocked(now)
	n.storageMaintenanceLocked(now)
	n.tok.maintain(now)
	for _, l := range n.listens {
		l.tickLocked(n, now)
	}
	for s := range n.searches {
		s.stepLocked(n, now)
	}
	for a := range n.announces {
		if a.op == nil && !a.next.IsZero() && !now.Before(a.next) {
			n.reannounceLocked(a)
		}
	}
	n.maintainLocked(now)
}

// maintainLocked bootstraps, looks up our own id and refreshes stale
// buckets (Kademlia's bucket refresh with a random id inside the bucket).
func (n *Node) maintainLocked(now time.Time) {
	if len(n.boot) > 0 && n.tab.len() == 0 && !now.Before(n.bootNext) {
		for _, a := range n.boot {
			n.pingLocked(a, wire.ID{})
		}
		n.bootNext = now.Add(n.bootDelay)
		n.bootDelay = min(2*n.bootDelay, 24*time.Hour)
	}
	if n.tab.len() == 0 {
		return
	}
	if now.After(n.selfLook) {
		// Look up our own id every 10 minutes, more often while the
		// table is small so a young network converges quickly.
		if n.tab.len() < BucketSize {
			n.selfLook = now.Add(5 * time.Second)
		} else {
			n.selfLook = now.Add(10 * time.Minute)
		}
		n.startSearchLocked(n.self, wire.Find, nil, nil, nil)
	}
	if now.Before(n.nextMaint) {
		return
	}
	n.nextMaint = now.Add(time.Minute)
	for i, b := range n.tab.buckets {
		if now.Sub(b.changed) > bucketStaleTime {
			b.changed = now
			target := n.tab.randomIDInBucket(i, n.cfg.Random)
			n.startSearchLocked(target, wire.Find, nil, nil, nil)
		}
		// Ping peers we have not heard from for a while, so silent ones
		// expire and make room.
		for _, p := range b.peers {
			if !p.expired() && now.Sub(p.heard) > nodeGoodHeard && !p.pinging(n) {
				n.pingLocked(p.addr, p.id)
			}
		}
	}
}

func (p *peer) pinging(n *Node) bool {
	for _, r := range n.reqs {
		if r.node == p.id {
			return true
		}
	}
	return false
}

// pingLocked pings addr; id may be zero for a bootstrap address.
func (n *Node) pingLocked(addr netip.AddrPort, id wire.ID) {
	m := n.base(wire.KindQuery, n.newTID())
	m.Method = wire.Ping
	n.requestLocked(&request{to: addr, node: id, method: wire.Ping}, &m, nil)
}

func (n *Node) String() string { return fmt.Sprintf("dht node %s", n.self) }

// WaitReady waits until the routing table holds at least one node, that is
// until a bootstrap node answered.
func (n *Node) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		n.mu.Lock()
		ok, closed := n.tab.len() > 0, n.closed
		n.mu.Unlock()
		if closed {
			return ErrClosed
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no DHT node answered: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Wake is signalled when Tick should run before the delay NextTick
// returned, such as when the first node answered a bootstrap ping.
func (n *Node) Wake() <-chan struct{} { return n.wake }

func (n *Node) wakeLocked() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// NextTick returns how long until Tick has something to do (a retransmit,
// a listen refresh, maintenance), at most a second: a UDP node sleeps that
// long instead of waking at a fixed rate.
func (n *Node) NextTick() time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	next := now.Add(time.Second)
	earlier := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	for _, r := range n.reqs {
		earlier(r.next)
	}
	for _, p := range n.partials {
		earlier(p.last.Add(rxPartTimeout))
	}
	for _, l := range n.listens {
		earlier(l.nextRes)
		for _, ln := range l.nodes {
			earlier(ln.refreshed.Add(listenRefresh))
		}
	}
	for a := range n.announces {
		earlier(a.next)
	}
	earlier(n.nextMaint)
	earlier(n.selfLook)
	if len(n.boot) > 0 && n.tab.len() == 0 {
		earlier(n.bootNext)
	}
	earlier(n.tok.rotateAt)
	return max(next.Sub(now), 5*time.Millisecond)
}
