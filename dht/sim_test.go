package dht

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
)

// fakeClock is a clock moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// simNet is an in-process network: datagrams go into one FIFO queue and are
// delivered one at a time; a datagram to an address with no node is lost.
// There are no sockets, so the simulation can never send real traffic.
type simNet struct {
	clock     *fakeClock
	rng       *rand.Rand
	nodes     map[netip.AddrPort]*Node
	addrs     []netip.AddrPort
	queue     []simPkt
	delivered int
	lost      int
	nextIP    uint32
	steps     int
	onLost    func(simPkt)
	busy      map[netip.AddrPort]bool // nodes that may have timers due
}

type simPkt struct {
	b        []byte
	from, to netip.AddrPort
}

type simTransport struct {
	net  *simNet
	self netip.AddrPort
}

func (t simTransport) Send(b []byte, to netip.AddrPort) error {
	t.net.queue = append(t.net.queue, simPkt{append([]byte(nil), b...), t.self, to})
	t.net.busy[t.self] = true // a node that sends may have requests to retry
	return nil
}

func newSimNet(seed uint64) *simNet {
	return &simNet{
		clock:  &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		nodes:  map[netip.AddrPort]*Node{},
		busy:   map[netip.AddrPort]bool{},
		nextIP: 10<<24 | 1,
	}
}

func (s *simNet) add(t testing.TB) *Node {
	s.nextIP++
	ip := s.nextIP
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), 4222)
	seed := s.rng.Uint64()
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), byte(seed >> 32), byte(seed >> 40), byte(seed >> 48), byte(seed >> 56)})
	n, err := New(Config{
		Clock:          s.clock,
		Random:         func(b []byte) { r.Read(b) },
		RateLimitPerIP: -1,
		RateLimit:      -1,
	}, simTransport{s, addr})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.addrs) > 0 {
		n.Bootstrap(s.addrs[s.rng.IntN(len(s.addrs))])
	}
	s.nodes[addr] = n
	s.addrs = append(s.addrs, addr)
	s.run()
	n.Tick() // starts the lookup of its own id
	s.run()
	return n
}

func (s *simNet) remove(i int) {
	a := s.addrs[i]
	delete(s.nodes, a)
	s.addrs = slices.Delete(s.addrs, i, i+1)
}

func (s *simNet) run() {
	for len(s.queue) > 0 {
		p := s.queue[0]
		s.queue = s.queue[1:]
		n := s.nodes[p.to]
		if n == nil {
			s.lost++
			if s.onLost != nil {
				s.onLost(p)
			}
			continue
		}
		s.delivered++
		n.HandlePacket(p.b, p.from)
	}
	s.queue = s.queue[:0:0]
}

// advance moves time and runs the timers of the nodes that sent something
// and still have requests, lookups or listens in progress; every 240th call
// (a minute of 250 ms steps), and any step of a second or more, runs every
// node's timers, maintenance included.
func (s *simNet) advance(d time.Duration) {
	s.clock.Add(d)
	s.steps++
	all := s.steps%240 == 0 || d >= time.Second
	if all {
		for a, n := range s.nodes {
			n.Tick()
			s.busy[a] = true
		}
	} else {
		for a := range s.busy {
			if n := s.nodes[a]; n != nil {
				n.Tick()
			}
		}
	}
	s.run()
	for a := range s.busy {
		n := s.nodes[a]
		if n == nil {
			delete(s.busy, a)
			continue
		}
		n.mu.Lock()
		idle := len(n.reqs) == 0 && len(n.searches) == 0 && len(n.partials) == 0 && len(n.listens) == 0
		n.mu.Unlock()
		if idle {
			delete(s.busy, a)
		}
	}
}

func (s *simNet) random() *Node { return s.nodes[s.addrs[s.rng.IntN(len(s.addrs))]] }

// waitOp runs the network until done reports true, moving time in steps so
// that retransmissions and timeouts fire.
func (s *simNet) waitOp(done func() bool) {
	s.run()
	for i := 0; !done() && i < 200; i++ {
		s.advance(250 * time.Millisecond)
	}
}

type simStats struct {
	ok, total        int
	rounds, messages []int
}

func (st *simStats) String() string {
	slices.Sort(st.rounds)
	slices.Sort(st.messages)
	med := func(a []int) int {
		if len(a) == 0 {
			return 0
		}
		return a[len(a)/2]
	}
	return fmt.Sprintf("%d/%d found (%.2f%%), median rounds %d, median messages per get %d",
		st.ok, st.total, 100*float64(st.ok)/float64(st.total), med(st.rounds), med(st.messages))
}

// trial puts a value from one random node and gets it from another.
func (s *simNet) trial(t testing.TB, st *simStats) {
	key := wire.ID{}
	for i := range key {
		key[i] = byte(s.rng.UintN(256))
	}
	v := &wire.Value{Data: []byte("sim"), ID: s.rng.Uint64() | 1}
	putter := s.random()
	putDone := false
	putter.mu.Lock()
	putter.putLocked(key, v, func(*PutResult, error) { putDone = true })
	putter.mu.Unlock()
	s.waitOp(func() bool { return putDone })

	getter := s.random()
	var res *GetResult
	getter.mu.Lock()
	getter.getLocked(key, nil, func(r *GetResult, err error) { res = r; _ = err })
	getter.mu.Unlock()
	s.waitOp(func() bool { return res != nil })
	st.total++
	if res == nil {
		return
	}
	st.rounds = append(st.rounds, res.Rounds)
	st.messages = append(st.messages, res.Messages)
	for _, g := range res.Values {
		if g.ID == v.ID {
			st.ok++
			return
		}
	}
}

// TestSimulation builds a network of in-process nodes (500 by default;
// DEL_DHT_SIM_NODES=10000 for the full run) and measures lookups without
// churn and while 30 % of the nodes are replaced.
func TestSimulation(t *testing.T) {
	size := 300
	if v, err := strconv.Atoi(os.Getenv("DEL_DHT_SIM_NODES")); err == nil && v > 0 {
		size = v
	}
	trials, churnTrials := 100, 100
	if size >= 5000 {
		trials, churnTrials = 1000, 500
	}
	s := newSimNet(1)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	for i := 0; i < size; i++ {
		s.add(t)
	}
	// Let the network settle: a few rounds of maintenance.
	for i := 0; i < 4; i++ {
		s.advance(10 * time.Second)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d nodes joined in %v (wall), %d datagrams; heap %.1f KiB per node",
		size, time.Since(start).Round(time.Millisecond), s.delivered, float64(after.HeapAlloc-before.HeapAlloc)/1024/float64(size))

	var calm simStats
	for i := 0; i < trials; i++ {
		s.trial(t, &calm)
	}
	t.Logf("no churn: %s", &calm)

	// Churn: replace 30 % of the nodes while lookups go on.
	var churn simStats
	replaced := 0
	for i := 0; i < churnTrials; i++ {
		for replaced < (i+1)*size*3/10/churnTrials {
			s.remove(s.rng.IntN(len(s.addrs)))
			s.add(t)
			replaced++
		}
		s.trial(t, &churn)
		if (i+1)%100 == 0 && size >= 5000 {
			t.Logf("churn progress: %d trials, %d replaced, %s", i+1, replaced, &churn)
		}
	}
	t.Logf("with %d of %d nodes replaced: %s", replaced, size, &churn)

	if float64(calm.ok) < 0.999*float64(calm.total) {
		t.Errorf("lookup success without churn %d/%d, want ≥ 99.9%%", calm.ok, calm.total)
	}
	if float64(churn.ok) < 0.99*float64(churn.total) {
		t.Errorf("lookup success with churn %d/%d, want ≥ 99%%", churn.ok, churn.total)
	}
}
