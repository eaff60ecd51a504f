package dht

import (
	"net/netip"
	"time"

	"github.com/del-share/del/dht/wire"
)

// Retransmission (§9): 3 sends; after each, wait d = 2d + U(0, 250 ms)
// starting from d = 0.5 s, so retries come ≈1 s and ≈2 s apart and the
// request expires ≈4-5.75 s after the last send.
const (
	maxAttempts  = 3
	firstBackoff = 500 * time.Millisecond
	backoffJit   = 250 * time.Millisecond
)

type request struct {
	tid      uint32
	to       netip.AddrPort
	node     wire.ID // zero while the id is unknown (bootstrap ping)
	method   wire.Method
	msg      []byte
	parts    [][]byte
	attempts int
	d        time.Duration
	next     time.Time

	onReply func(*wire.Message)
	onError func(*wire.Message)
	// onTimeout is called with final=false when the first retry goes out
	// (a lookup then asks another node) and with final=true on expiry.
	onTimeout func(final bool)
}

// requestLocked registers and sends a request built from m (whose TID it
// sets). parts are value fragments resent with every attempt.
func (n *Node) requestLocked(r *request, m *wire.Message, parts [][]byte) {
	if m.TID == 0 {
		m.TID = n.newTID()
	}
	r.tid = m.TID
	r.msg = m.Marshal()
	r.parts = parts
	r.d = firstBackoff
	n.reqs[r.tid] = r
	n.stats.RequestsSent++
	n.sendAttemptLocked(r, n.now())
}

func (n *Node) sendAttemptLocked(r *request, now time.Time) {
	n.sendLocked(r.msg, r.to)
	for _, p := range r.parts {
		n.sendLocked(p, r.to)
	}
	r.attempts++
	var j [2]byte
	n.cfg.Random(j[:])
	r.d = 2*r.d + time.Duration(int(j[0])<<8|int(j[1]))*backoffJit/65536
	r.next = now.Add(r.d)
}

func (n *Node) retransmitLocked(now time.Time) {
	for tid, r := range n.reqs {
		if now.Before(r.next) {
			continue
		}
		if r.attempts >= maxAttempts {
			delete(n.reqs, tid)
			if p := n.tab.get(r.node); p != nil && p.addr == r.to {
				p.failures++
			}
			if r.onTimeout != nil {
				r.onTimeout(true)
			}
			continue
		}
		n.sendAttemptLocked(r, now)
		if r.attempts == 2 && r.onTimeout != nil {
			r.onTimeout(false)
		}
	}
}

// cancelLocked forgets a request (its answer will be ignored).
func (n *Node) cancelLocked(tid uint32) { delete(n.reqs, tid) }

// rate is a one-second window counter.
type rate struct {
	start time.Time
	n     int
}

func (r *rate) allow(now time.Time, limit int) bool {
	if limit < 0 {
		return true
	}
	if now.Sub(r.start) >= time.Second {
		r.start, r.n = now, 0
	}
	if r.n >= limit {
		return false
	}
	r.n++
	return true
}

// source is what we know of an address that talks to us, for
// anti-amplification: until it has shown that it receives what we send (it
// answered one of our requests, or presented a valid token), we send it at
// most 8 times the bytes it sent us.
type source struct {
	recv, sent int
	verified   bool
	pinged     bool
	seen       time.Time
}

const amplification = 8

func (n *Node) sourceLocked(a netip.AddrPort, now time.Time) *source {
	s := n.srcs[a]
	if s == nil {
		if len(n.srcs) > 100000 {
			n.srcs = map[netip.AddrPort]*source{}
		}
		s = &source{}
		n.srcs[a] = s
	}
	s.seen = now
	return s
}

// allowance is how many more bytes we may send to a.
func (s *source) allowance() int {
	if s.verified {
		return 1 << 30
	}
	return amplification*s.recv - s.sent
}

type partialKey struct {
	from netip.AddrPort
	tid  uint32
}

type partial struct {
	r           *wire.Reassembly
	start, last time.Time
}

// Bounds on reassembly state, so that headers announcing values cannot make
// a node hold much memory: values per message, bytes per message, messages
// in reassembly per source IP and in all.
const (
	maxPartialValues   = MaxValuesPerKey
	maxPartialBytes    = 1 << 20
	maxPartialsPerIP   = 64
	maxPartialsInTotal = 4096
)

// partialAllowedLocked decides whether to start reassembling m: a reply
// only for a request of ours to that address, and within the bounds above.
func (n *Node) partialAllowedLocked(m *wire.Message, from netip.AddrPort) bool {
	if m.Kind == wire.KindReply {
		if r := n.reqs[m.TID]; r == nil || r.to != from {
			return false
		}
	}
	if len(m.ValueSizes) > maxPartialValues {
		return false
	}
	total := uint64(0)
	for _, sz := range m.ValueSizes {
		total += min(sz, wire.MaxValueSize+32)
	}
	if total > maxPartialBytes || len(n.partials) >= maxPartialsInTotal {
		return false
	}
	perIP := 0
	for k := range n.partials {
		if k.from.Addr() == from.Addr() {
			perIP++
		}
	}
	return perIP < maxPartialsPerIP
}

// Reassembly timeouts (network_engine.h:486-488).
const (
	rxPartTimeout = 3 * time.Second
	rxMaxTime     = 10 * time.Second
)

// expirePartialsLocked drops reassemblies that timed out, and forgets
// sources and rate counters not seen for a while.
func (n *Node) expirePartialsLocked(now time.Time) {
	for k, p := range n.partials {
		if now.Sub(p.last) > rxPartTimeout || now.Sub(p.start) > rxMaxTime {
			delete(n.partials, k)
		}
	}
	for a, s := range n.srcs {
		if now.Sub(s.seen) > 30*time.Minute {
			delete(n.srcs, a)
		}
	}
	for ip, r := range n.rates {
		if now.Sub(r.start) > time.Minute {
			delete(n.rates, ip)
		}
	}
}

// HandlePacket processes one received datagram. Malformed input is dropped.
func (n *Node) HandlePacket(b []byte, from netip.AddrPort) {
	from = normAddr(from)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.stats.Received++
	if martian(from) {
		n.stats.Dropped++
		return
	}
	// The message is decoded into one the node reuses: handlers keep
	// values, tokens and node lists (separate allocations), never m itself;
	// a reassembly keeps a copy of its header.
	m := &n.in
	if err := wire.DecodeInto(m, b); err != nil {
		n.stats.Dropped++
		n.log.Debug("dht: malformed datagram", "from", from, "err", err)
		return
	}
	if m.Network != n.cfg.Network {
		n.stats.Dropped++
		return
	}
	now := n.now()
	src := n.sourceLocked(from, now)
	src.recv += len(b)
	if m.Kind == wire.KindPart {
		p := n.partials[partialKey{from, m.TID}]
		if p == nil {
			n.rateOK(from, now)
			return
		}
		if p.r.Add(m) {
			p.last = now
			if p.r.Complete() {
				delete(n.partials, partialKey{from, m.TID})
				n.processLocked(p.r.Message(), from, src, len(b), now)
			}
		}
		return
	}
	if m.ID == n.self || m.ID.IsZero() {
		n.stats.Dropped++
		return
	}
	if m.Kind == wire.KindQuery && !n.rateOK(from, now) {
		n.stats.Dropped++
		return
	}
	if m.Fragmented() {
		if !n.partialAllowedLocked(m, from) {
			n.stats.Dropped++
			return
		}
		k := partialKey{from, m.TID}
		if n.partials[k] == nil {
			header := *m
			n.partials[k] = &partial{r: wire.NewReassembly(&header), start: now, last: now}
		}
		return
	}
	n.processLocked(m, from, src, len(b), now)
}

func (n *Node) rateOK(from netip.AddrPort, now time.Time) bool {
	r := n.rates[from.Addr()]
	if r == nil {
		r = &rate{}
		n.rates[from.Addr()] = r
	}
	return r.allow(now, n.cfg.RateLimitPerIP) && n.global.allow(now, n.cfg.RateLimit)
}

func (n *Node) processLocked(m *wire.Message, from netip.AddrPort, src *source, size int, now time.Time) {
	if n.tab.len() == 0 {
		// The first node we hear of: start maintenance (our own lookup) now.
		defer func() {
			if n.tab.len() > 0 {
				n.wakeLocked()
			}
		}()
	}
	switch m.Kind {
	case wire.KindReply, wire.KindError:
		r := n.reqs[m.TID]
		if r == nil || r.to != from || (!r.node.IsZero() && r.node != m.ID) {
			// Not ours, or from an unexpected node: still a live node.
			if !m.IsClient {
				n.tab.insert(m.ID, from, true, false, now)
			}
			return
		}
		delete(n.reqs, m.TID)
		src.verified = true
		if !m.IsClient {
			n.tab.insert(m.ID, from, true, true, now)
		}
		if m.Kind == wire.KindError {
			if r.onError != nil {
				r.onError(m)
			}
			return
		}
		if r.onReply != nil {
			r.onReply(m)
		}
	case wire.KindQuery:
		if !m.IsClient { // client-mode nodes stay out of routing tables
			n.tab.insert(m.ID, from, true, false, now)
		}
		if !src.verified && !src.pinged {
			// Verify the source so that larger answers may follow.
			src.pinged = true
			n.pingLocked(from, m.ID)
		}
		n.serveLocked(m, from, src, now)
	}
}

// learnLocked adds the nodes named in a reply to the routing table (§5):
// our own id and martians are skipped; a loopback address is replaced by
// the replier's address when the families match.
func (n *Node) learnLocked(m *wire.Message, from netip.AddrPort, now time.Time) []wire.Node {
	var out []wire.Node
	for _, list := range [][]wire.Node{m.Nodes4, m.Nodes6} {
		for _, nd := range list {
			if nd.ID == n.self || nd.ID.IsZero() {
				continue
			}
			a := normAddr(nd.Addr)
			if a.Addr().IsLoopback() && a.Addr().Is4() == from.Addr().Is4() && !from.Addr().IsLoopback() {
				a = netip.AddrPortFrom(from.Addr(), a.Port())
			}
			if martian(a) {
				continue
			}
			n.tab.insert(nd.ID, a, false, false, now)
			out = append(out, wire.Node{ID: nd.ID, Addr: a})
		}
	}
	return out
}
