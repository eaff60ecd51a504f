package dht

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
)

// Client-side constants (§9).
const (
	listenNodes    = 4                // LISTEN_NODES
	listenRefresh  = 20 * time.Second // listen refresh by the client
	listenResearch = 2 * time.Minute  // how often a listen redoes its lookup
)

// accept filters a received value as SecureDht does: a bad signature
// is dropped; an encrypted value is decrypted when it is for us and dropped
// otherwise.
func (n *Node) accept(v *wire.Value) (*wire.Value, bool) {
	if v.Encrypted() {
		if n.cfg.Identity == nil {
			return nil, false
		}
		d, err := Decrypt(v, n.cfg.Identity)
		if err != nil {
			return nil, false
		}
		return d, true
	}
	if Verify(v) != nil {
		return nil, false
	}
	return v, true
}

// GetResult is what Get found.
type GetResult struct {
	Values   []*wire.Value
	Nodes    int // nodes that answered among the closest
	Rounds   int
	Messages int
}

// Get looks key up and returns the values stored there (signatures
// checked, values encrypted for this node's identity decrypted, others
// dropped). A where-query may filter on the storing nodes.
func (n *Node) Get(ctx context.Context, key wire.ID, q *wire.Query) (*GetResult, error) {
	type result struct {
		res *GetResult
		err error
	}
	done := make(chan result, 1)
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	s := n.getLocked(key, q, func(r *GetResult, err error) { done <- result{r, err} })
	n.mu.Unlock()
	select {
	case r := <-done:
		return r.res, r.err
	case <-ctx.Done():
		n.mu.Lock()
		s.finishLocked(n, ctx.Err())
		n.mu.Unlock()
		return nil, ctx.Err()
	}
}

// getLocked starts a get; done is called under n.mu.
func (n *Node) getLocked(key wire.ID, q *wire.Query, done func(*GetResult, error)) *search {
	seen := map[uint64]*wire.Value{}
	var order []uint64
	var s *search
	s = n.startSearchLocked(key, wire.Get, q,
		func(_ *cand, vals []*wire.Value, _ *wire.Fields) {
			for _, v := range vals {
				v, ok := n.accept(v)
				if !ok {
					continue
				}
				old, had := seen[v.ID]
				if !had {
					order = append(order, v.ID)
				}
				if !had || (v.Signed() && old.Signed() && v.Seq > old.Seq) {
					seen[v.ID] = v
				}
			}
		},
		func(closest []*cand, err error) {
			r := &GetResult{Nodes: len(closest), Rounds: s.rounds, Messages: s.messages}
			for _, id := range order {
				r.Values = append(r.Values, seen[id])
			}
			done(r, err)
		})
	return s
}

// PutResult says where a value went.
type PutResult struct {
	Stored   int // nodes that acknowledged
	Tried    int
	Rounds   int
	Messages int
}

// Put stores v at key on the k closest nodes and returns once they have
// answered. A value with id 0 gets a random id. The value lives for its
// type's TTL; Announce keeps it alive.
func (n *Node) Put(ctx context.Context, key wire.ID, v *wire.Value) (*PutResult, error) {
	if v.Size() > wire.MaxValueSize {
		return nil, fmt.Errorf("value of %d bytes: %w", v.Size(), wire.ErrTooLarge)
	}
	type result struct {
		res *PutResult
		err error
	}
	done := make(chan result, 1)
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	op := n.putLocked(key, v, func(r *PutResult, err error) { done <- result{r, err} })
	n.mu.Unlock()
	select {
	case r := <-done:
		return r.res, r.err
	case <-ctx.Done():
		n.mu.Lock()
		op.cancelLocked(n)
		n.mu.Unlock()
		return nil, ctx.Err()
	}
}

type putOp struct {
	s       *search
	pending map[uint32]bool
}

func (op *putOp) cancelLocked(n *Node) {
	op.s.finishLocked(n, ErrClosed)
	for tid := range op.pending {
		n.cancelLocked(tid)
	}
}

// putLocked starts a put: a lookup of key, then a put request with each
// node's token to the k closest; done is called under n.mu, once.
func (n *Node) putLocked(key wire.ID, v *wire.Value, done func(*PutResult, error)) *putOp {
	if v.ID == 0 {
		v.ID = n.randUint64() | 1
	}
	res := &PutResult{}
	op := &putOp{}
	fired := false
	fire := func(err error) {
		if !fired {
			fired = true
			done(res, err)
		}
	}
	op.s = n.startSearchLocked(key, wire.Find, nil, nil, func(closest []*cand, err error) {
		res.Rounds, res.Messages = op.s.rounds, op.s.messages
		if err != nil {
			fire(err)
			return
		}
		op.pending = map[uint32]bool{}
		finish := func(tid uint32, ok bool) {
			if !op.pending[tid] {
				return
			}
			delete(op.pending, tid)
			if ok {
				res.Stored++
			}
			if len(op.pending) == 0 {
				if res.Stored == 0 {
					fire(fmt.Errorf("put: no node stored the value: %w", ErrNoNodes))
				} else {
					fire(nil)
				}
			}
		}
		for i, c := range closest {
			if i >= BucketSize {
				break
			}
			if len(c.token) == 0 {
				continue
			}
			m := n.base(wire.KindQuery, n.newTID())
			m.Method = wire.Put
			m.Hash = key
			m.Token = c.token
			parts := wire.AppendParts(m.TID, n.cfg.Network, m.SetValues([]*wire.Value{v}))
			tid := m.TID
			op.pending[tid] = true
			res.Tried++
			res.Messages++
			n.requestLocked(&request{to: c.addr, node: c.id, method: wire.Put,
				onReply: func(*wire.Message) { finish(tid, true) },
				onError: func(*wire.Message) { finish(tid, false) },
				onTimeout: func(final bool) {
					if final {
						finish(tid, false)
					}
				},
			}, &m, parts)
		}
		if len(op.pending) == 0 {
			fire(ErrNoNodes)
		}
	})
	return op
}

// Announce puts v and keeps it alive until ctx ends: the node puts it
// again 30 s before its TTL runs out (10 s after a failed put). Re-putting
// an identical value refreshes it on the storing nodes, and each new lookup
// follows nodes joining and leaving.
func (n *Node) Announce(ctx context.Context, key wire.ID, v *wire.Value) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	a := n.announceLocked(key, v)
	n.mu.Unlock()
	<-ctx.Done()
	n.mu.Lock()
	delete(n.announces, a)
	if a.op != nil {
		a.op.cancelLocked(n)
	}
	n.mu.Unlock()
	return nil
}

type announcement struct {
	key  wire.ID
	v    *wire.Value
	next time.Time
	op   *putOp
}

func (n *Node) announceLocked(key wire.ID, v *wire.Value) *announcement {
	if v.ID == 0 {
		v.ID = n.randUint64() | 1
	}
	a := &announcement{key: key, v: v}
	n.announces[a] = struct{}{}
	n.reannounceLocked(a)
	return a
}

func (n *Node) reannounceLocked(a *announcement) {
	a.next = time.Time{}
	a.op = n.putLocked(a.key, a.v, func(_ *PutResult, err error) {
		a.op = nil
		every := TTL(a.v.Type) - 30*time.Second
		if every < 20*time.Second {
			every = TTL(a.v.Type) / 2
		}
		if err != nil {
			every = 10 * time.Second
		}
		a.next = n.now().Add(every)
	})
}

// PutSigned signs v with the node's identity and puts it.
func (n *Node) PutSigned(ctx context.Context, key wire.ID, v *wire.Value) (*PutResult, error) {
	if n.cfg.Identity == nil {
		return nil, errors.New("put signed: node has no identity")
	}
	if err := Sign(v, n.cfg.Identity); err != nil {
		return nil, err
	}
	return n.Put(ctx, key, v)
}

// PutEncrypted encrypts v for the identity whose public-key id is to (its
// certificate is looked up on the DHT, as SecureDht::putEncrypted does) and
// puts it.
func (n *Node) PutEncrypted(ctx context.Context, key, to wire.ID, v *wire.Value) (*PutResult, error) {
	if n.cfg.Identity == nil {
		return nil, errors.New("put encrypted: node has no identity")
	}
	cert, err := n.FindCertificate(ctx, to)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("certificate of %s has no RSA key", to)
	}
	if v.ID == 0 {
		v.ID = n.randUint64() | 1
	}
	ev, err := Encrypt(v, n.cfg.Identity, pub)
	if err != nil {
		return nil, err
	}
	return n.Put(ctx, key, ev)
}

// PublishCertificate puts the node identity's certificate at its key id
// (type 8), where other OpenDHT nodes look for it.
func (n *Node) PublishCertificate(ctx context.Context) (*PutResult, error) {
	if n.cfg.Identity == nil {
		return nil, errors.New("publish certificate: node has no identity")
	}
	return n.Put(ctx, wire.ID(n.cfg.Identity.ID), CertificateValue(n.cfg.Identity))
}

// FindCertificate gets the certificate published at a public-key id and
// checks that its key hashes to that id.
func (n *Node) FindCertificate(ctx context.Context, id wire.ID) (*x509.Certificate, error) {
	r, err := n.Get(ctx, id, &wire.Query{Where: []wire.Where{{Field: wire.FieldType, Uint: TypeCertificate}}})
	if err != nil {
		return nil, err
	}
	for _, v := range r.Values {
		cert, err := ParseCertificateValue(v)
		if err != nil {
			continue
		}
		if wire.ID(identity.IDOfCert(cert)) == id {
			return cert, nil
		}
	}
	return nil, fmt.Errorf("no certificate for %s on the DHT", id)
}

// Event is a change heard by Listen.
type Event struct {
	Value     *wire.Value
	Expired   bool // the value expired or was removed
	Refreshed bool // its publisher refreshed it (ListenRefreshes only; one event per value per 10 s)
}

// listenOp keeps a key listened on its closest nodes: a lookup, listen
// requests with a shared sid to the 4 closest, refreshed every 20 s, and
// the update pushes they send back.
type listenOp struct {
	key     wire.ID
	sid     uint32
	query   *wire.Query
	nodes   map[wire.ID]*listenNode
	known   map[uint64]*wire.Value
	fresh   map[uint64]time.Time // last Refreshed event per value
	refresh bool                 // deliver Refreshed events
	search  *search
	nextRes time.Time
	stopped bool

	queue  []Event
	signal chan struct{}
}

type listenNode struct {
	addr      netip.AddrPort
	token     []byte
	refreshed time.Time
	tid       uint32
}

// Listen subscribes to key. Values already stored arrive first, then new
// and changed ones, and Expired events when they go. The channel closes
// when ctx ends.
func (n *Node) Listen(ctx context.Context, key wire.ID, q *wire.Query) (<-chan Event, error) {
	return n.listen(ctx, key, q, false)
}

// ListenRefreshes is Listen that also reports refreshes of known values
// (OpenDHT's "re" pushes) as Refreshed events.
func (n *Node) ListenRefreshes(ctx context.Context, key wire.ID, q *wire.Query) (<-chan Event, error) {
	return n.listen(ctx, key, q, true)
}

func (n *Node) listen(ctx context.Context, key wire.ID, q *wire.Query, refresh bool) (<-chan Event, error) {
	out := make(chan Event)
	l := &listenOp{key: key, query: q, nodes: map[wire.ID]*listenNode{}, known: map[uint64]*wire.Value{},
		fresh: map[uint64]time.Time{}, refresh: refresh,
		signal: make(chan struct{}, 1)}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	for {
		var b [4]byte
		n.cfg.Random(b[:])
		l.sid = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if n.listens[l.sid] == nil && l.sid != 0 {
			break
		}
	}
	n.listens[l.sid] = l
	l.researchLocked(n, n.now())
	n.mu.Unlock()

	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(out)
		for {
			n.mu.Lock()
			q := l.queue
			l.queue = nil
			stopped := l.stopped
			n.mu.Unlock()
			for _, ev := range q {
				select {
				case out <- ev:
				case <-ctx.Done():
					n.stopListen(l)
					return
				}
			}
			if stopped {
				return
			}
			select {
			case <-l.signal:
			case <-ctx.Done():
				n.stopListen(l)
				return
			}
		}
	}()
	return out, nil
}

func (n *Node) stopListen(l *listenOp) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l.stopLocked()
	delete(n.listens, l.sid)
	if l.search != nil {
		l.search.finishLocked(n, ErrClosed)
	}
}

func (l *listenOp) stopLocked() {
	l.stopped = true
	select {
	case l.signal <- struct{}{}:
	default:
	}
}

func (l *listenOp) emitLocked(ev Event) {
	l.queue = append(l.queue, ev)
	select {
	case l.signal <- struct{}{}:
	default:
	}
}

func (l *listenOp) researchLocked(n *Node, now time.Time) {
	l.nextRes = now.Add(listenResearch)
	if l.search != nil && !l.search.done {
		return
	}
	l.search = n.startSearchLocked(l.key, wire.Find, nil, nil, func(closest []*cand, err error) {
		if err != nil || l.stopped {
			l.nextRes = n.now().Add(5 * time.Second)
			return
		}
		keep := map[wire.ID]bool{}
		for i, c := range closest {
			if i >= listenNodes {
				break
			}
			keep[c.id] = true
			ln := l.nodes[c.id]
			if ln == nil {
				ln = &listenNode{}
				l.nodes[c.id] = ln
			}
			ln.addr, ln.token = c.addr, c.token
			l.sendListenLocked(n, c.id, ln, n.now())
		}
		for id := range l.nodes {
			if !keep[id] {
				delete(l.nodes, id)
			}
		}
	})
}

func (l *listenOp) sendListenLocked(n *Node, id wire.ID, ln *listenNode, now time.Time) {
	m := n.base(wire.KindQuery, n.newTID())
	m.Method = wire.Listen
	m.Version = 1
	m.Hash = l.key
	m.Token = ln.token
	m.SID = l.sid
	if !l.query.Empty() {
		m.Query = l.query
	}
	ln.refreshed = now
	ln.tid = m.TID
	n.requestLocked(&request{to: ln.addr, node: id, method: wire.Listen,
		onError: func(*wire.Message) { // 401: token expired; look up again
			l.nextRes = time.Time{}
		},
		onTimeout: func(final bool) {
			if final {
				delete(l.nodes, id)
				l.nextRes = time.Time{}
			}
		},
	}, &m, nil)
}

func (l *listenOp) tickLocked(n *Node, now time.Time) {
	if l.stopped {
		return
	}
	if !now.Before(l.nextRes) || len(l.nodes) == 0 && (l.search == nil || l.search.done) {
		l.researchLocked(n, now)
	}
	for id, ln := range l.nodes {
		if now.Sub(ln.refreshed) >= listenRefresh {
			l.sendListenLocked(n, id, ln, now)
		}
	}
}

// handleUpdateLocked dispatches an update push to the listen it belongs to.
func (n *Node) handleUpdateLocked(m *wire.Message, from netip.AddrPort, now time.Time) {
	l := n.listens[m.SID]
	if l == nil || l.stopped {
		return
	}
	ln := l.nodes[m.ID]
	if ln == nil {
		// A push from a node we listen on but whose lookup is being redone;
		// accept it only from the node's known address.
		p := n.tab.get(m.ID)
		if p == nil || p.addr != from {
			return
		}
	} else if len(m.Token) > 0 {
		ln.token = m.Token
	}
	for _, v := range m.Values {
		v, ok := n.accept(v)
		if !ok {
			continue
		}
		old := l.known[v.ID]
		if old != nil && (!v.Signed() || !old.Signed() || v.Seq <= old.Seq) {
			continue
		}
		l.known[v.ID] = v
		l.emitLocked(Event{Value: v})
	}
	for _, id := range m.Refreshed {
		// Several storing nodes report the same refresh: one event.
		if v := l.known[id]; v != nil && l.refresh && now.Sub(l.fresh[id]) >= 10*time.Second {
			l.fresh[id] = now
			l.emitLocked(Event{Value: v, Refreshed: true})
		}
	}
	for _, id := range m.Expired {
		if v := l.known[id]; v != nil {
			delete(l.known, id)
			delete(l.fresh, id)
			l.emitLocked(Event{Value: v, Expired: true})
		}
	}
}
