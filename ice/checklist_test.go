package ice

import (
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func cand(typ CandidateType, tcp TCPType, addr, base string) Candidate {
	a := netip.MustParseAddrPort(addr)
	c := Candidate{Component: 1, Addr: a, Type: typ, TCPType: tcp}
	if base != "" {
		c.Base = netip.MustParseAddrPort(base)
	} else {
		c.Base = a
	}
	c.Priority = Priority(typ, tcp, 0, 1)
	c.Foundation = Foundation(typ, tcp, c.Base.Addr(), netip.Addr{})
	return c
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestPairingTCPTypes(t *testing.T) {
	local := []Candidate{
		cand(Host, Active, "10.0.0.1:9", "10.0.0.1:0"),
		cand(Host, Passive, "10.0.0.1:4000", ""),
		cand(Host, SO, "10.0.0.1:4001", ""),
		cand(ServerReflexive, SO, "198.51.100.1:4001", "10.0.0.1:4001"),
		cand(Host, Passive, "[fd00::1]:4000", ""),
	}
	remote := []Candidate{
		cand(Host, Active, "10.0.1.1:9", ""),
		cand(Host, Passive, "10.0.1.1:5000", ""),
		cand(Host, SO, "10.0.1.1:5001", ""),
		cand(ServerReflexive, SO, "198.51.100.2:5001", ""),
		cand(Relayed, Passive, "198.51.100.9:6000", ""),
		cand(Host, Active, "[fd00::2]:9", ""),
	}
	cl := NewChecklist(local, remote, true)
	type key struct {
		l, r string
	}
	want := map[key]bool{
		{"10.0.0.1:9", "10.0.1.1:5000"}:        true, // active -> passive
		{"10.0.0.1:9", "198.51.100.9:6000"}:    true, // active -> relayed passive
		{"10.0.0.1:4001", "10.0.1.1:5001"}:     true, // so <-> so
		{"10.0.0.1:4001", "198.51.100.2:5001"}: true, // so <-> srflx so (local srflx pruned to its base)
	}
	if len(cl.Pairs) != len(want) {
		for _, p := range cl.Pairs {
			t.Log(p)
		}
		t.Fatalf("%d pairs, want %d", len(cl.Pairs), len(want))
	}
	for i, p := range cl.Pairs {
		if !want[key{p.Local.Addr.String(), p.Remote.Addr.String()}] {
			t.Errorf("unexpected pair %s", p)
		}
		if p.Local.TCPType == Passive || p.Local.Type == ServerReflexive {
			t.Errorf("pair %s should have been pruned", p)
		}
		if i > 0 && cl.Pairs[i-1].Priority < p.Priority {
			t.Errorf("pairs not sorted by priority at %d", i)
		}
		if p.Priority != PairPriority(p.Local.Priority, p.Remote.Priority) {
			t.Errorf("pair %s priority %d, want controlling-side priority", p, p.Priority)
		}
	}
	// The relayed pair is last.
	if last := cl.Pairs[len(cl.Pairs)-1]; last.Direct() {
		t.Errorf("last pair %s is direct, want the relayed one", last)
	}
}

func TestPruneRedundant(t *testing.T) {
	// A host S-O and a srflx S-O with the same base form the same pair with a
	// remote candidate: only one remains, with the higher priority.
	local := []Candidate{
		cand(Host, SO, "10.0.0.1:4001", ""),
		cand(ServerReflexive, SO, "198.51.100.1:4001", "10.0.0.1:4001"),
	}
	remote := []Candidate{cand(Host, SO, "10.0.1.1:5001", ""), cand(Host, SO, "10.0.1.1:5001", "")}
	cl := NewChecklist(local, remote, false)
	if len(cl.Pairs) != 1 {
		t.Fatalf("%d pairs, want 1: %v", len(cl.Pairs), cl.Pairs)
	}
	if cl.Pairs[0].Local.Type != Host {
		t.Errorf("kept %s, want the base", cl.Pairs[0])
	}
}

// fourPairs: two foundations (active→passive on two remote addresses sharing a
// foundation, and S-O) so unfreezing can be observed.
func fourPairs(controlling bool) *Checklist {
	local := []Candidate{cand(Host, Active, "10.0.0.1:9", "10.0.0.1:0"), cand(Host, SO, "10.0.0.1:4001", "")}
	remote := []Candidate{
		cand(Host, Passive, "10.0.1.1:5000", ""),
		cand(Host, Passive, "10.0.1.1:5002", ""), // same foundation as :5000
		cand(Host, SO, "10.0.1.1:5001", ""),
		cand(Host, SO, "10.0.1.1:5003", ""), // same foundation as :5001
	}
	return NewChecklist(local, remote, controlling)
}

func states(cl *Checklist) []PairState {
	var s []PairState
	for _, p := range cl.Pairs {
		s = append(s, p.State)
	}
	return s
}

func TestInitialStatesAndPacing(t *testing.T) {
	cl := fourPairs(true)
	if len(cl.Pairs) != 4 {
		t.Fatalf("%d pairs", len(cl.Pairs))
	}
	// one Waiting pair per foundation: the first (highest priority) of each
	want := []PairState{Waiting, Frozen, Waiting, Frozen}
	if got := states(cl); !equalStates(got, want) {
		t.Fatalf("initial states %v, want %v", got, want)
	}
	cl.Ta = 50 * time.Millisecond
	p1, wake := cl.Next(t0)
	if p1 != cl.Pairs[0] || p1.State != InProgress || p1.Checks != 1 {
		t.Fatalf("first check: %v", p1)
	}
	if !wake.Equal(t0.Add(50 * time.Millisecond)) {
		t.Errorf("wake %v", wake)
	}
	// Ta not elapsed: nothing, and told when to come back.
	if p, wake := cl.Next(t0.Add(10 * time.Millisecond)); p != nil || !wake.Equal(t0.Add(50*time.Millisecond)) {
		t.Fatalf("check before Ta: %v %v", p, wake)
	}
	p2, _ := cl.Next(t0.Add(50 * time.Millisecond))
	if p2 != cl.Pairs[2] {
		t.Fatalf("second check on %v, want the other foundation's waiting pair", p2)
	}
	// Nothing Waiting, both foundations busy: frozen pairs stay frozen.
	if p, _ := cl.Next(t0.Add(100 * time.Millisecond)); p != nil {
		t.Fatalf("unfroze %v while its foundation is in progress", p)
	}
	// The first check fails: its foundation has no active pair left, so its
	// frozen sibling is unfrozen and checked (§6.1.4.2).
	cl.Fail(p1, errTest)
	p3, _ := cl.Next(t0.Add(150 * time.Millisecond))
	if p3 != cl.Pairs[1] {
		t.Fatalf("third check %v, want the frozen pair of the failed foundation", p3)
	}
	// The S-O check succeeds: its frozen sibling becomes Waiting (§7.2.5.3.3).
	cl.Succeeded(p2, t0.Add(170*time.Millisecond), false)
	if p2.RTT != 120*time.Millisecond {
		t.Errorf("RTT %v, want 120ms", p2.RTT)
	}
	if cl.Pairs[3].State != Waiting {
		t.Errorf("sibling of succeeded pair is %s, want waiting", cl.Pairs[3].State)
	}
}

type testErr string

func (e testErr) Error() string { return string(e) }

const errTest = testErr("test failure")

func equalStates(a, b []PairState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRegularNomination(t *testing.T) {
	cl := fourPairs(true)
	cl.Settle = 100 * time.Millisecond
	cl.Ta = 0
	best, _ := cl.Next(t0) // highest priority
	low, _ := cl.Next(t0)
	if best.Priority <= low.Priority {
		t.Fatal("order")
	}
	// The lower pair succeeds first: while the better one is in progress and
	// Settle has not passed, nothing is nominated.
	cl.Succeeded(low, t0.Add(5*time.Millisecond), false)
	if p := cl.ToNominate(t0.Add(10 * time.Millisecond)); p != nil {
		t.Fatalf("nominated %v while a better pair is pending", p)
	}
	if cl.Selected(t0.Add(10*time.Millisecond)) != nil {
		t.Fatal("selected before nomination")
	}
	// The better pair succeeds: it is nominated at once, once only.
	cl.Succeeded(best, t0.Add(20*time.Millisecond), false)
	// the remaining frozen pairs of both foundations are now waiting, but
	// they have lower priority than best
	p := cl.ToNominate(t0.Add(20 * time.Millisecond))
	if p != best || !p.UseCandidate || p.State != Waiting {
		t.Fatalf("ToNominate = %v, want best with USE-CANDIDATE, waiting", p)
	}
	if cl.ToNominate(t0.Add(21*time.Millisecond)) != nil {
		t.Fatal("nominated twice")
	}
	q, _ := cl.Next(t0.Add(21 * time.Millisecond))
	if q != best {
		t.Fatalf("nomination check on %v", q)
	}
	cl.Succeeded(q, t0.Add(25*time.Millisecond), true)
	if !best.Nominated || cl.Selected(t0.Add(25*time.Millisecond)) != best {
		t.Fatal("not selected after the USE-CANDIDATE check succeeded")
	}
	if best.RTT != 20*time.Millisecond {
		t.Errorf("RTT overwritten by the nomination check: %v", best.RTT)
	}
}

func TestRegularNominationSettleExpires(t *testing.T) {
	cl := fourPairs(true)
	cl.Settle, cl.Ta = 100*time.Millisecond, 0
	best, _ := cl.Next(t0)
	low, _ := cl.Next(t0)
	cl.Succeeded(low, t0.Add(5*time.Millisecond), false)
	if cl.ToNominate(t0.Add(104*time.Millisecond)) != nil {
		t.Fatal("settle ignored")
	}
	if p := cl.ToNominate(t0.Add(105 * time.Millisecond)); p != low {
		t.Fatalf("after settle nominated %v, want the valid pair", p)
	}
	_ = best
}

func relayList(t *testing.T) (*Checklist, *Pair, *Pair) {
	t.Helper()
	local := []Candidate{cand(Host, Active, "10.0.0.1:9", "10.0.0.1:0")}
	remote := []Candidate{cand(Host, Passive, "10.0.1.1:5000", ""), cand(Relayed, Passive, "198.51.100.9:6000", "")}
	cl := NewChecklist(local, remote, true)
	cl.Ta = 0
	cl.DirectDeadline = t0.Add(time.Second)
	direct, _ := cl.Next(t0)
	relay, _ := cl.Next(t0)
	if !direct.Direct() || relay.Direct() {
		t.Fatalf("order: %v %v", direct, relay)
	}
	return cl, direct, relay
}

func TestRelayOnlyAfterDirectFails(t *testing.T) {
	cl, direct, relay := relayList(t)
	cl.Succeeded(relay, t0.Add(time.Millisecond), false)
	if p := cl.ToNominate(t0.Add(2 * time.Millisecond)); p != nil {
		t.Fatalf("relay nominated while the direct pair is in progress: %v", p)
	}
	cl.Fail(direct, errTest)
	if p := cl.ToNominate(t0.Add(3 * time.Millisecond)); p != relay {
		t.Fatalf("after the direct pair failed, nominated %v, want relay", p)
	}
}

func TestRelayAfterDirectDeadline(t *testing.T) {
	cl, _, relay := relayList(t)
	cl.Succeeded(relay, t0.Add(time.Millisecond), false)
	if p := cl.ToNominate(t0.Add(999 * time.Millisecond)); p != nil {
		t.Fatalf("relay before the deadline: %v", p)
	}
	if p := cl.ToNominate(t0.Add(time.Second)); p != relay {
		t.Fatalf("at the deadline nominated %v, want relay", p)
	}
}

func TestDirectBeatsRelay(t *testing.T) {
	cl, direct, relay := relayList(t)
	cl.Succeeded(relay, t0.Add(time.Millisecond), false)
	cl.Succeeded(direct, t0.Add(900*time.Millisecond), false)
	if p := cl.ToNominate(t0.Add(2 * time.Second)); p != direct {
		t.Fatalf("nominated %v, want the direct pair", p)
	}
}

func TestAggressiveNomination(t *testing.T) {
	cl := fourPairs(true)
	cl.Nomination, cl.Ta = Aggressive, 0
	p, _ := cl.Next(t0)
	if !p.UseCandidate {
		t.Fatal("aggressive check without USE-CANDIDATE")
	}
	cl.Succeeded(p, t0.Add(time.Millisecond), true)
	if cl.Selected(t0.Add(time.Millisecond)) != p {
		t.Fatal("aggressive: first success not selected")
	}
	if cl.ToNominate(t0.Add(time.Millisecond)) != nil {
		t.Fatal("regular nomination step under aggressive")
	}
}

func TestControlledNomination(t *testing.T) {
	cl := fourPairs(false)
	l, r := cl.Pairs[0].Local, cl.Pairs[0].Remote
	// A check with USE-CANDIDATE arrives before our own check on the pair succeeded.
	p, check := cl.Triggered(l, r, true)
	if p != cl.Pairs[0] || !check || p.State != Waiting {
		t.Fatalf("triggered: %v %v", p, check)
	}
	if p.Nominated || cl.Selected(t0) != nil {
		t.Fatal("nominated before the pair is valid")
	}
	q, _ := cl.Next(t0)
	if q != p {
		t.Fatalf("triggered check not first: %v", q)
	}
	cl.Succeeded(p, t0.Add(time.Millisecond), false)
	if !p.Nominated || cl.Selected(t0.Add(time.Millisecond)) != p {
		t.Fatal("controlled: not nominated after the triggered check succeeded")
	}
	// A repeated USE-CANDIDATE on a valid pair needs no new check.
	if _, check := cl.Triggered(l, r, true); check {
		t.Error("check repeated on a succeeded pair")
	}
}

func TestTriggeredPassive(t *testing.T) {
	// A check arriving on our passive candidate creates the pair the pruning
	// rule left out, and asks for a triggered check on that connection.
	local := []Candidate{cand(Host, Passive, "10.0.0.1:4000", "")}
	remote := []Candidate{cand(Host, Active, "10.0.1.1:9", "")}
	cl := NewChecklist(local, remote, false)
	if len(cl.Pairs) != 0 {
		t.Fatalf("passive pairs not pruned: %v", cl.Pairs)
	}
	prflx := cand(PeerReflexive, Active, "198.51.100.2:34567", "")
	p, check := cl.Triggered(local[0], prflx, false)
	if p == nil || !check || len(cl.Pairs) != 1 {
		t.Fatalf("triggered on passive: %v %v", p, check)
	}
	if p2, _ := cl.Triggered(local[0], prflx, false); p2 != p {
		t.Error("second check made a second pair")
	}
	if _, check := cl.Triggered(local[0], cand(Host, Passive, "10.0.1.1:7", ""), false); check {
		t.Error("passive-passive pair formed")
	}
}

func TestAllFailed(t *testing.T) {
	cl := fourPairs(true)
	for _, p := range cl.Pairs {
		if cl.AllFailed() {
			t.Fatal("AllFailed too early")
		}
		cl.Fail(p, errTest)
	}
	if !cl.AllFailed() {
		t.Fatal("AllFailed false with every pair failed")
	}
}

func TestRoleConflict(t *testing.T) {
	tests := []struct {
		we, they         bool
		ourTie, theirTie uint64
		want             RoleAction
	}{
		{true, false, 1, 2, 0},           // no conflict
		{false, true, 1, 2, 0},           // no conflict
		{true, true, 5, 3, KeepRole},     // both controlling, ours larger: 487
		{true, true, 5, 5, KeepRole},     // equal: ours ">=" wins
		{true, true, 3, 5, SwitchRole},   // theirs larger: become controlled
		{false, false, 5, 3, SwitchRole}, // both controlled, ours larger: become controlling
		{false, false, 3, 5, KeepRole},   // theirs larger: 487, they switch
	}
	for _, tt := range tests {
		if got := ResolveRoleConflict(tt.we, tt.ourTie, tt.they, tt.theirTie); got != tt.want {
			t.Errorf("ResolveRoleConflict(%v,%d,%v,%d) = %d, want %d", tt.we, tt.ourTie, tt.they, tt.theirTie, got, tt.want)
		}
	}
}

func TestSetRoleRecomputesPriorities(t *testing.T) {
	cl := fourPairs(true)
	before := cl.Pairs[0].Priority
	cl.SetRole(false)
	p := cl.Pairs[0]
	if p.Priority != PairPriority(p.Remote.Priority, p.Local.Priority) {
		t.Error("priority not recomputed for the controlled role")
	}
	if p.Priority == before && p.Local.Priority != p.Remote.Priority {
		t.Error("priority unchanged")
	}
}

func TestPeerActiveRetriesFailedDirect(t *testing.T) {
	cl, direct, relay := relayList(t)
	cl.Fail(direct, errTest)
	cl.Succeeded(relay, t0.Add(time.Millisecond), false)
	// The peer's first check arrives after our direct pair failed: the
	// direct pair gets another chance before the relay is nominated.
	if n := cl.PeerActive(t0.Add(900*time.Millisecond), 500*time.Millisecond); n != 1 || direct.State != Waiting {
		t.Fatalf("PeerActive = %d, direct %s", n, direct.State)
	}
	if !cl.DirectDeadline.Equal(t0.Add(1400 * time.Millisecond)) {
		t.Errorf("direct deadline %v, want moved to 1.4 s", cl.DirectDeadline.Sub(t0))
	}
	if p := cl.ToNominate(t0.Add(2 * time.Millisecond)); p != nil {
		t.Fatalf("relay nominated while the direct pair is re-checked: %v", p)
	}
	if cl.PeerActive(t0, time.Second) != 0 {
		t.Fatal("second PeerActive retried again")
	}
	cl.Fail(direct, errTest)
	if p := cl.ToNominate(t0.Add(3 * time.Millisecond)); p != relay {
		t.Fatalf("after the retry failed: %v, want relay", p)
	}
	// A pair that failed for want of a route is not retried.
	cl3, direct3, _ := relayList(t)
	cl3.Fail(direct3, fmt.Errorf("connect: %w", syscall.ENETUNREACH))
	if cl3.PeerActive(t0, time.Second) != 0 || direct3.State != Failed {
		t.Error("unreachable pair retried")
	}
	// The retry is bounded by the direct deadline like the first try.
	cl2, direct2, relay2 := relayList(t)
	cl2.Succeeded(relay2, t0.Add(time.Millisecond), false)
	cl2.PeerActive(t0, time.Second) // nothing failed yet: nothing to retry
	cl2.Fail(direct2, errTest)
	if cl2.PeerActive(t0, time.Second) != 0 || direct2.State != Failed || !cl2.DirectDeadline.Equal(t0.Add(time.Second)) {
		t.Fatal("a failure after the peer was seen was retried")
	}
}

func TestRenominateAfterFailedNomination(t *testing.T) {
	cl := fourPairs(true)
	cl.Ta = 0
	a, _ := cl.Next(t0)
	b, _ := cl.Next(t0)
	cl.Succeeded(a, t0.Add(time.Millisecond), false)
	cl.Succeeded(b, t0.Add(time.Millisecond), false)
	p := cl.ToNominate(t0.Add(200 * time.Millisecond))
	if p != a {
		t.Fatalf("nominated %v, want the best pair", p)
	}
	q, _ := cl.Next(t0.Add(200 * time.Millisecond))
	cl.Fail(q, errTest) // the check with USE-CANDIDATE got no answer
	if p := cl.ToNominate(t0.Add(300 * time.Millisecond)); p != b {
		t.Fatalf("after the nomination failed: %v, want the other valid pair", p)
	}
}
