package wire

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzDecode: no input panics the decoder, and whatever decodes re-encodes
// to bytes that decode to the same message and encode to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, s := range loadSamples(f) {
		f.Add(s.raw)
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0x81, 0xa1, 0x65, 0x90})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		enc := m.Marshal()
		m2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v\n%x", err, enc)
		}
		enc2 := m2.Marshal()
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not stable\n%x\n%x", enc, enc2)
		}
	})
}

// FuzzValue: a decoded value re-encodes to a value with the same fields.
func FuzzValue(f *testing.F) {
	f.Add((&Value{ID: 1, Data: []byte("x"), UserType: "text/plain"}).Marshal())
	f.Add((&Value{ID: 2, Seq: 3, Owner: []byte{1, 2}, To: ID{1}, Data: []byte{}, Signature: []byte{9}}).Marshal())
	f.Add((&Value{ID: 3, Cypher: []byte{1, 2, 3}, Priority: 2}).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		v, _, err := ParseValue(b)
		if err != nil {
			return
		}
		v2, rest, err := ParseValue(v.Marshal())
		if err != nil || len(rest) != 0 {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("value changed\n%+v\n%+v", v, v2)
		}
	})
}

// FuzzReassembly: arbitrary parts never panic the reassembler nor make it
// hold more bytes than announced.
func FuzzReassembly(f *testing.F) {
	f.Add(uint16(100), uint16(0), []byte("abc"), uint16(3), []byte("def"))
	f.Fuzz(func(t *testing.T, size, o1 uint16, d1 []byte, o2 uint16, d2 []byte) {
		r := NewReassembly(&Message{ValueSizes: []uint64{uint64(size)}})
		r.Add(&Message{Parts: []Part{{Index: 0, Offset: uint64(o1), Data: d1}}})
		r.Add(&Message{Parts: []Part{{Index: 0, Offset: uint64(o2), Data: d2}, {Index: 7, Data: d1}}})
		if len(r.bufs[0]) > int(size) {
			t.Fatalf("holds %d bytes of %d", len(r.bufs[0]), size)
		}
		if r.Complete() {
			r.Message()
		}
	})
}
