package gitp2p

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseSpecialPackets(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind Kind
		data string
		n    int
		err  error
	}{
		{"0000", Flush, "", 4, nil},
		{"0001", Delim, "", 4, nil},
		{"0002", ResponseEnd, "", 4, nil},
		{"0003", 0, "", 0, ErrBadLength},
		{"0004", Data, "", 4, nil},
		{"0006a\n", Data, "a\n", 6, nil},
		{"000Ahello!", Data, "hello!", 10, nil},
		{"0009done\nrest", Data, "done\n", 9, nil},
		{"fff0" + strings.Repeat("x", MaxPayload), Data, strings.Repeat("x", MaxPayload), MaxPacketLen, nil},
		{"fff1", 0, "", 0, ErrTooLong},
		{"zzzz", 0, "", 0, ErrBadLength},
		{"00", 0, "", 0, io.ErrUnexpectedEOF},
		{"0010short", 0, "", 0, io.ErrUnexpectedEOF},
	} {
		kind, p, n, err := Parse([]byte(tc.in))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Parse(%.12q) error %v, want %v", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || kind != tc.kind || string(p) != tc.data || n != tc.n {
			t.Errorf("Parse(%.12q) = %v %.12q %d %v, want %v %.12q %d", tc.in, kind, p, n, err, tc.kind, tc.data, tc.n)
		}
	}
}

func TestAppendDataLimit(t *testing.T) {
	if _, err := AppendData(nil, make([]byte, MaxPayload)); err != nil {
		t.Fatalf("65516-byte payload refused: %v", err)
	}
	if _, err := AppendData(nil, make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("65517-byte payload: %v, want ErrTooLong", err)
	}
	// Golden bytes from gitprotocol-common(5).
	if got := string(AppendString(nil, "a\n")); got != "0006a\n" {
		t.Fatalf("got %q", got)
	}
	if got := string(AppendString(nil, "")); got != "0004" {
		t.Fatalf("got %q", got)
	}
}

func TestSidebandSplit(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 20000) // 200000 bytes
	for _, max := range []int{MaxSidebandData, SmallSidebandData} {
		b := AppendSideband(nil, BandData, data, max)
		var got []byte
		for len(b) > 0 {
			kind, p, n, err := Parse(b)
			if err != nil || kind != Data {
				t.Fatalf("parse: %v %v", kind, err)
			}
			if n > max+5 {
				t.Fatalf("packet of %d bytes with max %d", n, max)
			}
			band, d, err := ParseSideband(p)
			if err != nil || band != BandData {
				t.Fatalf("band %d %v", band, err)
			}
			got = append(got, d...)
			b = b[n:]
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("side-band round trip with max %d lost data", max)
		}
	}
	if _, _, err := ParseSideband([]byte{4, 'x'}); !errors.Is(err, ErrBadSideband) {
		t.Fatalf("band 4: %v", err)
	}
	if _, _, err := ParseSideband(nil); !errors.Is(err, ErrBadSideband) {
		t.Fatalf("empty: %v", err)
	}
}

func TestReaderStream(t *testing.T) {
	var b []byte
	b = AppendString(b, "want abc\n")
	b = AppendFlush(b)
	b = AppendDelim(b)
	b = append(b, "PACK"...)
	r := NewReader(bytes.NewReader(b))
	if l, k, err := r.Line(); err != nil || k != Data || l != "want abc" {
		t.Fatalf("line %q %v %v", l, k, err)
	}
	if _, k, err := r.Line(); err != nil || k != Flush {
		t.Fatalf("flush %v %v", k, err)
	}
	if _, _, err := r.Line(); err == nil {
		t.Fatal("delim accepted by Line")
	}
	rest, _ := io.ReadAll(r.Buffered())
	if string(rest) != "PACK" {
		t.Fatalf("rest %q", rest)
	}
	r = NewReader(strings.NewReader("0009do"))
	if _, _, err := r.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut packet: %v", err)
	}
	r = NewReader(strings.NewReader(""))
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("empty stream: %v", err)
	}
}

// FuzzParse: any input either fails or decodes to a packet that encodes
// back to the same bytes (modulo hex case), and the stream reader agrees
// with the pure parser.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0000", "0001", "0002", "0003", "0004", "0006a\n", "fff0", "ffff", "00zz", "0008\x02ab", "000aERR x\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, p, n, err := Parse(b)
		rk, rp, rerr := NewReader(bytes.NewReader(b)).Next()
		if err != nil {
			if rerr == nil {
				t.Fatalf("Parse failed (%v) but Reader read %v %q", err, rk, rp)
			}
			return
		}
		if rerr != nil || rk != kind || !bytes.Equal(rp, p) {
			t.Fatalf("Reader %v %q %v, Parse %v %q", rk, rp, rerr, kind, p)
		}
		var enc []byte
		switch kind {
		case Flush:
			enc = AppendFlush(nil)
		case Delim:
			enc = AppendDelim(nil)
		case ResponseEnd:
			enc = AppendResponseEnd(nil)
		case Data:
			if enc, err = AppendData(nil, p); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.EqualFold(enc, b[:n]) {
			t.Fatalf("round trip %q -> %q", b[:n], enc)
		}
		if kind == Data && len(p) > 0 {
			if band, d, err := ParseSideband(p); err == nil {
				again := AppendSideband(nil, band, d, MaxSidebandData)
				if len(d) > 0 && !bytes.EqualFold(again, b[:n]) {
					t.Fatalf("side-band round trip %q -> %q", b[:n], again)
				}
			}
		}
	})
}
