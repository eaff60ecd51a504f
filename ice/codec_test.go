package ice

import (
	"bufio"
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/pion/stun/v4"
)

func TestFrameRoundTrip(t *testing.T) {
	var b []byte
	var err error
	payloads := [][]byte{{}, []byte("x"), bytes.Repeat([]byte{0xab}, MaxFrame)}
	for _, p := range payloads {
		if b, err = AppendFrame(b, p); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(b[:4], []byte{0, 0, 0, 1}) {
		t.Errorf("header bytes % x", b[:4])
	}
	rest := b
	for i, want := range payloads {
		var got []byte
		got, rest, err = ParseFrame(rest, MaxFrame)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame %d: %v len %d", i, err, len(got))
		}
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes left", len(rest))
	}
}

func TestFrameRefusals(t *testing.T) {
	if _, err := AppendFrame(nil, make([]byte, MaxFrame+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversize append: %v", err)
	}
	// announced length above the reader's limit: refused before reading it
	if _, _, err := ParseFrame([]byte{0x10, 0x00}, 2048); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversize parse: %v", err)
	}
	if _, _, err := ParseFrame([]byte{0x00}, 2048); !errors.Is(err, ErrShortFrame) {
		t.Errorf("1 byte: %v", err)
	}
	if _, _, err := ParseFrame([]byte{0x00, 0x05, 1, 2}, 2048); !errors.Is(err, ErrShortFrame) {
		t.Errorf("truncated: %v", err)
	}
	r := bufio.NewReaderSize(bytes.NewReader([]byte{0xff, 0xff, 1, 2, 3}), 1<<17)
	if _, err := peekFrame(r, 2048); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("peekFrame oversize: %v", err)
	}
}

func TestPeekFrameConsumesNothingOnError(t *testing.T) {
	full, _ := AppendFrame(nil, []byte("hello"))
	pr := &stepReader{data: full, step: 3}
	r := bufio.NewReaderSize(pr, 1<<17)
	// first Peek sees 3 bytes then EOF-like error from the stepper
	if _, err := peekFrame(r, MaxFrame); err == nil {
		t.Fatal("whole frame from a partial read")
	}
	pr.step = len(full)
	p, err := peekFrame(r, MaxFrame)
	if err != nil || string(p) != "hello" {
		t.Fatalf("after resume: %q %v", p, err)
	}
}

// stepReader returns at most step bytes in total until step is raised,
// then errTest, like a read deadline firing mid-frame.
type stepReader struct {
	data []byte
	off  int
	step int
}

func (s *stepReader) Read(b []byte) (int, error) {
	if s.off >= s.step {
		return 0, errTest
	}
	n := copy(b, s.data[s.off:s.step])
	s.off += n
	return n, nil
}

func FuzzParseFrame(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0}, 16)
	f.Add([]byte{0xff, 0xff}, 100)
	f.Add([]byte{0}, 0)
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		if limit < 0 || limit > MaxFrame {
			limit = MaxFrame
		}
		for len(b) > 0 {
			p, rest, err := ParseFrame(b, limit)
			if err != nil {
				return
			}
			if len(p) > limit || len(rest) >= len(b) {
				t.Fatalf("bad split: %d %d %d", len(p), len(rest), len(b))
			}
			again, _ := AppendFrame(nil, p)
			if !bytes.Equal(again, b[:len(b)-len(rest)]) {
				t.Fatal("re-encode differs")
			}
			b = rest
		}
	})
}

const (
	ufragA, pwdA = "AAAA", "aaaaaaaaaaaaaaaaaaaaaaaa"
	ufragB, pwdB = "BBBB", "bbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestCheckRoundTrip(t *testing.T) {
	req := checkRequest{tx: stun.NewTransactionID(), username: ufragB + ":" + ufragA, priority: 1845493760,
		controlling: true, tieBreaker: 0x0102030405060708, useCandidate: true}
	raw, err := buildCheck(req, pwdB)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeSTUN(raw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseCheck(m, ufragB, pwdB)
	if err != nil || got != req {
		t.Fatalf("parseCheck: %v %+v", err, got)
	}
	mapped := netip.MustParseAddrPort("198.51.100.3:4567")
	resp, _ := buildSuccess(req.tx, mapped, pwdB)
	m, err = decodeSTUN(resp)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseResponse(m, pwdB)
	if err != nil || !r.ok || r.mapped != mapped || r.tx != req.tx {
		t.Fatalf("response: %v %+v", err, r)
	}
	// a response keyed with another password is refused
	if _, err := parseResponse(m, pwdA); !errors.Is(err, ErrBadIntegrity) {
		t.Errorf("wrong key: %v", err)
	}
}

func TestCheckBadInput(t *testing.T) {
	good := checkRequest{tx: stun.NewTransactionID(), username: ufragB + ":" + ufragA, priority: 1, tieBreaker: 9}
	build := func(setters ...stun.Setter) []byte {
		m, err := stun.Build(setters...)
		if err != nil {
			t.Fatal(err)
		}
		return m.Raw
	}
	wrongPwd, _ := buildCheck(good, pwdA)
	unknown := good
	unknown.username = "CCCC:" + ufragA
	unknownRaw, _ := buildCheck(unknown, pwdB)
	tests := []struct {
		name string
		raw  []byte
		err  error
		code stun.ErrorCode
	}{
		{"wrong password", wrongPwd, ErrBadIntegrity, stun.CodeUnauthorized},
		{"unknown username", unknownRaw, ErrUnknownUsername, stun.CodeUnauthorized},
		{"no fingerprint", build(stun.BindingRequest, stun.NewTransactionIDSetter(good.tx), stun.NewUsername(good.username),
			uint32Attr{stun.AttrPriority, 1}, uint64Attr{stun.AttrICEControlled, 1}, stun.NewShortTermIntegrity(pwdB)), ErrNoFingerprint, 0},
		{"no integrity", build(stun.BindingRequest, stun.NewTransactionIDSetter(good.tx), stun.NewUsername(good.username),
			uint32Attr{stun.AttrPriority, 1}, uint64Attr{stun.AttrICEControlled, 1}, stun.Fingerprint), ErrNoIntegrity, stun.CodeBadRequest},
		{"no role", build(stun.BindingRequest, stun.NewTransactionIDSetter(good.tx), stun.NewUsername(good.username),
			uint32Attr{stun.AttrPriority, 1}, stun.NewShortTermIntegrity(pwdB), stun.Fingerprint), ErrNoRole, stun.CodeBadRequest},
		{"not stun", []byte("GET / HTTP/1.1\r\n\r\n"), ErrNotSTUN, 0},
		{"indication", build(stun.NewType(stun.MethodBinding, stun.ClassIndication), stun.NewTransactionIDSetter(good.tx), stun.Fingerprint), ErrNotSTUN, 0},
	}
	for _, tt := range tests {
		m, err := decodeSTUN(tt.raw)
		if err == nil {
			_, err = parseCheck(m, ufragB, pwdB)
		}
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.err)
		}
		if c := checkError(err); c != tt.code {
			t.Errorf("%s: answer %d, want %d", tt.name, c, tt.code)
		}
	}
}

func TestErrorResponses(t *testing.T) {
	tx := stun.NewTransactionID()
	raw, _ := buildError(tx, stun.CodeRoleConflict, pwdB)
	m, err := decodeSTUN(raw)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseResponse(m, pwdB)
	if err != nil || r.ok || r.code != stun.CodeRoleConflict {
		t.Fatalf("487: %v %+v", err, r)
	}
	// a 487 without integrity is not believed (an attacker could flip roles)
	raw, _ = buildError(tx, stun.CodeRoleConflict, "")
	m, _ = decodeSTUN(raw)
	if _, err := parseResponse(m, pwdB); !errors.Is(err, ErrBadIntegrity) {
		t.Errorf("unauthenticated 487: %v", err)
	}
	raw, _ = buildError(tx, stun.CodeUnauthorized, "")
	m, _ = decodeSTUN(raw)
	if r, err := parseResponse(m, pwdB); err != nil || r.code != stun.CodeUnauthorized {
		t.Errorf("401: %v %+v", err, r)
	}
}

func FuzzParseCheck(f *testing.F) {
	req := checkRequest{tx: stun.NewTransactionID(), username: ufragB + ":" + ufragA, priority: 7, controlling: true, tieBreaker: 3, useCandidate: true}
	raw, _ := buildCheck(req, pwdB)
	f.Add(raw)
	resp, _ := buildSuccess(req.tx, netip.MustParseAddrPort("[2001:db8::1]:5"), pwdB)
	f.Add(resp)
	e, _ := buildError(req.tx, stun.CodeRoleConflict, pwdB)
	f.Add(e)
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeSTUN(b)
		if err != nil {
			return
		}
		if r, err := parseCheck(m, ufragB, pwdB); err == nil {
			again, err := buildCheck(r, pwdB)
			if err != nil {
				t.Fatal(err)
			}
			m2, err := decodeSTUN(again)
			if err != nil {
				t.Fatal(err)
			}
			if r2, err := parseCheck(m2, ufragB, pwdB); err != nil || r2 != r {
				t.Fatalf("round trip: %v %+v %+v", err, r, r2)
			}
		}
		_, _ = parseResponse(m, pwdB)
	})
}

func TestDescriptionRoundTrip(t *testing.T) {
	d := Description{Ufrag: randomICEString(8), Pwd: randomICEString(24), Candidates: []Candidate{
		cand(Host, Active, "10.0.0.1:9", ""), cand(Host, Passive, "[fd00::1]:4000", ""),
		cand(ServerReflexive, SO, "198.51.100.1:4001", "10.0.0.1:4001"),
	}}
	d.Candidates[2].Related = netip.MustParseAddrPort("10.0.0.1:4001")
	text := d.Marshal()
	got, err := ParseDescription(text)
	if err != nil {
		t.Fatal(err)
	}
	if got.Ufrag != d.Ufrag || got.Pwd != d.Pwd || len(got.Candidates) != 3 {
		t.Fatalf("got %+v", got)
	}
	for i, c := range got.Candidates {
		want := d.Candidates[i]
		want.Base = netip.AddrPort{} // never sent
		if c != want {
			t.Errorf("candidate %d: %+v != %+v", i, c, want)
		}
	}
	if strings.Contains(string(text), "10.0.0.1:") {
		t.Error("base leaked into text")
	}
}

func TestDescriptionBadInput(t *testing.T) {
	good := "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"minimal", good, true},
		{"udp candidate skipped", good + "a=candidate:1 1 UDP 1 10.0.0.1 5 typ host\n", true},
		{"unknown line ignored", good + "a=ice-options:trickle\nv=0\n", true},
		{"short ufrag", "a=ice-ufrag:abc\na=ice-pwd:0123456789012345678901\n", false},
		{"short pwd", "a=ice-ufrag:abcd\na=ice-pwd:012345678901234567890\n", false},
		{"no pwd", "a=ice-ufrag:abcd\n", false},
		{"bad chars", "a=ice-ufrag:ab d\na=ice-pwd:0123456789012345678901\n", false},
		{"bad candidate", good + "a=candidate:1 1 TCP x 10.0.0.1 5 typ host tcptype so\n", false},
		{"too long", good + strings.Repeat("#", MaxDescription), false},
	}
	for _, tt := range tests {
		_, err := ParseDescription([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v", tt.name, err)
		}
		if err != nil && !errors.Is(err, ErrDescription) {
			t.Errorf("%s: error %v is not ErrDescription", tt.name, err)
		}
	}
}

func FuzzParseDescription(f *testing.F) {
	f.Add([]byte("a=ice-ufrag:abcd\na=ice-pwd:0123456789012345678901\na=candidate:1 1 TCP 2126512383 10.0.0.1 9 typ host tcptype active\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDescription(b)
		if err != nil {
			return
		}
		d2, err := ParseDescription(d.Marshal())
		if err != nil || d2.Ufrag != d.Ufrag || d2.Pwd != d.Pwd || len(d2.Candidates) != len(d.Candidates) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range d.Candidates {
			if d.Candidates[i] != d2.Candidates[i] {
				t.Fatalf("candidate %d differs", i)
			}
		}
	})
}

// FuzzNextFrame feeds arbitrary bytes to the frame classifier used on live
// connections (check phase) and to Conn.Read's path: no panic, no loop.
func FuzzNextFrame(f *testing.F) {
	req := checkRequest{tx: stun.NewTransactionID(), username: ufragB + ":" + ufragA, priority: 7, tieBreaker: 3}
	raw, _ := buildCheck(req, pwdB)
	framed, _ := AppendFrame(nil, raw)
	f.Add(append(framed, 0, 3, 'a', 'b', 'c'))
	f.Add([]byte{0x00, 0x14, 0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42})
	f.Add([]byte{0x10, 0x00, 0x00, 0x01, 0x0f, 0xec, 0x21, 0x12, 0xa4, 0x42})
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 2+MaxFrame+16)
		for i := 0; i <= len(b); i++ {
			kind, _, err := nextFrame(br)
			if err != nil {
				return
			}
			if kind == frameData {
				if err := discardFrame(br); err != nil {
					return
				}
			}
		}
		t.Fatal("nextFrame did not consume its input")
	})
}
