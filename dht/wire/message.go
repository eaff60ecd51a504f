package wire

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/tinylib/msgp/msgp"
)

// Kind is what a datagram is, decided like OpenDHT by the keys present:
// "e" > "r" > "p" > "u" > query (parsed_message.h:211-236).
type Kind uint8

// Kinds of message.
const (
	KindQuery Kind = iota + 1
	KindReply
	KindError
	KindPart   // "y":"p", a value fragment
	KindLegacy // "u", a version-0 listen notification
)

// Method is a query name.
type Method string

// Query names (§4).
const (
	Ping    Method = "ping"
	Find    Method = "find"
	Get     Method = "get"
	Put     Method = "put"
	Listen  Method = "listen"
	Refresh Method = "refresh"
	Update  Method = "update"
)

// Error codes on the wire (network_engine.h:60-66).
const (
	CodeNonAuthoritative = 203 // missing h, invalid value id
	CodeUnauthorized     = 401 // bad token
	CodeNotFound         = 404 // refresh with no storage
)

// UserAgent is the "v" that OpenDHT 2.4 sends.
const UserAgent = "RNG1"

// Address families of the "w" (want) argument, Linux numbering (§10).
const (
	AFInet  = 2
	AFInet6 = 10
)

// Part is one value fragment: bytes [Offset, Offset+len(Data)) of the
// Index-th value of the header message with the same tid (§8).
type Part struct {
	Index  uint64
	Offset uint64
	Data   []byte
}

// Message is one decoded datagram. Fields of the body ("a", "r" or "u") are
// zero when absent; which ones are sent is decided by the Kind and Method,
// in OpenDHT's order, so that an encoded message is byte-identical to what
// libopendht sends.
type Message struct {
	Kind     Kind
	Method   Method // queries only
	TID      uint32
	Network  uint32 // "n", omitted when 0
	UA       string // "v", omitted when empty
	IsClient bool   // "s", sent by OpenDHT ≥ 3.2 client-mode nodes

	ErrCode uint16
	ErrMsg  string

	// Body.
	ID         ID
	Hash       ID // "h"
	Target     ID
	Want       []uint64 // "w": raw address families; nil when absent
	Query      *Query
	Token      []byte
	SID        uint32
	Version    uint64 // "ve"
	VID        uint64
	Created    int64 // "c", unix seconds; 0 when absent
	Values     []*Value
	ValueSizes []uint64 // "values" as sizes: the values follow as parts
	Fields     *Fields
	Expired    []uint64
	Refreshed  []uint64
	Nodes4     []Node
	Nodes6     []Node
	SeenAddr   netip.Addr // "sa"

	Parts []Part // KindPart only
}

// WantFamilies reads the "w" argument: absent means the family the
// request arrived on (reported by ok=false). 10, 23, 28 and 30 all mean
// IPv6 (Linux, Windows, FreeBSD, macOS numbering).
func (m *Message) WantFamilies() (v4, v6, ok bool) {
	if m.Want == nil {
		return false, false, false
	}
	for _, w := range m.Want {
		switch w {
		case AFInet:
			v4 = true
		case 10, 23, 28, 30:
			v6 = true
		}
	}
	return v4, v6, true
}

// Fragmented reports whether the message carries value sizes, so that its
// values arrive in Part messages with the same tid.
func (m *Message) Fragmented() bool { return len(m.ValueSizes) > 0 }

// Append encodes m after b.
func (m *Message) Append(b []byte) []byte {
	switch m.Kind {
	case KindPart:
		return m.appendPart(b)
	case KindError:
		return m.appendError(b)
	case KindReply:
		return m.appendReply(b)
	case KindLegacy:
		return m.appendLegacy(b)
	default:
		if m.Method == Update && (len(m.Refreshed) > 0 || len(m.Expired) > 0) {
			return m.appendNotify(b)
		}
		return m.appendQuery(b)
	}
}

// Marshal encodes m.
func (m *Message) Marshal() []byte { return m.Append(make([]byte, 0, 256)) }

func (m *Message) topCount(n uint32) uint32 {
	if m.Network != 0 {
		n++
	}
	if m.UA != "" {
		n++
	}
	if m.IsClient {
		n++
	}
	return n
}

// appendTail appends "t", "y", "v", "n" (and "s"), OpenDHT's usual tail.
func (m *Message) appendTail(b []byte, y string) []byte {
	b = appendKV(b, "t")
	b = msgp.AppendUint32(b, m.TID)
	b = appendKV(b, "y")
	b = msgp.AppendString(b, y)
	b = m.appendUANet(b)
	return b
}

func (m *Message) appendUANet(b []byte) []byte {
	if m.UA != "" {
		b = appendKV(b, "v")
		b = msgp.AppendString(b, m.UA)
	}
	if m.Network != 0 {
		b = appendKV(b, "n")
		b = msgp.AppendUint32(b, m.Network)
	}
	if m.IsClient {
		b = appendKV(b, "s")
		b = msgp.AppendBool(b, true)
	}
	return b
}

func (m *Message) appendWant(b []byte) []byte {
	b = appendKV(b, "w")
	return appendUintArray(b, m.Want)
}

func (m *Message) appendValues(b []byte) []byte {
	b = appendKV(b, "values")
	if m.ValueSizes != nil {
		return appendUintArray(b, m.ValueSizes)
	}
	b = msgp.AppendArrayHeader(b, uint32(len(m.Values)))
	for _, v := range m.Values {
		b = v.Append(b)
	}
	return b
}

func (m *Message) hasValues() bool { return len(m.ValueSizes) > 0 || len(m.Values) > 0 }

func (m *Message) appendQuery(b []byte) []byte {
	b = msgp.AppendMapHeader(b, m.topCount(4))
	b = appendKV(b, "a")
	hasQ := !m.Query.Empty()
	switch m.Method {
	case Ping:
		b = msgp.AppendMapHeader(b, 1)
		b = m.appendID(b)
	case Find:
		b = msgp.AppendMapHeader(b, 2+bool2int(m.Want != nil))
		b = m.appendID(b)
		b = appendKV(b, "target")
		b = msgp.AppendBytes(b, m.Target[:])
		if m.Want != nil {
			b = m.appendWant(b)
		}
	case Get:
		b = msgp.AppendMapHeader(b, 2+bool2int(hasQ)+bool2int(m.Want != nil))
		b = m.appendID(b)
		b = m.appendHash(b)
		if hasQ {
			b = appendKV(b, "q")
			b = m.Query.Append(b)
		}
		if m.Want != nil {
			b = m.appendWant(b)
		}
	case Put:
		b = msgp.AppendMapHeader(b, 4+bool2int(m.Created != 0))
		b = m.appendID(b)
		b = m.appendHash(b)
		b = m.appendValues(b)
		b = m.appendCreated(b)
		b = m.appendToken(b)
	case Listen:
		b = msgp.AppendMapHeader(b, 5+bool2int(hasQ))
		b = m.appendID(b)
		b = appendKV(b, "ve")
		b = msgp.AppendUint64(b, m.Version)
		b = m.appendHash(b)
		b = m.appendToken(b)
		b = appendKV(b, "sid")
		b = msgp.AppendUint32(b, m.SID)
		if hasQ {
			b = appendKV(b, "q")
			b = m.Query.Append(b)
		}
	case Refresh:
		b = msgp.AppendMapHeader(b, 4)
		b = m.appendID(b)
		b = m.appendHash(b)
		b = appendKV(b, "vid")
		b = msgp.AppendUint64(b, m.VID)
		b = m.appendToken(b)
	case Update: // sendUpdateValues
		b = msgp.AppendMapHeader(b, 6+bool2int(m.Created != 0))
		b = m.appendID(b)
		b = appendKV(b, "ve")
		b = msgp.AppendUint64(b, m.Version)
		b = m.appendHash(b)
		b = appendKV(b, "sid")
		b = msgp.AppendUint32(b, m.SID)
		b = m.appendValues(b)
		b = m.appendCreated(b)
		b = m.appendToken(b)
	default:
		b = msgp.AppendMapHeader(b, 1)
		b = m.appendID(b)
	}
	b = appendKV(b, "q")
	b = msgp.AppendString(b, string(m.Method))
	return m.appendTail(b, "q")
}

// appendNotify encodes the refreshed/expired form of update
// (tellListenerRefreshed/Expired): its keys come in a different order.
func (m *Message) appendNotify(b []byte) []byte {
	b = msgp.AppendMapHeader(b, m.topCount(4))
	b = appendKV(b, "a")
	b = m.appendNotifyBody(b, true)
	b = appendKV(b, "y")
	b = msgp.AppendString(b, "q")
	b = m.appendUANet(b)
	b = appendKV(b, "q")
	b = msgp.AppendString(b, string(Update))
	b = appendKV(b, "t")
	return msgp.AppendUint32(b, m.TID)
}

func (m *Message) appendNotifyBody(b []byte, withSID bool) []byte {
	n := 1 + bool2int(withSID) + bool2int(len(m.Token) > 0) + bool2int(len(m.Refreshed) > 0) + bool2int(len(m.Expired) > 0)
	b = msgp.AppendMapHeader(b, n)
	b = m.appendID(b)
	if withSID {
		b = appendKV(b, "sid")
		b = msgp.AppendUint32(b, m.SID)
	}
	if len(m.Token) > 0 {
		b = m.appendToken(b)
	}
	if len(m.Refreshed) > 0 {
		b = appendKV(b, "re")
		b = appendUintArray(b, m.Refreshed)
	}
	if len(m.Expired) > 0 {
		b = appendKV(b, "exp")
		b = appendUintArray(b, m.Expired)
	}
	return b
}

// appendLegacy encodes a version-0 notification {"u":{...},"y":"r","v","t":sid}.
func (m *Message) appendLegacy(b []byte) []byte {
	b = msgp.AppendMapHeader(b, m.topCount(3))
	b = appendKV(b, "u")
	b = m.appendNotifyBody(b, false)
	b = appendKV(b, "y")
	b = msgp.AppendString(b, "r")
	b = m.appendUANet(b)
	b = appendKV(b, "t")
	return msgp.AppendUint32(b, m.TID)
}

func (m *Message) appendReply(b []byte) []byte {
	b = msgp.AppendMapHeader(b, m.topCount(3))
	b = appendKV(b, "r")
	sa := m.SeenAddr.IsValid()
	if m.VID != 0 { // sendValueAnnounced
		b = msgp.AppendMapHeader(b, 2+bool2int(sa))
		b = m.appendID(b)
		b = appendKV(b, "vid")
		b = msgp.AppendUint64(b, m.VID)
		b = m.appendSA(b)
	} else { // sendNodesValues, sendPong, sendListenConfirmation
		// The compact lists are built on the stack for the usual 8 nodes.
		var buf4 [8 * Node4Size]byte
		var buf6 [8 * Node6Size]byte
		n4, n6 := AppendNodes4(buf4[:0], m.Nodes4), AppendNodes6(buf6[:0], m.Nodes6)
		n := 1 + bool2int(sa) + bool2int(len(n4) > 0) + bool2int(len(n6) > 0) + bool2int(len(m.Token) > 0) +
			bool2int(m.hasValues() || m.Fields != nil)
		b = msgp.AppendMapHeader(b, n)
		b = m.appendID(b)
		b = m.appendSA(b)
		if len(n4) > 0 {
			b = appendKV(b, "n4")
			b = msgp.AppendBytes(b, n4)
		}
		if len(n6) > 0 {
			b = appendKV(b, "n6")
			b = msgp.AppendBytes(b, n6)
		}
		if len(m.Token) > 0 {
			b = m.appendToken(b)
		}
		if m.hasValues() {
			b = m.appendValues(b)
		} else if m.Fields != nil {
			b = appendKV(b, "fileds")
			b = m.Fields.append(b)
		}
	}
	return m.appendTail(b, "r")
}

func (m *Message) appendError(b []byte) []byte {
	withID := !m.ID.IsZero()
	b = msgp.AppendMapHeader(b, m.topCount(3+bool2int(withID)))
	b = appendKV(b, "e")
	b = msgp.AppendArrayHeader(b, 2)
	b = msgp.AppendUint16(b, m.ErrCode)
	b = msgp.AppendString(b, m.ErrMsg)
	if withID {
		b = appendKV(b, "r")
		b = msgp.AppendMapHeader(b, 1)
		b = m.appendID(b)
	}
	return m.appendTail(b, "e")
}

// appendPart encodes a fragment packet: [n], y, t, p (sendValueParts).
func (m *Message) appendPart(b []byte) []byte {
	n := uint32(3)
	if m.Network != 0 {
		n++
	}
	b = msgp.AppendMapHeader(b, n)
	if m.Network != 0 {
		b = appendKV(b, "n")
		b = msgp.AppendUint32(b, m.Network)
	}
	b = appendKV(b, "y")
	b = msgp.AppendString(b, "p")
	b = appendKV(b, "t")
	b = msgp.AppendUint32(b, m.TID)
	b = appendKV(b, "p")
	b = msgp.AppendMapHeader(b, uint32(len(m.Parts)))
	for _, p := range m.Parts {
		b = msgp.AppendUint64(b, p.Index)
		b = msgp.AppendMapHeader(b, 2)
		b = appendKV(b, "o")
		b = msgp.AppendUint64(b, p.Offset)
		b = appendKV(b, "d")
		b = msgp.AppendBytes(b, p.Data)
	}
	return b
}

func (m *Message) appendID(b []byte) []byte {
	b = appendKV(b, "id")
	return msgp.AppendBytes(b, m.ID[:])
}

func (m *Message) appendHash(b []byte) []byte {
	b = appendKV(b, "h")
	return msgp.AppendBytes(b, m.Hash[:])
}

func (m *Message) appendToken(b []byte) []byte {
	b = appendKV(b, "token")
	return msgp.AppendBytes(b, m.Token)
}

func (m *Message) appendCreated(b []byte) []byte {
	if m.Created == 0 {
		return b
	}
	b = appendKV(b, "c")
	if m.Created < 0 {
		return msgp.AppendInt64(b, m.Created)
	}
	return msgp.AppendUint64(b, uint64(m.Created))
}

func (m *Message) appendSA(b []byte) []byte {
	if !m.SeenAddr.IsValid() {
		return b
	}
	b = appendKV(b, "sa")
	a := m.SeenAddr.Unmap()
	if a.Is4() {
		ip := a.As4()
		return msgp.AppendBytes(b, ip[:])
	}
	ip := a.As16()
	return msgp.AppendBytes(b, ip[:])
}

// Decode parses one datagram. It never panics; every error wraps ErrMalformed.
// A message other than a Part without a non-zero sender id is rejected, as
// OpenDHT drops it.
func Decode(b []byte) (*Message, error) {
	m := new(Message)
	if err := DecodeInto(m, b); err != nil {
		return nil, err
	}
	return m, nil
}

// DecodeInto is Decode into a Message the caller owns and may reuse (it is
// reset first); the decoded fields do not refer to b.
func DecodeInto(m *Message, b []byte) error {
	*m = Message{}
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return malformed("top-level map", err)
	}
	var y, q string
	var a, r, u, e, p []byte // raw objects, decoded once the kind is known
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return malformed("key", err)
		}
		start := b
		switch k {
		case "y":
			var s []byte
			s, b, err = msgp.ReadStringZC(b)
			y = string(s)
		case "q":
			var s []byte
			s, b, err = msgp.ReadStringZC(b)
			q = string(s)
		case "t":
			m.TID, b, err = readTID(b)
		case "v":
			var s []byte
			s, b, err = msgp.ReadStringZC(b)
			m.UA = string(s)
		case "n":
			var v uint64
			v, b, err = readUint(b)
			if err == nil && v > 0xffffffff {
				err = fmt.Errorf("network id %d out of range", v)
			}
			m.Network = uint32(v)
		case "s":
			m.IsClient, b, err = msgp.ReadBoolBytes(b)
		case "a", "r", "u", "e", "p":
			b, err = msgp.Skip(b)
			obj := start[:len(start)-len(b)]
			switch k {
			case "a":
				a = obj
			case "r":
				r = obj
			case "u":
				u = obj
			case "e":
				e = obj
			case "p":
				p = obj
			}
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return malformed("field "+k, err)
		}
	}
	switch {
	case e != nil:
		m.Kind = KindError
		if err := m.parseError(e); err != nil {
			return malformed("e", err)
		}
	case r != nil:
		m.Kind = KindReply
	case p != nil:
		m.Kind = KindPart
		if err := m.parseParts(p); err != nil {
			return malformed("p", err)
		}
		return nil
	case u != nil:
		m.Kind = KindLegacy
	case y != "" && y != "q":
		return malformed(fmt.Sprintf("y=%q without body", y), nil)
	default:
		m.Kind = KindQuery
		m.Method = Method(q)
		switch m.Method {
		case Ping, Find, Get, Put, Listen, Refresh, Update:
		default:
			return malformed(fmt.Sprintf("unknown query %q", q), nil)
		}
	}
	body := a
	if body == nil {
		body = r
	}
	if body == nil {
		body = u
	}
	if body == nil {
		if m.Kind != KindError {
			return malformed("no body", nil)
		}
		return nil
	}
	if err := m.parseBody(body); err != nil {
		return malformed("body", err)
	}
	if m.ID.IsZero() && m.Kind != KindError {
		return malformed("no sender id", nil)
	}
	return nil
}

func readTID(b []byte) (uint32, []byte, error) {
	if len(b) > 0 {
		switch msgp.NextType(b) {
		case msgp.BinType, msgp.StrType:
			v, o, err := readBlob(b)
			if err != nil {
				return 0, nil, err
			}
			if len(v) != 4 {
				return 0, nil, fmt.Errorf("tid of %d bytes", len(v))
			}
			return binary.BigEndian.Uint32(v), o, nil
		}
	}
	v, o, err := readUint(b)
	if err == nil && v > 0xffffffff {
		err = fmt.Errorf("tid %d out of range", v)
	}
	return uint32(v), o, err
}

func (m *Message) parseError(b []byte) error {
	n, b, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("empty error array")
	}
	code, b, err := readUint(b)
	if err != nil {
		return err
	}
	if code > 0xffff {
		return fmt.Errorf("error code %d out of range", code)
	}
	m.ErrCode = uint16(code)
	if n >= 2 && len(b) > 0 && msgp.NextType(b) == msgp.StrType {
		s, _, err := msgp.ReadStringZC(b)
		if err != nil {
			return err
		}
		m.ErrMsg = string(s)
	}
	return nil
}

func (m *Message) parseParts(b []byte) error {
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return err
	}
	for i := uint32(0); i < n; i++ {
		var p Part
		if p.Index, b, err = readUint(b); err != nil {
			return err
		}
		var m2 uint32
		if m2, b, err = msgp.ReadMapHeaderBytes(b); err != nil {
			return err
		}
		var haveO, haveD bool
		for j := uint32(0); j < m2; j++ {
			var k string
			if k, b, err = readKey(b); err != nil {
				return err
			}
			switch k {
			case "o":
				p.Offset, b, err = readUint(b)
				haveO = true
			case "d":
				var d []byte
				d, b, err = readBlob(b)
				p.Data = append([]byte{}, d...)
				haveD = true
			default:
				b, err = msgp.Skip(b)
			}
			if err != nil {
				return err
			}
		}
		if haveO && haveD { // OpenDHT skips incomplete entries
			m.Parts = append(m.Parts, p)
		}
	}
	return nil
}

func (m *Message) parseBody(b []byte) error {
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return err
	}
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return err
		}
		var blob []byte
		var u uint64
		switch k {
		case "id":
			m.ID, b, err = readHash(b)
		case "h":
			m.Hash, b, err = readHash(b)
		case "target":
			m.Target, b, err = readHash(b)
		case "w":
			m.Want, b, err = readUintArray(b)
			if m.Want == nil && err == nil {
				m.Want = []uint64{}
			}
		case "q":
			m.Query, b, err = parseQuery(b)
		case "token":
			blob, b, err = readBlob(b)
			m.Token = append([]byte{}, blob...)
		case "sid":
			m.SID, b, err = readTID(b)
		case "ve":
			m.Version, b, err = readUint(b)
		case "vid":
			m.VID, b, err = readUint(b)
		case "c":
			if len(b) > 0 && msgp.NextType(b) == msgp.IntType {
				m.Created, b, err = msgp.ReadInt64Bytes(b)
			} else {
				u, b, err = readUint(b)
				if u > 1<<62 {
					u = 1 << 62
				}
				m.Created = int64(u)
			}
		case "values":
			b, err = m.parseValues(b)
		case "fileds":
			m.Fields, b, err = parseFields(b)
		case "exp":
			m.Expired, b, err = readUintArray(b)
		case "re":
			m.Refreshed, b, err = readUintArray(b)
		case "n4":
			blob, b, err = readBlob(b)
			if err == nil {
				m.Nodes4, err = ParseNodes4(blob)
			}
		case "n6":
			blob, b, err = readBlob(b)
			if err == nil {
				m.Nodes6, err = ParseNodes6(blob)
			}
		case "sa":
			blob, b, err = msgp.ReadBytesZC(b)
			switch len(blob) {
			case 4:
				m.SeenAddr = netip.AddrFrom4([4]byte(blob))
			case 16:
				m.SeenAddr = netip.AddrFrom16([16]byte(blob))
			}
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

// parseValues reads "values": inline values, or sizes announcing fragments.
// Like OpenDHT, a value that does not parse is skipped, and so is a size
// over MaxValueSize+32.
func (m *Message) parseValues(b []byte) ([]byte, error) {
	n, b, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil {
		return nil, err
	}
	if int(n) > len(b) {
		return nil, msgp.ErrShortBytes
	}
	for i := uint32(0); i < n; i++ {
		switch msgp.NextType(b) {
		case msgp.UintType, msgp.IntType:
			var sz uint64
			if sz, b, err = readUint(b); err != nil {
				return nil, err
			}
			m.ValueSizes = append(m.ValueSizes, sz)
		default:
			start := b
			if b, err = msgp.Skip(b); err != nil {
				return nil, err
			}
			if v, _, verr := ParseValue(start[:len(start)-len(b)]); verr == nil {
				m.Values = append(m.Values, v)
			}
		}
	}
	if m.Values == nil && m.ValueSizes == nil {
		m.Values = []*Value{}
	}
	return b, nil
}
