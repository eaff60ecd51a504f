package ice

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPriorityRFC6544(t *testing.T) {
	// Values computed by hand from RFC 8445 §5.1.2.1 and RFC 6544 §4.2.
	tests := []struct {
		typ   CandidateType
		tcp   TCPType
		other uint32
		want  uint32
	}{
		{Host, Active, 0, 126<<24 + 6<<21 + 255},        // 2126512383
		{Host, Passive, 0, 126<<24 + 4<<21 + 255},       // host: active > passive > so
		{Host, SO, 0, 126<<24 + 2<<21 + 255},            //
		{ServerReflexive, SO, 0, 100<<24 + 6<<21 + 255}, // NATed: so > active > passive
		{ServerReflexive, Active, 0, 100<<24 + 4<<21 + 255},
		{ServerReflexive, Passive, 0, 100<<24 + 2<<21 + 255},
		{PeerReflexive, Passive, 0, 110<<24 + 2<<21 + 255},
		{Relayed, Passive, 0, 4<<21 + 255},
		{Relayed, Active, 0, 6<<21 + 255},
		{Host, Active, 8191, 126<<24 + 6<<21 + 8191<<8 + 255},
		{Host, Active, 8192, 126<<24 + 6<<21 + 255}, // other-pref is 13 bits
	}
	for _, tt := range tests {
		if got := Priority(tt.typ, tt.tcp, tt.other, 1); got != tt.want {
			t.Errorf("Priority(%s,%s,%d) = %d, want %d", tt.typ, tt.tcp, tt.other, got, tt.want)
		}
	}
	if Priority(Host, Active, 0, 1) != 2126512383 {
		t.Errorf("host active = %d, want 2126512383", Priority(Host, Active, 0, 1))
	}
	// Any host beats any srflx beats any relay, whatever the direction.
	if Priority(Host, SO, 0, 1) <= Priority(PeerReflexive, SO, 8191, 1) ||
		Priority(ServerReflexive, Passive, 0, 1) <= Priority(Relayed, Active, 8191, 1) {
		t.Error("type preference does not dominate")
	}
}

func TestPairPriority(t *testing.T) {
	tests := []struct {
		g, d uint32
		want uint64
	}{
		{2, 1, 1<<32 + 4 + 1},
		{1, 2, 1<<32 + 4},
		{7, 7, 7<<32 + 14},
		{1<<31 - 1, 1<<31 - 1, (1<<31-1)<<32 + 2*(1<<31-1)},
	}
	for _, tt := range tests {
		if got := PairPriority(tt.g, tt.d); got != tt.want {
			t.Errorf("PairPriority(%d,%d) = %d, want %d", tt.g, tt.d, got, tt.want)
		}
	}
	// Both agents compute the same pair priority for the same pair.
	a, b := uint32(2126512383), uint32(1690304767)
	if PairPriority(a, b) == PairPriority(b, a) {
		t.Error("G>D bit ignored")
	}
}

func TestFoundation(t *testing.T) {
	ip1, ip2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	stunA := netip.MustParseAddr("198.51.100.1")
	if Foundation(Host, Active, ip1, netip.Addr{}) != Foundation(Host, Active, ip1, netip.Addr{}) {
		t.Error("foundation not deterministic")
	}
	differ := [][2]string{
		{Foundation(Host, Active, ip1, netip.Addr{}), Foundation(Host, Active, ip2, netip.Addr{})},
		{Foundation(Host, Active, ip1, netip.Addr{}), Foundation(ServerReflexive, Active, ip1, stunA)},
		{Foundation(Host, Active, ip1, netip.Addr{}), Foundation(Host, SO, ip1, netip.Addr{})},
		{Foundation(ServerReflexive, SO, ip1, stunA), Foundation(ServerReflexive, SO, ip1, netip.MustParseAddr("198.51.100.2"))},
	}
	for i, d := range differ {
		if d[0] == d[1] {
			t.Errorf("case %d: foundations equal: %s", i, d[0])
		}
	}
	if !validFoundation(Foundation(Relayed, Passive, ip1, stunA)) {
		t.Error("foundation has invalid characters")
	}
}

func TestCandidateParse(t *testing.T) {
	tests := []struct {
		in   string
		want Candidate
		err  error
	}{
		{in: "a=candidate:1 1 TCP 2126512383 10.0.0.1 9 typ host tcptype active",
			want: Candidate{Foundation: "1", Component: 1, Priority: 2126512383, Addr: netip.MustParseAddrPort("10.0.0.1:9"), Type: Host, TCPType: Active}},
		{in: "candidate:ab+/ 1 tcp 1690304767 198.51.100.7 40000 typ srflx raddr 10.0.0.1 rport 40000 tcptype so",
			want: Candidate{Foundation: "ab+/", Component: 1, Priority: 1690304767, Addr: netip.MustParseAddrPort("198.51.100.7:40000"), Type: ServerReflexive, TCPType: SO, Related: netip.MustParseAddrPort("10.0.0.1:40000")}},
		{in: "candidate:3 1 TCP 8388863 ::1 5000 typ relay raddr ::1 rport 6000 generation 0 tcptype passive network-id 1",
			want: Candidate{Foundation: "3", Component: 1, Priority: 8388863, Addr: netip.MustParseAddrPort("[::1]:5000"), Type: Relayed, TCPType: Passive, Related: netip.MustParseAddrPort("[::1]:6000")}},
		{in: "candidate:1 1 UDP 2130706431 10.0.0.1 5000 typ host", err: ErrNotTCP},
		{in: "candidate:1 1 TCP 2130706431 10.0.0.1 5000 typ host", err: ErrCandidateSyntax},                  // no tcptype
		{in: "candidate:1 1 TCP 2130706431 10.0.0.1 5000 typ host tcptype sideways", err: ErrCandidateSyntax}, // bad tcptype
		{in: "candidate:1 1 TCP 0 10.0.0.1 5000 typ host tcptype passive", err: ErrCandidateSyntax},           // priority 0
		{in: "candidate:1 1 TCP 4294967296 10.0.0.1 5000 typ host tcptype passive", err: ErrCandidateSyntax},  // priority overflow
		{in: "candidate:1 1 TCP 2147483648 10.0.0.1 5000 typ host tcptype passive", err: ErrCandidateSyntax},  // > 2^31-1
		{in: "candidate:1 0 TCP 1 10.0.0.1 5000 typ host tcptype passive", err: ErrCandidateSyntax},           // component 0
		{in: "candidate:1 1 TCP 1 10.0.0.1 65536 typ host tcptype passive", err: ErrCandidateSyntax},          // port
		{in: "candidate:1 1 TCP 1 10.0.0.1 0 typ host tcptype passive", err: ErrCandidateSyntax},              // passive port 0
		{in: "candidate:1 1 TCP 1 fe80::1%eth0 5 typ host tcptype passive", err: ErrCandidateSyntax},          // zone
		{in: "candidate:1 1 TCP 1 example.org 5 typ host tcptype passive", err: ErrCandidateSyntax},           // FQDN refused
		{in: "candidate:1 1 TCP 1 10.0.0.1 5 typ bogus tcptype passive", err: ErrCandidateSyntax},
		{in: "candidate:1 1 TCP 1 10.0.0.1 5 type host tcptype passive", err: ErrCandidateSyntax},
		{in: "candidate:1 1 TCP 1 10.0.0.1 5 typ srflx raddr 10.0.0.2 tcptype passive", err: ErrCandidateSyntax},
		{in: "candidate:1 1 TCP 1 10.0.0.1 5 typ srflx raddr 10.0.0.2 rport 7", err: ErrCandidateSyntax}, // odd
		{in: "candidate:a-b 1 TCP 1 10.0.0.1 5 typ host tcptype passive", err: ErrCandidateSyntax},       // foundation char
		{in: "candidate:1 1 TCP 1 10.0.0.1", err: ErrCandidateSyntax},
		{in: "cand:1 1 TCP 1 10.0.0.1 5 typ host tcptype so", err: ErrCandidateSyntax},
		{in: "", err: ErrCandidateSyntax},
	}
	for _, tt := range tests {
		got, err := ParseCandidate(tt.in)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("ParseCandidate(%q) err = %v, want %v", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCandidate(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseCandidate(%q) =\n %+v, want\n %+v", tt.in, got, tt.want)
		}
		// round trip through String
		again, err := ParseCandidate(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q: %v %+v", got.String(), err, again)
		}
	}
}

func TestCandidateString(t *testing.T) {
	c := Candidate{Foundation: "42", Component: 1, Priority: 1690304767, Addr: netip.MustParseAddrPort("198.51.100.7:40000"),
		Type: ServerReflexive, TCPType: SO, Related: netip.MustParseAddrPort("10.0.0.1:40000"),
		Base: netip.MustParseAddrPort("10.0.0.1:40000")}
	want := "candidate:42 1 TCP 1690304767 198.51.100.7 40000 typ srflx raddr 10.0.0.1 rport 40000 tcptype so"
	if c.String() != want {
		t.Errorf("got  %s\nwant %s", c.String(), want)
	}
}

func FuzzParseCandidate(f *testing.F) {
	f.Add("a=candidate:1 1 TCP 2126512383 10.0.0.1 9 typ host tcptype active")
	f.Add("candidate:ab+/ 1 tcp 1690304767 198.51.100.7 40000 typ srflx raddr 10.0.0.1 rport 40000 tcptype so")
	f.Add("candidate:3 1 TCP 8388863 ::1 5000 typ relay raddr ::1 rport 6000 generation 0 tcptype passive")
	f.Add("candidate:1 1 UDP 2130706431 10.0.0.1 5000 typ host")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCandidate(s)
		if err != nil {
			return
		}
		again, err := ParseCandidate(c.String())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", c.String(), err)
		}
		if again != c {
			t.Fatalf("round trip: %+v != %+v", again, c)
		}
	})
}
