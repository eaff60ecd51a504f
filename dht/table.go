package dht

import (
	"bytes"
	"math/bits"
	"net/netip"
	"slices"
	"time"

	"github.com/del-share/del/dht/wire"
)

// Routing constants (opendht-wire.md §9).
const (
	BucketSize      = 8                 // k, TARGET_NODES
	nodeGoodReply   = 120 * time.Minute // a good node replied this recently…
	nodeGoodHeard   = 10 * time.Minute  // …and was heard this recently
	maxFailures     = 1                 // one expired request (3 sends unanswered) expires a node, as in OpenDHT
	bucketStaleTime = 10 * time.Minute  // a bucket not touched this long is refreshed
)

// peer is what the routing table knows about one remote node.
type peer struct {
	id        wire.ID
	addr      netip.AddrPort
	heard     time.Time // last message of any kind from it
	replied   time.Time // last reply to one of our requests
	failures  int       // requests in a row that expired
	confirmed bool      // it sent us something (not just named by a third node)
}

func (p *peer) expired() bool { return p.failures >= maxFailures }

func (p *peer) good(now time.Time) bool {
	return !p.expired() && !p.replied.IsZero() && now.Sub(p.replied) < nodeGoodReply && now.Sub(p.heard) < nodeGoodHeard
}

// cpl is the number of leading bits a and b have in common.
func cpl(a, b wire.ID) int {
	for i := range a {
		if x := a[i] ^ b[i]; x != 0 {
			return i*8 + bits.LeadingZeros8(x)
		}
	}
	return 160
}

// closer reports whether a is closer to target than b in XOR distance.
func closer(target, a, b wire.ID) bool {
	for i := range target {
		da, db := a[i]^target[i], b[i]^target[i]
		if da != db {
			return da < db
		}
	}
	return false
}

// distCmp orders ids by XOR distance to target.
func distCmp(target wire.ID) func(a, b wire.ID) int {
	return func(a, b wire.ID) int {
		var x, y [20]byte
		for i := range target {
			x[i], y[i] = a[i]^target[i], b[i]^target[i]
		}
		return bytes.Compare(x[:], y[:])
	}
}

// bucket i holds the peers whose id shares exactly i leading bits with ours,
// except the last bucket, which holds every peer sharing at least i bits:
// it is the bucket holding our own id, the only one that splits.
type bucket struct {
	peers   []*peer
	changed time.Time
}

// table is a Kademlia routing table with k-buckets (k = BucketSize).
type table struct {
	self    wire.ID
	buckets []*bucket
	byID    map[wire.ID]*peer
}

func newTable(self wire.ID, now time.Time) *table {
	return &table{self: self, buckets: []*bucket{{changed: now}}, byID: map[wire.ID]*peer{}}
}

func (t *table) bucketIndex(id wire.ID) int {
	return min(cpl(t.self, id), len(t.buckets)-1)
}

func (t *table) get(id wire.ID) *peer { return t.byID[id] }

func (t *table) len() int { return len(t.byID) }

// insert adds or refreshes a peer. confirmed is true when the peer itself
// sent the message; replied when it answered one of our requests. A full
// bucket that holds our id splits; another full bucket replaces an expired
// or never-confirmed peer, and otherwise drops the newcomer (Kademlia keeps
// long-lived nodes). It returns the peer kept, or nil.
func (t *table) insert(id wire.ID, addr netip.AddrPort, confirmed, replied bool, now time.Time) *peer {
	if id == t.self || id.IsZero() {
		return nil
	}
	if p := t.byID[id]; p != nil {
		if confirmed {
			p.addr = addr
			p.heard = now
			p.confirmed = true
			if replied {
				p.replied = now
				p.failures = 0
			}
		} else if p.expired() && p.addr != addr {
			p.addr = addr
		}
		return p
	}
	// The peer is allocated only once it has a place: a newcomer dropped
	// by a full bucket (the common case in a big network) costs nothing.
	newPeer := func() *peer {
		p := &peer{id: id, addr: addr, confirmed: confirmed}
		if confirmed {
			p.heard = now
			if replied {
				p.replied = now
			}
		}
		return p
	}
	for {
		i := t.bucketIndex(id)
		b := t.buckets[i]
		if len(b.peers) < BucketSize {
			p := newPeer()
			b.peers = append(b.peers, p)
			b.changed = now
			t.byID[id] = p
			return p
		}
		if i == len(t.buckets)-1 && i < 159 {
			t.split()
			continue
		}
		// Replace the worst peer if it is expired, or unconfirmed while the
		// newcomer is confirmed.
		worst := -1
		for j, q := range b.peers {
			if q.expired() || (!q.confirmed && confirmed) {
				if worst < 0 || q.expired() {
					worst = j
				}
			}
		}
		if worst < 0 {
			return nil
		}
		delete(t.byID, b.peers[worst].id)
		p := newPeer()
		b.peers[worst] = p
		b.changed = now
		t.byID[id] = p
		return p
	}
}

// split moves the peers that share more bits with us out of the last bucket.
func (t *table) split() {
	last := t.buckets[len(t.buckets)-1]
	depth := len(t.buckets) - 1
	next := &bucket{changed: last.changed}
	keep := last.peers[:0:0]
	for _, p := range last.peers {
		if cpl(t.self, p.id) > depth {
			next.peers = append(next.peers, p)
		} else {
			keep = append(keep, p)
		}
	}
	last.peers = keep
	t.buckets = append(t.buckets, next)
}

// remove forgets a peer.
func (t *table) remove(id wire.ID) {
	p := t.byID[id]
	if p == nil {
		return
	}
	b := t.buckets[t.bucketIndex(id)]
	b.peers = slices.DeleteFunc(b.peers, func(q *peer) bool { return q == p })
	delete(t.byID, id)
}

// closest returns up to n usable (not expired) peers sorted by distance to
// target. With family 4 or 6 only peers of that address family are returned
// (0: any). It keeps the n best while scanning, so a reply costs
// O(peers × n) cheap comparisons instead of sorting the whole table.
func (t *table) closest(target wire.ID, n int, family int) []*peer {
	return t.closestWhere(nil, target, n, family, nil)
}

// closestGood is closest among the good peers only (replied within 2 h,
// heard within 10 min), as OpenDHT's findClosestNodes: what a node tells
// others about, and what decides whether it is close enough to store. A
// peer that only sent us queries, or that a third node named, is not
// passed on until it has answered us, so lookups are not sent to nodes that
// may never answer.
func (t *table) closestGood(target wire.ID, n int, family int, now time.Time) []*peer {
	return t.closestGoodAppend(nil, target, n, family, now)
}

// closestGoodAppend is closestGood appending to dst.
func (t *table) closestGoodAppend(dst []*peer, target wire.ID, n int, family int, now time.Time) []*peer {
	return t.closestWhere(dst, target, n, family, func(p *peer) bool { return p.good(now) })
}

func (t *table) closestWhere(dst []*peer, target wire.ID, n int, family int, ok func(*peer) bool) []*peer {
	type item struct {
		d wire.ID
		p *peer
	}
	if n <= 0 {
		return dst
	}
	var stack [searchNodes + 1]item
	best := stack[:0]
	if n > searchNodes {
		best = make([]item, 0, n+1)
	}
	for _, p := range t.byID {
		if p.expired() || !familyOK(p.addr, family) || (ok != nil && !ok(p)) {
			continue
		}
		var d wire.ID
		for i := range d {
			d[i] = p.id[i] ^ target[i]
		}
		if len(best) == n && bytes.Compare(d[:], best[n-1].d[:]) >= 0 {
			continue
		}
		i := len(best)
		for i > 0 && bytes.Compare(best[i-1].d[:], d[:]) > 0 {
			i--
		}
		best = slices.Insert(best, i, item{d, p})
		if len(best) > n {
			best = best[:n]
		}
	}
	for _, it := range best {
		dst = append(dst, it.p)
	}
	return dst
}

func familyOK(a netip.AddrPort, family int) bool {
	switch family {
	case 4:
		return a.Addr().Unmap().Is4()
	case 6:
		return !a.Addr().Unmap().Is4()
	}
	return true
}

// randomIDInBucket returns a random id that falls into bucket i.
func (t *table) randomIDInBucket(i int, random func([]byte)) wire.ID {
	var id wire.ID
	random(id[:])
	if i >= 160 {
		return t.self
	}
	// Copy our first i bits, flip bit i (unless this is the last bucket,
	// which covers every longer prefix too), keep the rest random.
	for b := 0; b < i; b++ {
		mask := byte(0x80 >> (b % 8))
		id[b/8] = id[b/8]&^mask | t.self[b/8]&mask
	}
	if i < len(t.buckets)-1 {
		mask := byte(0x80 >> (i % 8))
		id[i/8] = id[i/8]&^mask | (^t.self[i/8])&mask
	}
	return id
}
