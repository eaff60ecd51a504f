package wire

// Fragmentation constants (network_engine.h:486-494).
const (
	MTU                = 1280 // bytes of value data per "p" packet
	MaxPacketValueSize = 600  // values totalling this much or more are fragmented
	MaxInlineValues    = 50   // this many values or more are fragmented
)

// SetValues puts vals into m the way packValueHeader does: inline when
// there are fewer than 50 and they total less than 600 bytes, otherwise as
// sizes. It returns the packed values that must follow as parts (nil when
// they are inline).
func (m *Message) SetValues(vals []*Value) [][]byte {
	packed := make([][]byte, len(vals))
	total := 0
	for i, v := range vals {
		packed[i] = v.Marshal()
		total += len(packed[i])
	}
	if len(vals) < MaxInlineValues && total < MaxPacketValueSize {
		m.Values, m.ValueSizes = vals, nil
		return nil
	}
	m.Values = nil
	m.ValueSizes = make([]uint64, len(packed))
	for i, p := range packed {
		m.ValueSizes[i] = uint64(len(p))
	}
	return packed
}

// AppendParts encodes the "p" datagrams carrying packed values for the
// message with the given tid (sendValueParts): one chunk of at most MTU
// bytes of one value per datagram, in order.
func AppendParts(tid, network uint32, packed [][]byte) [][]byte {
	var out [][]byte
	for i, v := range packed {
		for start := 0; start < len(v) || (start == 0 && len(v) == 0); {
			end := min(start+MTU, len(v))
			m := Message{Kind: KindPart, TID: tid, Network: network,
				Parts: []Part{{Index: uint64(i), Offset: uint64(start), Data: v[start:end]}}}
			out = append(out, m.Marshal())
			if end == len(v) {
				break
			}
			start = end
		}
	}
	return out
}

// Reassembly collects the parts of one fragmented message. OpenDHT 2.4
// accepts parts in order only; so does this (a part whose offset is not the
// number of bytes received so far is ignored), which is enough because a
// sender resends every part with each retry of the header.
type Reassembly struct {
	header *Message
	bufs   [][]byte
	want   []uint64
}

// NewReassembly starts collecting the values announced by header's sizes.
// Values larger than MaxValueSize+32 are ignored, as OpenDHT does.
func NewReassembly(header *Message) *Reassembly {
	r := &Reassembly{header: header, want: header.ValueSizes, bufs: make([][]byte, len(header.ValueSizes))}
	return r
}

// Add appends the data of a part message; it reports whether anything new
// was taken.
func (r *Reassembly) Add(p *Message) bool {
	took := false
	for _, part := range p.Parts {
		if part.Index >= uint64(len(r.want)) {
			continue
		}
		i := part.Index
		size := r.want[i]
		if size > MaxValueSize+32 {
			continue
		}
		have := uint64(len(r.bufs[i]))
		if have >= size || part.Offset != have || uint64(len(part.Data)) > size-have {
			continue
		}
		r.bufs[i] = append(r.bufs[i], part.Data...)
		took = true
	}
	return took
}

// Complete reports whether every value has all its bytes.
func (r *Reassembly) Complete() bool {
	for i, size := range r.want {
		if size <= MaxValueSize+32 && uint64(len(r.bufs[i])) < size {
			return false
		}
	}
	return true
}

// Message returns the header with the reassembled values in Values (those
// that do not parse are dropped) and ValueSizes cleared.
func (r *Reassembly) Message() *Message {
	m := *r.header
	m.Values = m.Values[:len(m.Values):len(m.Values)]
	for i, size := range r.want {
		if size > MaxValueSize+32 {
			continue
		}
		if v, rest, err := ParseValue(r.bufs[i]); err == nil && len(rest) == 0 {
			m.Values = append(m.Values, v)
		}
	}
	m.ValueSizes = nil
	return &m
}
