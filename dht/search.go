package dht

import (
	"net/netip"
	"slices"
	"time"

	"github.com/del-share/del/dht/wire"
)

// Lookup parameters: α requests in flight, k closest nodes that must have
// answered for the lookup to end.
const (
	alpha = 3
)

type candState uint8

const (
	candNew candState = iota
	candInflight
	candSlow // first attempt unanswered; no longer counts against α
	candReplied
	candFailed
)

type cand struct {
	id    wire.ID
	addr  netip.AddrPort
	state candState
	token []byte
	tid   uint32
	hop   int // 1 for nodes from our table, n+1 for nodes named by a hop-n node
}

// search is an iterative Kademlia lookup of target. It asks the closest
// known nodes (find, or get to collect values on the way), keeps the 14
// closest it hears of, and ends when the k closest that did not fail have
// all answered.
type search struct {
	target  wire.ID
	method  wire.Method
	query   *wire.Query
	cands   []*cand
	done    bool
	started bool
	// Stats of the lookup: rounds is the deepest hop that answered (the
	// length of the longest chain of referrals), messages the requests sent.
	rounds, messages int

	onValues func(from *cand, vals []*wire.Value, fields *wire.Fields)
	onDone   func(closest []*cand, err error)
}

func (n *Node) startSearchLocked(target wire.ID, method wire.Method, q *wire.Query,
	onValues func(*cand, []*wire.Value, *wire.Fields), onDone func([]*cand, error)) *search {
	s := &search{target: target, method: method, query: q, onValues: onValues, onDone: onDone}
	n.searches[s] = struct{}{}
	s.stepLocked(n, n.now())
	return s
}

func (s *search) seed(n *Node) {
	for _, p := range n.tab.closest(s.target, searchNodes, 0) {
		s.add(p.id, p.addr, 1)
	}
}

func (s *search) add(id wire.ID, addr netip.AddrPort, hop int) {
	for _, c := range s.cands {
		if c.id == id {
			return
		}
	}
	s.cands = append(s.cands, &cand{id: id, addr: addr, hop: hop})
	slices.SortStableFunc(s.cands, func(a, b *cand) int { return distCmp(s.target)(a.id, b.id) })
	if len(s.cands) > searchNodes {
		// Drop the farthest that is not waiting for an answer.
		for i := len(s.cands) - 1; i >= searchNodes; i-- {
			s.cands = slices.Delete(s.cands, i, i+1)
		}
	}
}

func (s *search) stepLocked(n *Node, now time.Time) {
	if s.done {
		return
	}
	if !s.started {
		s.seed(n)
		if len(s.cands) == 0 {
			return // wait for the routing table to fill (bootstrap)
		}
		s.started = true
	}
	inflight := 0
	for _, c := range s.cands {
		if c.state == candInflight {
			inflight++
		}
	}
	for _, c := range s.cands {
		if inflight >= alpha {
			break
		}
		if c.state == candNew {
			s.sendLocked(n, c)
			inflight++
		}
	}
	// Done when the k closest candidates that did not fail all answered.
	// A node that missed its first attempt (slow) no longer holds the
	// lookup back: it is most likely gone, and a late answer is still used
	// until the lookup ends.
	good, pending := 0, false
	for _, c := range s.cands {
		if good >= BucketSize {
			break
		}
		switch c.state {
		case candReplied:
			good++
		case candFailed, candSlow:
		default:
			pending = true
		}
	}
	if !pending {
		var closest []*cand
		for _, c := range s.cands {
			if c.state == candReplied {
				closest = append(closest, c)
			}
		}
		if len(closest) == 0 {
			s.finishLocked(n, ErrNoNodes)
			return
		}
		s.finishWithLocked(n, closest)
	}
}

func (s *search) finishWithLocked(n *Node, closest []*cand) {
	s.done = true
	delete(n.searches, s)
	if s.onDone != nil {
		s.onDone(closest, nil)
	}
}

func (s *search) finishLocked(n *Node, err error) {
	if s.done {
		return
	}
	s.done = true
	delete(n.searches, s)
	for _, c := range s.cands {
		if c.state == candInflight || c.state == candSlow {
			n.cancelLocked(c.tid)
		}
	}
	if s.onDone != nil {
		s.onDone(nil, err)
	}
}

func (s *search) sendLocked(n *Node, c *cand) {
	m := n.base(wire.KindQuery, n.newTID())
	m.Method = s.method
	if s.method == wire.Get {
		m.Hash = s.target
		if !s.query.Empty() {
			m.Query = s.query
		}
	} else {
		m.Target = s.target
	}
	c.state = candInflight
	c.tid = m.TID
	s.messages++
	n.requestLocked(&request{to: c.addr, node: c.id, method: s.method,
		onReply: func(r *wire.Message) {
			if s.done {
				return
			}
			c.state = candReplied
			c.token = r.Token
			s.rounds = max(s.rounds, c.hop)
			for _, nd := range n.learnLocked(r, c.addr, n.now()) {
				s.add(nd.ID, nd.Addr, c.hop+1)
			}
			if s.onValues != nil && (len(r.Values) > 0 || r.Fields != nil) {
				s.onValues(c, r.Values, r.Fields)
			}
			s.stepLocked(n, n.now())
		},
		onError: func(*wire.Message) {
			c.state = candFailed
			s.stepLocked(n, n.now())
		},
		onTimeout: func(final bool) {
			if s.done {
				return
			}
			if final {
				c.state = candFailed
			} else if c.state == candInflight {
				c.state = candSlow
			}
			s.stepLocked(n, n.now())
		},
	}, &m, nil)
}
