package ice

import (
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strconv"
	"strings"
)

// CandidateType is the candidate type of RFC 8445 §5.1.1.
type CandidateType uint8

// Candidate types, in the order of their RFC 8445 §5.1.2.2 recommended type
// preferences (host highest, relayed lowest).
const (
	Host CandidateType = iota + 1
	PeerReflexive
	ServerReflexive
	Relayed
)

var candTypeNames = map[CandidateType]string{
	Host: "host", PeerReflexive: "prflx", ServerReflexive: "srflx", Relayed: "relay",
}

func (t CandidateType) String() string {
	if s, ok := candTypeNames[t]; ok {
		return s
	}
	return "CandidateType(" + strconv.Itoa(int(t)) + ")"
}

// TypePreference is the RFC 8445 §5.1.2.2 recommended type preference.
func (t CandidateType) TypePreference() uint32 {
	switch t {
	case Host:
		return 126
	case PeerReflexive:
		return 110
	case ServerReflexive:
		return 100
	default:
		return 0
	}
}

// TCPType is the RFC 6544 §4.5 tcptype of a candidate.
type TCPType uint8

// TCP candidate types (RFC 6544 §4.1).
const (
	Active  TCPType = iota + 1 // opens outgoing connections, never accepts
	Passive                    // accepts incoming connections, never opens
	SO                         // simultaneous-open: both sides connect to each other
)

var tcpTypeNames = map[TCPType]string{Active: "active", Passive: "passive", SO: "so"}

func (t TCPType) String() string {
	if s, ok := tcpTypeNames[t]; ok {
		return s
	}
	return "TCPType(" + strconv.Itoa(int(t)) + ")"
}

// DiscardPort is the port an active candidate carries in its description
// (RFC 6544 §4.5): active candidates are never connected to, so the real
// ephemeral port is meaningless to the peer.
const DiscardPort = 9

// Candidate is one ICE-TCP candidate (component 1 only: DEL carries one
// stream per connection).
type Candidate struct {
	Foundation string
	Component  uint16
	Priority   uint32
	Addr       netip.AddrPort // transport address; port 9 for active candidates
	Type       CandidateType
	TCPType    TCPType
	Related    netip.AddrPort // raddr/rport: the base of srflx/prflx, the mapped address of relay; zero for host
	// Base is the local transport address a local candidate sends from
	// (RFC 8445 §5.1.1.1). Never encoded; zero for remote candidates.
	Base netip.AddrPort
}

// Errors returned by ParseCandidate.
var (
	ErrCandidateSyntax = errors.New("ice: malformed candidate")
	ErrNotTCP          = errors.New("ice: candidate transport is not TCP")
)

// String encodes c in the a=candidate syntax of RFC 8445 §5.1 (the grammar
// of RFC 8839 §5.1) with the tcptype extension of RFC 6544 §4.5, without
// the "a=" prefix:
//
//	candidate:<foundation> <component> TCP <priority> <ip> <port> typ <type> [raddr <ip> rport <port>] tcptype <active|passive|so>
func (c Candidate) String() string {
	var b strings.Builder
	b.WriteString("candidate:")
	b.WriteString(c.Foundation)
	fmt.Fprintf(&b, " %d TCP %d %s %d typ %s", c.Component, c.Priority, c.Addr.Addr().Unmap(), c.Addr.Port(), c.Type)
	if c.Related.IsValid() {
		fmt.Fprintf(&b, " raddr %s rport %d", c.Related.Addr().Unmap(), c.Related.Port())
	}
	fmt.Fprintf(&b, " tcptype %s", c.TCPType)
	return b.String()
}

// ParseCandidate decodes one candidate line. An "a=" prefix is accepted.
// Extension attributes other than raddr/rport/tcptype are ignored, as RFC
// 8839 §5.1 requires. Non-TCP candidates return ErrNotTCP so a caller can
// skip them.
func ParseCandidate(s string) (Candidate, error) {
	var c Candidate
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "a=")
	rest, ok := strings.CutPrefix(s, "candidate:")
	if !ok {
		return c, fmt.Errorf("%w: no candidate: prefix", ErrCandidateSyntax)
	}
	f := strings.Fields(rest)
	if len(f) < 8 || f[6] != "typ" {
		return c, fmt.Errorf("%w: too few fields", ErrCandidateSyntax)
	}
	c.Foundation = f[0]
	if !validFoundation(c.Foundation) {
		return c, fmt.Errorf("%w: foundation %q", ErrCandidateSyntax, c.Foundation)
	}
	comp, err := strconv.ParseUint(f[1], 10, 16)
	if err != nil || comp < 1 || comp > 256 {
		return c, fmt.Errorf("%w: component %q", ErrCandidateSyntax, f[1])
	}
	c.Component = uint16(comp)
	if !strings.EqualFold(f[2], "tcp") {
		return c, ErrNotTCP
	}
	prio, err := strconv.ParseUint(f[3], 10, 32)
	if err != nil || prio == 0 || prio > 1<<31-1 { // RFC 8445 §5.1.2.1: 1..2^31-1
		return c, fmt.Errorf("%w: priority %q", ErrCandidateSyntax, f[3])
	}
	c.Priority = uint32(prio)
	c.Addr, err = parseAddrPort(f[4], f[5])
	if err != nil {
		return c, err
	}
	switch f[7] {
	case "host":
		c.Type = Host
	case "srflx":
		c.Type = ServerReflexive
	case "prflx":
		c.Type = PeerReflexive
	case "relay":
		c.Type = Relayed
	default:
		return c, fmt.Errorf("%w: type %q", ErrCandidateSyntax, f[7])
	}
	var raddr, rport string
	ext := f[8:]
	if len(ext)%2 != 0 {
		return c, fmt.Errorf("%w: odd extension list", ErrCandidateSyntax)
	}
	for i := 0; i < len(ext); i += 2 {
		k, v := ext[i], ext[i+1]
		switch k {
		case "raddr":
			raddr = v
		case "rport":
			rport = v
		case "tcptype":
			switch v {
			case "active":
				c.TCPType = Active
			case "passive":
				c.TCPType = Passive
			case "so":
				c.TCPType = SO
			default:
				return c, fmt.Errorf("%w: tcptype %q", ErrCandidateSyntax, v)
			}
		}
	}
	if c.TCPType == 0 {
		return c, fmt.Errorf("%w: no tcptype", ErrCandidateSyntax)
	}
	if (raddr == "") != (rport == "") {
		return c, fmt.Errorf("%w: raddr without rport", ErrCandidateSyntax)
	}
	if raddr != "" {
		c.Related, err = parseAddrPort(raddr, rport)
		if err != nil {
			return c, err
		}
	}
	if c.Addr.Port() == 0 && c.TCPType != Active {
		return c, fmt.Errorf("%w: port 0 on a %s candidate", ErrCandidateSyntax, c.TCPType)
	}
	return c, nil
}

func parseAddrPort(ip, port string) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%w: address %q", ErrCandidateSyntax, ip)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: port %q", ErrCandidateSyntax, port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// validFoundation: 1*32 ice-char (ALPHA / DIGIT / "+" / "/"), RFC 8839 §5.1.
func validFoundation(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '+' || ch == '/') {
			return false
		}
	}
	return true
}

// Foundation computes the RFC 8445 §5.1.1.3 foundation: equal for two
// candidates exactly when they have the same type, base IP address,
// STUN/TURN server IP address (server, zero for host/prflx) and transport
// (always TCP here). The tcptype is part of it as well, because checks on
// active, passive and S-O candidates fail or succeed independently (a NAT
// may pass S-O but drop passive).
func Foundation(t CandidateType, tcp TCPType, base netip.Addr, server netip.Addr) string {
	h := crc32.NewIEEE()
	fmt.Fprintf(h, "%d|%d|%s|%s|tcp", t, tcp, base.Unmap(), server.Unmap())
	return strconv.FormatUint(uint64(h.Sum32()), 10)
}

// Direction preferences of RFC 6544 §4.2, each in 0..7.
func directionPreference(t CandidateType, tcp TCPType) uint32 {
	natted := t == ServerReflexive || t == PeerReflexive
	switch tcp {
	case Active:
		if natted {
			return 4
		}
		return 6
	case Passive:
		if natted {
			return 2
		}
		return 4
	case SO:
		if natted {
			return 6
		}
		return 2
	}
	return 0
}

// LocalPreference is the RFC 6544 §4.2 local preference:
// 2^13 * direction-pref + other-pref, with other-pref (0..8191) chosen by
// the agent to rank addresses (IPv6 above IPv4, earlier interfaces first).
func LocalPreference(t CandidateType, tcp TCPType, otherPref uint32) uint32 {
	return directionPreference(t, tcp)<<13 | otherPref&0x1fff
}

// Priority is the RFC 8445 §5.1.2.1 candidate priority:
// 2^24 * type-pref + 2^8 * local-pref + (256 - component).
func Priority(t CandidateType, tcp TCPType, otherPref uint32, component uint16) uint32 {
	return t.TypePreference()<<24 | LocalPreference(t, tcp, otherPref)<<8 | (256 - uint32(component))
}

// PairPriority is RFC 8445 §6.1.2.3: with G the controlling agent's
// candidate priority and D the controlled one's,
// 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0).
func PairPriority(controlling, controlled uint32) uint64 {
	g, d := uint64(controlling), uint64(controlled)
	lo, hi := min(g, d), max(g, d)
	var x uint64
	if g > d {
		x = 1
	}
	return lo<<32 + 2*hi + x
}

// canPair reports whether a local and a remote TCP candidate form a pair
// (RFC 6544 §6.2): active with passive, passive with active, S-O with S-O,
// in the same address family.
func canPair(local, remote Candidate) bool {
	if local.Addr.Addr().Is4() != remote.Addr.Addr().Is4() {
		return false
	}
	switch local.TCPType {
	case Active:
		return remote.TCPType == Passive
	case Passive:
		return remote.TCPType == Active
	case SO:
		return remote.TCPType == SO
	}
	return false
}
