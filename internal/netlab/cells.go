package netlab

// Expect says which path a cell allows between its two devices.
type Expect int

// What a cell allows.
const (
	// Direct: a direct path exists (host, server-reflexive or
	// simultaneous-open) and must be found.
	Direct Expect = iota
	// Relay: no direct path exists; only a relay connects the devices.
	Relay
	// Race: a direct path exists only if the simultaneous-open SYNs cross
	// within the NATs' RST round trip (NATs answering unsolicited SYNs with
	// RST kill the other side's mapping): either outcome is right.
	Race
)

// Cell is one topology of the NAT lab with two devices: a (the one that
// starts, e.g. the sender or ICE controlling side) and b.
type Cell struct {
	Name   string
	Build  func(l *Lab) (a, b *NS)
	Expect Expect
}

// Cells are the topologies every layer that crosses NATs is tested in:
// same LAN; public host to a host behind a NAT; endpoint-independent NATs
// dropping unsolicited inbound on both sides; the same answering with RST;
// a symmetric NAT on one side; on both sides.
var Cells = []Cell{
	{"same-lan", func(l *Lab) (a, b *NS) {
		r := l.AddNAT("nat", 2, 1, NATDrop)
		return r.AddHost("a", 2), r.AddHost("b", 3)
	}, Direct},
	{"public-nat", func(l *Lab) (a, b *NS) {
		r := l.AddNAT("nat", 2, 1, NATDrop)
		return l.AddPublicHost("a", 10), r.AddHost("b", 2)
	}, Direct},
	{"eim-drop-both", EIMBoth(NATDrop), Direct},
	{"eim-rst-both", EIMBoth(NATReset), Race},
	{"symmetric-one", func(l *Lab) (a, b *NS) {
		r1 := l.AddNAT("nat1", 2, 1, NATDrop)
		r2 := l.AddNAT("nat2", 3, 2, NATSymmetric)
		return r1.AddHost("a", 2), r2.AddHost("b", 2)
	}, Relay},
	{"symmetric-both", EIMBoth(NATSymmetric), Relay},
}

// EIMBoth builds two hosts, each behind its own NAT of the given kind.
func EIMBoth(kind NATKind) func(l *Lab) (a, b *NS) {
	return func(l *Lab) (a, b *NS) {
		r1 := l.AddNAT("nat1", 2, 1, kind)
		r2 := l.AddNAT("nat2", 3, 2, kind)
		return r1.AddHost("a", 2), r2.AddHost("b", 2)
	}
}
