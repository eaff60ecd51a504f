package wire

import (
	"fmt"

	"github.com/tinylib/msgp/msgp"
)

// MaxValueSize is OpenDHT's MAX_VALUE_SIZE: cypher + data + signature +
// user type of one value (value.h:92).
const MaxValueSize = 64 * 1024

// Value is an OpenDHT value (opendht-wire.md §12):
//
//	Value = {"id": uint64, "dat": Dat [, "p": priority]}
//	Dat   = bin(cypher) | {"body": Body [, "sig": bin]}
//	Body  = {["seq", "owner", ["to"]], "type", "data" [, "utype"]}
//
// A value is encrypted when Cypher is non-nil, signed when Owner is non-nil.
type Value struct {
	ID       uint64
	Priority uint64

	Cypher []byte // encrypted form: the whole Dat is bin(Cypher)

	Seq       uint16
	Owner     []byte // DER SubjectPublicKeyInfo of the signer
	To        ID     // recipient's public-key id; zero when absent
	Type      uint16
	Data      []byte
	UserType  string
	Signature []byte
}

// Encrypted reports whether v carries a cypher instead of a body.
func (v *Value) Encrypted() bool { return v.Cypher != nil }

// Signed reports whether v has an owner (and so a signature).
func (v *Value) Signed() bool { return v.Cypher == nil && len(v.Owner) > 0 }

// Size is OpenDHT's Value::size, the figure checked against MaxValueSize.
func (v *Value) Size() int {
	return len(v.Cypher) + len(v.Data) + len(v.Signature) + len(v.UserType)
}

// AppendBody appends the canonical msgpack of the body, the bytes a signature
// covers (Value::msgpack_pack_to_sign): key order seq, owner, to, type, data,
// utype, minimal integers, bin for data/owner/to, str for utype.
func (v *Value) AppendBody(b []byte) []byte {
	owned := len(v.Owner) > 0
	n := uint32(2)
	if owned {
		n = 4
		if !v.To.IsZero() {
			n = 5
		}
	}
	if v.UserType != "" {
		n++
	}
	b = msgp.AppendMapHeader(b, n)
	if owned {
		b = appendKV(b, "seq")
		b = msgp.AppendUint64(b, uint64(v.Seq))
		b = appendKV(b, "owner")
		b = msgp.AppendBytes(b, v.Owner)
		if !v.To.IsZero() {
			b = appendKV(b, "to")
			b = msgp.AppendBytes(b, v.To[:])
		}
	}
	b = appendKV(b, "type")
	b = msgp.AppendUint64(b, uint64(v.Type))
	b = appendKV(b, "data")
	b = msgp.AppendBytes(b, v.Data)
	if v.UserType != "" {
		b = appendKV(b, "utype")
		b = msgp.AppendString(b, v.UserType)
	}
	return b
}

// AppendDat appends the "dat" part (Value::msgpack_pack_to_encrypt): the
// bytes that get encrypted for a recipient.
func (v *Value) AppendDat(b []byte) []byte {
	if v.Cypher != nil {
		return msgp.AppendBytes(b, v.Cypher)
	}
	signed := len(v.Owner) > 0
	b = msgp.AppendMapHeader(b, 1+bool2int(signed))
	b = appendKV(b, "body")
	b = v.AppendBody(b)
	if signed {
		b = appendKV(b, "sig")
		b = msgp.AppendBytes(b, v.Signature)
	}
	return b
}

// Append appends the whole value as OpenDHT packs it.
func (v *Value) Append(b []byte) []byte {
	b = msgp.AppendMapHeader(b, 2+bool2int(v.Priority != 0))
	b = appendKV(b, "id")
	b = msgp.AppendUint64(b, v.ID)
	b = appendKV(b, "dat")
	b = v.AppendDat(b)
	if v.Priority != 0 {
		b = appendKV(b, "p")
		b = msgp.AppendUint64(b, v.Priority)
	}
	return b
}

// Marshal returns the packed value.
func (v *Value) Marshal() []byte { return v.Append(nil) }

// ParseValue decodes one packed value and returns the bytes after it.
func ParseValue(b []byte) (*Value, []byte, error) {
	v := new(Value)
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return nil, nil, malformed("value", err)
	}
	var haveID, haveDat bool
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return nil, nil, malformed("value key", err)
		}
		switch k {
		case "id":
			v.ID, b, err = readUint(b)
			haveID = true
		case "dat":
			b, err = v.parseDat(b)
			haveDat = true
		case "p":
			v.Priority, b, err = readUint(b)
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return nil, nil, malformed("value field "+k, err)
		}
	}
	if !haveID || !haveDat {
		return nil, nil, malformed("value without id or dat", nil)
	}
	return v, b, nil
}

// ParseDat decodes a "dat" object alone, as found inside a decrypted cypher.
// It fills the body fields of v and returns the bytes after the object.
func (v *Value) ParseDat(b []byte) ([]byte, error) { return v.parseDat(b) }

func (v *Value) parseDat(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, msgp.ErrShortBytes
	}
	if msgp.NextType(b) == msgp.BinType {
		c, o, err := msgp.ReadBytesZC(b)
		if err != nil {
			return nil, err
		}
		v.Cypher = append([]byte{}, c...)
		return o, nil
	}
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return nil, err
	}
	var haveBody, haveSig, haveSeq bool
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return nil, err
		}
		switch k {
		case "body":
			b, haveSeq, err = v.parseBody(b)
			haveBody = true
		case "sig":
			var s []byte
			s, b, err = readBlob(b)
			v.Signature = append([]byte{}, s...)
			haveSig = true
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return nil, err
		}
	}
	if !haveBody {
		return nil, fmt.Errorf("dat without body")
	}
	if len(v.Owner) > 0 && (!haveSeq || !haveSig) {
		return nil, fmt.Errorf("owned value without seq or sig")
	}
	if len(v.Owner) == 0 {
		// An unsigned value has no signature in OpenDHT's model.
		v.Signature = nil
	}
	return b, nil
}

func (v *Value) parseBody(b []byte) (rest []byte, haveSeq bool, err error) {
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return nil, false, err
	}
	var haveData, haveType bool
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return nil, false, err
		}
		var u uint64
		var blob []byte
		switch k {
		case "seq":
			u, b, err = readUint(b)
			if err == nil && u > 0xffff {
				err = fmt.Errorf("seq %d out of range", u)
			}
			v.Seq = uint16(u)
			haveSeq = true
		case "owner":
			blob, b, err = readBlob(b)
			v.Owner = append([]byte{}, blob...)
		case "to":
			v.To, b, err = readHash(b)
		case "type":
			u, b, err = readUint(b)
			if err == nil && u > 0xffff {
				err = fmt.Errorf("type %d out of range", u)
			}
			v.Type = uint16(u)
			haveType = true
		case "data":
			blob, b, err = readBlob(b)
			v.Data = append([]byte{}, blob...)
			haveData = true
		case "utype":
			var s []byte
			s, b, err = msgp.ReadStringZC(b)
			v.UserType = string(s)
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return nil, false, err
		}
	}
	if !haveData || !haveType {
		return nil, false, fmt.Errorf("body without data or type")
	}
	if v.Data == nil {
		v.Data = []byte{}
	}
	return b, haveSeq, nil
}

// Field ids of queries (value.h:153-162).
const (
	FieldNone     = 0
	FieldID       = 1
	FieldType     = 2
	FieldOwnerPk  = 3
	FieldSeq      = 4
	FieldUserType = 5
)

// Query is a get/listen filter: {"s": select, "w": where} (§11).
type Query struct {
	Select []uint64
	Where  []Where
}

// Empty reports whether the query selects and filters nothing, in which
// case OpenDHT does not send it.
func (q *Query) Empty() bool { return q == nil || (len(q.Select) == 0 && len(q.Where) == 0) }

// Where is one equality filter. Id, ValueType and SeqNum compare Uint;
// OwnerPk (a 20-byte hash) and UserType compare Bin.
type Where struct {
	Field uint8
	Uint  uint64
	Bin   []byte
}

func whereIsBin(f uint8) bool { return f == FieldOwnerPk || f == FieldUserType }

// Append packs the query as OpenDHT does.
func (q *Query) Append(b []byte) []byte {
	b = msgp.AppendMapHeader(b, 2)
	b = appendKV(b, "s")
	b = appendUintArray(b, q.Select)
	b = appendKV(b, "w")
	b = msgp.AppendArrayHeader(b, uint32(len(q.Where)))
	for _, w := range q.Where {
		b = msgp.AppendMapHeader(b, 2)
		b = appendKV(b, "f")
		b = msgp.AppendUint64(b, uint64(w.Field))
		b = appendKV(b, "v")
		if whereIsBin(w.Field) {
			b = msgp.AppendBytes(b, w.Bin)
		} else {
			b = msgp.AppendUint64(b, w.Uint)
		}
	}
	return b
}

func parseQuery(b []byte) (*Query, []byte, error) {
	q := new(Query)
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return nil, nil, err
	}
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return nil, nil, err
		}
		switch k {
		case "s":
			q.Select, b, err = readUintArray(b)
		case "w":
			q.Where, b, err = parseWhere(b)
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return q, b, nil
}

func parseWhere(b []byte) ([]Where, []byte, error) {
	n, b, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil {
		return nil, nil, err
	}
	if int(n) > len(b) {
		return nil, nil, msgp.ErrShortBytes
	}
	out := make([]Where, 0, n)
	for i := uint32(0); i < n; i++ {
		var m uint32
		if m, b, err = msgp.ReadMapHeaderBytes(b); err != nil {
			return nil, nil, err
		}
		var w Where
		var haveF, haveV bool
		for j := uint32(0); j < m; j++ {
			var k string
			if k, b, err = readKey(b); err != nil {
				return nil, nil, err
			}
			switch k {
			case "f":
				var u uint64
				u, b, err = readUint(b)
				if err == nil && u > 0xff {
					err = fmt.Errorf("field %d out of range", u)
				}
				w.Field = uint8(u)
				haveF = true
			case "v":
				haveV = true
				if len(b) > 0 && (msgp.NextType(b) == msgp.BinType || msgp.NextType(b) == msgp.StrType) {
					var blob []byte
					blob, b, err = readBlob(b)
					w.Bin = append([]byte{}, blob...)
				} else {
					w.Uint, b, err = readUint(b)
				}
			default:
				b, err = msgp.Skip(b)
			}
			if err != nil {
				return nil, nil, err
			}
		}
		if !haveF || !haveV {
			return nil, nil, fmt.Errorf("where clause without f or v")
		}
		out = append(out, w)
	}
	return out, b, nil
}

// FieldValue is one item of a "fileds" reply: Id, ValueType and SeqNum are
// uints, UserType a str, OwnerPk a bin.
type FieldValue struct {
	Kind FieldKind
	Uint uint64
	Str  string
	Bin  []byte
}

// FieldKind says which member of a FieldValue is set.
type FieldKind uint8

// Kinds of FieldValue.
const (
	FieldUint FieldKind = iota
	FieldStr
	FieldBin
)

// Fields is a field-projected get reply: {"f": [field ids], "v": [flat values]}.
type Fields struct {
	Fields []uint64
	Values []FieldValue
}

func (f *Fields) append(b []byte) []byte {
	b = msgp.AppendMapHeader(b, 2)
	b = appendKV(b, "f")
	b = appendUintArray(b, f.Fields)
	b = appendKV(b, "v")
	b = msgp.AppendArrayHeader(b, uint32(len(f.Values)))
	for _, v := range f.Values {
		switch v.Kind {
		case FieldStr:
			b = msgp.AppendString(b, v.Str)
		case FieldBin:
			b = msgp.AppendBytes(b, v.Bin)
		default:
			b = msgp.AppendUint64(b, v.Uint)
		}
	}
	return b
}

func parseFields(b []byte) (*Fields, []byte, error) {
	f := new(Fields)
	n, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return nil, nil, err
	}
	for i := uint32(0); i < n; i++ {
		var k string
		if k, b, err = readKey(b); err != nil {
			return nil, nil, err
		}
		switch k {
		case "f":
			f.Fields, b, err = readUintArray(b)
		case "v":
			var m uint32
			if m, b, err = msgp.ReadArrayHeaderBytes(b); err != nil {
				return nil, nil, err
			}
			if int(m) > len(b) {
				return nil, nil, msgp.ErrShortBytes
			}
			f.Values = make([]FieldValue, 0, m)
			for j := uint32(0); j < m; j++ {
				var fv FieldValue
				switch msgp.NextType(b) {
				case msgp.StrType:
					var s []byte
					s, b, err = msgp.ReadStringZC(b)
					fv = FieldValue{Kind: FieldStr, Str: string(s)}
				case msgp.BinType:
					var s []byte
					s, b, err = msgp.ReadBytesZC(b)
					fv = FieldValue{Kind: FieldBin, Bin: append([]byte{}, s...)}
				default:
					fv.Kind = FieldUint
					fv.Uint, b, err = readUint(b)
				}
				if err != nil {
					return nil, nil, err
				}
				f.Values = append(f.Values, fv)
			}
		default:
			b, err = msgp.Skip(b)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return f, b, nil
}
