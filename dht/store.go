package dht

import (
	"bytes"
	"net/netip"
	"slices"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
)

// Storage limits (§12).
const (
	MaxValuesPerKey     = 1024             // OpenDHT allows 65,536; far fewer is plenty and bounds a get
	DefaultStorageLimit = 64 << 20         // bytes of values per node
	listenerExpire      = 10 * time.Minute // NODE_EXPIRE_TIME
	maxListenersPerKey  = 1024
)

type stored struct {
	v       *wire.Value
	size    int // packed size, for the quota
	created time.Time
	expires time.Time
	source  netip.Addr
}

type listenerKey struct {
	node wire.ID
	sid  uint32
}

type listener struct {
	addr      netip.AddrPort
	query     *wire.Query
	version   uint64
	refreshed time.Time
}

type keyStore struct {
	values    []*stored // in arrival order
	listeners map[listenerKey]*listener
}

func (k *keyStore) find(id uint64) (int, *stored) {
	for i, s := range k.values {
		if s.v.ID == id {
			return i, s
		}
	}
	return -1, nil
}

// store holds the values this node is responsible for, with their expiry,
// and the remote listeners of each key. Policy only; no I/O.
type store struct {
	keys  map[wire.ID]*keyStore
	total int
	perIP map[netip.Addr]int
	limit int
}

func newStore(limit int) *store {
	if limit <= 0 {
		limit = DefaultStorageLimit
	}
	return &store{keys: map[wire.ID]*keyStore{}, perIP: map[netip.Addr]int{}, limit: limit}
}

func (s *store) key(h wire.ID, create bool) *keyStore {
	k := s.keys[h]
	if k == nil && create {
		k = &keyStore{listeners: map[listenerKey]*listener{}}
		s.keys[h] = k
	}
	return k
}

type putResult int

const (
	putRejected  putResult = iota
	putStored              // new value
	putRefreshed           // identical value: expiry extended
	putEdited              // signed value replaced by a newer one
)

// storable applies the store policies of §12 that do not depend on
// the routing table: size, type policy (certificates only at their key id).
// Signatures are checked by the caller.
func storable(h wire.ID, v *wire.Value) bool {
	if v.ID == 0 || v.Size() > wire.MaxValueSize {
		return false
	}
	if !v.Encrypted() && v.Type == TypeCertificate {
		cert, err := ParseCertificateValue(v)
		if err != nil || wire.ID(identity.IDOfCert(cert)) != h {
			return false
		}
	}
	return true
}

// put stores v under h. created is the publisher's creation time (already
// clamped to now). Replacing follows OpenDHT's SecureDht edit policy: an
// identical value refreshes; a signed value may be replaced only by the same
// owner with a higher seq; anything else is refused.
func (s *store) put(h wire.ID, v *wire.Value, created time.Time, source netip.Addr, now time.Time) putResult {
	packed := v.Marshal()
	size := len(packed)
	expires := created.Add(TTL(v.Type))
	if v.Encrypted() {
		expires = created.Add(TTL(0))
	}
	if !expires.After(now) {
		return putRejected
	}
	k := s.key(h, true)
	if i, old := k.find(v.ID); old != nil {
		if bytes.Equal(old.v.Marshal(), packed) {
			if expires.After(old.expires) {
				old.expires = expires
			}
			return putRefreshed
		}
		if !old.v.Signed() || !v.Signed() || !bytes.Equal(old.v.Owner, v.Owner) || v.Seq <= old.v.Seq {
			return putRejected
		}
		s.account(old, -1)
		k.values[i] = &stored{v: v, size: size, created: created, expires: expires, source: source}
		s.account(k.values[i], 1)
		s.evict(now)
		return putEdited
	}
	if len(k.values) >= MaxValuesPerKey {
		return putRejected
	}
	st := &stored{v: v, size: size, created: created, expires: expires, source: source}
	k.values = append(k.values, st)
	s.account(st, 1)
	s.evict(now)
	if _, still := k.find(v.ID); still == nil {
		return putRejected
	}
	return putStored
}

func (s *store) account(st *stored, sign int) {
	n := sign * st.size
	s.total += n
	s.perIP[st.source] += n
	if s.perIP[st.source] <= 0 {
		delete(s.perIP, st.source)
	}
}

// evict removes the oldest values of the source using most storage while
// over the limit (dht.cpp:1383-1436).
func (s *store) evict(now time.Time) {
	for s.total > s.limit {
		var top netip.Addr
		for ip, n := range s.perIP {
			if n > s.perIP[top] || !top.IsValid() {
				top = ip
			}
		}
		var oldK wire.ID
		oldI := -1
		var oldest *stored
		for h, k := range s.keys {
			for i, st := range k.values {
				if st.source == top && (oldest == nil || st.created.Before(oldest.created)) {
					oldest, oldK, oldI = st, h, i
				}
			}
		}
		if oldest == nil {
			return
		}
		k := s.keys[oldK]
		k.values = slices.Delete(k.values, oldI, oldI+1)
		s.account(oldest, -1)
	}
}

// refresh extends the expiry of a stored value; it reports whether the key
// has storage at all (false means error 404).
func (s *store) refresh(h wire.ID, vid uint64, now time.Time) (haveKey bool) {
	k := s.key(h, false)
	if k == nil || len(k.values) == 0 {
		return false
	}
	if _, st := k.find(vid); st != nil {
		st.expires = now.Add(TTL(st.v.Type))
	}
	return true
}

// get returns the stored values of h that match q.
func (s *store) get(h wire.ID, q *wire.Query, now time.Time) []*wire.Value {
	k := s.key(h, false)
	if k == nil {
		return nil
	}
	var out []*wire.Value
	for _, st := range k.values {
		if st.expires.After(now) && matches(st.v, q) {
			out = append(out, st.v)
		}
	}
	return out
}

// expire removes expired values and listeners. It returns, per key, the ids
// of the values that expired.
func (s *store) expire(now time.Time) map[wire.ID][]uint64 {
	var out map[wire.ID][]uint64
	for h, k := range s.keys {
		k.values = slices.DeleteFunc(k.values, func(st *stored) bool {
			if st.expires.After(now) {
				return false
			}
			s.account(st, -1)
			if out == nil {
				out = map[wire.ID][]uint64{}
			}
			out[h] = append(out[h], st.v.ID)
			return true
		})
		for lk, l := range k.listeners {
			if now.Sub(l.refreshed) > listenerExpire {
				delete(k.listeners, lk)
			}
		}
		if len(k.values) == 0 && len(k.listeners) == 0 {
			delete(s.keys, h)
		}
	}
	return out
}

// count is the number of stored values.
func (s *store) count() int {
	n := 0
	for _, k := range s.keys {
		n += len(k.values)
	}
	return n
}

// matches applies a query's where clauses to v.
func matches(v *wire.Value, q *wire.Query) bool {
	if q == nil {
		return true
	}
	for _, w := range q.Where {
		switch w.Field {
		case wire.FieldID:
			if v.ID != w.Uint {
				return false
			}
		case wire.FieldType:
			if uint64(v.Type) != w.Uint {
				return false
			}
		case wire.FieldSeq:
			if uint64(v.Seq) != w.Uint {
				return false
			}
		case wire.FieldOwnerPk:
			var owner wire.ID
			if v.Signed() {
				owner = OwnerID(v)
			}
			if !bytes.Equal(owner[:], w.Bin) {
				return false
			}
		case wire.FieldUserType:
			if v.UserType != string(w.Bin) {
				return false
			}
		}
	}
	return true
}

// project builds a "fileds" reply for a select query (value.h:546-571).
func project(vals []*wire.Value, sel []uint64) *wire.Fields {
	fields := slices.Clone(sel)
	slices.Sort(fields)
	fields = slices.Compact(fields)
	f := &wire.Fields{Fields: fields}
	for _, v := range vals {
		for _, id := range fields {
			switch id {
			case wire.FieldID:
				f.Values = append(f.Values, wire.FieldValue{Kind: wire.FieldUint, Uint: v.ID})
			case wire.FieldType:
				f.Values = append(f.Values, wire.FieldValue{Kind: wire.FieldUint, Uint: uint64(v.Type)})
			case wire.FieldSeq:
				f.Values = append(f.Values, wire.FieldValue{Kind: wire.FieldUint, Uint: uint64(v.Seq)})
			case wire.FieldUserType:
				f.Values = append(f.Values, wire.FieldValue{Kind: wire.FieldStr, Str: v.UserType})
			case wire.FieldOwnerPk:
				if v.Signed() {
					f.Values = append(f.Values, wire.FieldValue{Kind: wire.FieldBin, Bin: v.Owner})
				} else {
					f.Values = append(f.Values, wire.FieldValue{Kind: wire.FieldBin, Bin: make([]byte, 20)})
				}
			}
		}
	}
	return f
}
