package dht

import (
	"net/netip"
	"time"

	"github.com/del-share/del/dht/wire"
)

// searchNodes is how many nodes a put-acceptance check and a lookup keep
// (SEARCH_NODES).
const searchNodes = 14

// serveLocked answers a query: validate, decide, respond.
func (n *Node) serveLocked(m *wire.Message, from netip.AddrPort, src *source, now time.Time) {
	switch m.Method {
	case wire.Ping:
		r := n.base(wire.KindReply, m.TID)
		r.SeenAddr = from.Addr()
		n.replyLocked(&r, nil, from, src)
	case wire.Find:
		r := n.nodesReply(m, m.Target, from, now)
		n.replyLocked(&r, nil, from, src)
	case wire.Get:
		if m.Hash.IsZero() {
			n.errorLocked(m, from, wire.CodeNonAuthoritative, "Get_values with no info_hash")
			return
		}
		r := n.nodesReply(m, m.Hash, from, now)
		vals := n.st.get(m.Hash, m.Query, now)
		var parts [][]byte
		if len(vals) > 0 {
			if m.Query != nil && len(m.Query.Select) > 0 {
				r.Fields = project(vals, m.Query.Select)
			} else {
				parts = r.SetValues(vals)
			}
		}
		n.replyLocked(&r, parts, from, src)
	case wire.Put:
		n.servePutLocked(m, from, src, now)
	case wire.Listen:
		n.serveListenLocked(m, from, src, now)
	case wire.Refresh:
		if m.Hash.IsZero() {
			n.errorLocked(m, from, wire.CodeNonAuthoritative, "Refresh with no info_hash")
			return
		}
		if !n.tok.valid(m.Token, from) {
			n.errorLocked(m, from, wire.CodeUnauthorized, "Refresh with wrong token")
			return
		}
		src.verified = true
		if !n.st.refresh(m.Hash, m.VID, now) {
			n.errorLocked(m, from, wire.CodeNotFound, "Refresh with no storage")
			return
		}
		n.notifyLocked(m.Hash, []uint64{m.VID}, nil)
		r := n.base(wire.KindReply, m.TID)
		r.VID = m.VID
		r.SeenAddr = from.Addr()
		n.replyLocked(&r, nil, from, src)
	case wire.Update:
		n.handleUpdateLocked(m, from, now)
		r := n.base(wire.KindReply, m.TID)
		r.SeenAddr = from.Addr()
		n.replyLocked(&r, nil, from, src)
	}
}

// nodesReply builds a find/get reply: the closest good nodes of the wanted
// families and a token for the requester (sendNodesValues).
func (n *Node) nodesReply(m *wire.Message, target wire.ID, from netip.AddrPort, now time.Time) wire.Message {
	r := n.base(wire.KindReply, m.TID)
	r.SeenAddr = from.Addr()
	v4, v6, ok := m.WantFamilies()
	if !ok {
		v4, v6 = from.Addr().Is4(), !from.Addr().Is4()
	}
	// The node lists live in scratch space of the node, reused by the
	// next reply (the reply is encoded and sent before that).
	if v4 {
		n.peerBuf = n.tab.closestGoodAppend(n.peerBuf[:0], target, BucketSize, 4, now)
		n.nodes4 = appendNodes(n.nodes4[:0], n.peerBuf)
		r.Nodes4 = n.nodes4
	}
	if v6 {
		n.peerBuf = n.tab.closestGoodAppend(n.peerBuf[:0], target, BucketSize, 6, now)
		n.nodes6 = appendNodes(n.nodes6[:0], n.peerBuf)
		r.Nodes6 = n.nodes6
	}
	r.Token = n.tok.make(from)
	return r
}

func appendNodes(dst []wire.Node, ps []*peer) []wire.Node {
	for _, p := range ps {
		dst = append(dst, wire.Node{ID: p.id, Addr: p.addr})
	}
	return dst
}

func peersToNodes(ps []*peer) []wire.Node {
	out := make([]wire.Node, len(ps))
	for i, p := range ps {
		out[i] = wire.Node{ID: p.id, Addr: p.addr}
	}
	return out
}

// replyLocked sends a reply and its value parts, within the
// anti-amplification allowance of an unverified source (8× the bytes it
// sent us, minus the replies already sent; our own small verification ping
// is not counted): over it, values are left out, and if even that is too
// much, nothing is sent.
func (n *Node) replyLocked(r *wire.Message, parts [][]byte, to netip.AddrPort, src *source) {
	// Replies are encoded into one buffer the node reuses: the datagram is
	// copied by the kernel when sent, and a reply is never retransmitted.
	b := r.Append(n.out[:0])
	n.out = b
	size := len(b)
	for _, p := range wire.AppendParts(r.TID, n.cfg.Network, parts) {
		size += len(p)
	}
	if size > src.allowance() {
		n.stats.AmplificationLimited++
		if r.Values == nil && r.ValueSizes == nil && r.Fields == nil {
			return
		}
		r.Values, r.ValueSizes, r.Fields, parts = nil, nil, nil, nil
		b = r.Append(n.out[:0])
		n.out = b
		if len(b) > src.allowance() {
			return
		}
	}
	src.sent += len(b)
	n.sendLocked(b, to)
	for _, p := range wire.AppendParts(r.TID, n.cfg.Network, parts) {
		src.sent += len(p)
		n.sendLocked(p, to)
	}
}

func (n *Node) errorLocked(m *wire.Message, to netip.AddrPort, code uint16, msg string) {
	e := n.base(wire.KindError, m.TID)
	e.ErrCode, e.ErrMsg = code, msg
	n.out = e.Append(n.out[:0])
	n.sendLocked(n.out, to)
}

// tooFar reports whether at least k known nodes are closer to h than we
// are, in which case a put is acked but not stored (dht.cpp:2461-2470).
func (n *Node) tooFar(h wire.ID, now time.Time) bool {
	c := 0
	n.peerBuf = n.tab.closestGoodAppend(n.peerBuf[:0], h, searchNodes, 0, now)
	for _, p := range n.peerBuf {
		if closer(h, p.id, n.self) {
			c++
		}
	}
	return c >= BucketSize
}

func (n *Node) servePutLocked(m *wire.Message, from netip.AddrPort, src *source, now time.Time) {
	if m.Hash.IsZero() {
		n.errorLocked(m, from, wire.CodeNonAuthoritative, "Put with no info_hash")
		return
	}
	if !n.tok.valid(m.Token, from) {
		n.errorLocked(m, from, wire.CodeUnauthorized, "Put with wrong token")
		return
	}
	src.verified = true
	for _, v := range m.Values {
		if v.ID == 0 {
			n.errorLocked(m, from, wire.CodeNonAuthoritative, "Put with invalid id")
			return
		}
	}
	created := now
	if m.Created != 0 {
		if c := time.Unix(m.Created, 0); c.Before(now) {
			created = c
		}
	}
	far := n.tooFar(m.Hash, now)
	for _, v := range m.Values {
		if !far && storable(m.Hash, v) && Verify(v) == nil {
			switch n.st.put(m.Hash, v, created, from.Addr(), now) {
			case putStored, putEdited:
				n.pushValuesLocked(m.Hash, []*wire.Value{v}, nil)
			case putRefreshed:
				n.notifyLocked(m.Hash, []uint64{v.ID}, nil)
			}
		}
		// Ack even what is not stored, as OpenDHT does, so a publisher
		// does not go looking further and pollute the DHT.
		r := n.base(wire.KindReply, m.TID)
		r.VID = v.ID
		r.SeenAddr = from.Addr()
		n.replyLocked(&r, nil, from, src)
	}
}

func (n *Node) serveListenLocked(m *wire.Message, from netip.AddrPort, src *source, now time.Time) {
	if m.Hash.IsZero() {
		n.errorLocked(m, from, wire.CodeNonAuthoritative, "Listen with no info_hash")
		return
	}
	if !n.tok.valid(m.Token, from) {
		n.errorLocked(m, from, wire.CodeUnauthorized, "Listen with wrong token")
		return
	}
	src.verified = true
	k := n.st.key(m.Hash, true)
	lk := listenerKey{m.ID, m.SID}
	l := k.listeners[lk]
	if l == nil && len(k.listeners) >= maxListenersPerKey {
		// Full: confirm without registering, as for a refused put.
		r := n.base(wire.KindReply, m.TID)
		r.SeenAddr = from.Addr()
		n.replyLocked(&r, nil, from, src)
		return
	}
	if l == nil {
		l = &listener{}
		k.listeners[lk] = l
		// A new listener first gets what is stored, before the confirmation.
		if vals := n.st.get(m.Hash, m.Query, now); len(vals) > 0 {
			l.addr, l.query, l.version = from, m.Query, m.Version
			n.pushToLocked(m.Hash, lk, l, vals, nil, nil)
		}
	}
	l.addr, l.query, l.version, l.refreshed = from, m.Query, m.Version, now
	r := n.base(wire.KindReply, m.TID)
	r.SeenAddr = from.Addr()
	n.replyLocked(&r, nil, from, src)
}

// pushValuesLocked tells the listeners of h about new or changed values.
func (n *Node) pushValuesLocked(h wire.ID, vals []*wire.Value, _ []uint64) {
	k := n.st.key(h, false)
	if k == nil {
		return
	}
	for lk, l := range k.listeners {
		var match []*wire.Value
		for _, v := range vals {
			if matches(v, l.query) {
				match = append(match, v)
			}
		}
		if len(match) > 0 {
			n.pushToLocked(h, lk, l, match, nil, nil)
		}
	}
}

// notifyLocked sends "re" (refreshed) or "exp" (expired) pushes.
func (n *Node) notifyLocked(h wire.ID, refreshed, expired []uint64) {
	k := n.st.key(h, false)
	if k == nil {
		return
	}
	for lk, l := range k.listeners {
		n.pushToLocked(h, lk, l, nil, refreshed, expired)
	}
}

// pushToLocked sends one update request to a listener (sendUpdateValues,
// tellListenerRefreshed/Expired), retried like any request.
func (n *Node) pushToLocked(h wire.ID, lk listenerKey, l *listener, vals []*wire.Value, re, exp []uint64) {
	m := n.base(wire.KindQuery, n.newTID())
	m.Method = wire.Update
	m.SID = lk.sid
	m.Token = n.tok.make(l.addr)
	var parts [][]byte
	if len(re) > 0 || len(exp) > 0 {
		m.Refreshed, m.Expired = re, exp
	} else {
		m.Version = 1
		m.Hash = h
		parts = wire.AppendParts(m.TID, n.cfg.Network, m.SetValues(vals))
	}
	n.requestLocked(&request{to: l.addr, node: lk.node, method: wire.Update}, &m, parts)
}

func (n *Node) storageMaintenanceLocked(now time.Time) {
	for h, ids := range n.st.expire(now) {
		n.notifyLocked(h, nil, ids)
	}
}
