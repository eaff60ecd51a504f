package ice

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"
)

// PairState is the state of a candidate pair (RFC 8445 §6.1.2.6).
type PairState uint8

// Pair states.
const (
	Frozen PairState = iota
	Waiting
	InProgress
	Succeeded
	Failed
)

func (s PairState) String() string {
	return [...]string{"frozen", "waiting", "in-progress", "succeeded", "failed"}[s]
}

// Pair is one candidate pair of the check list.
type Pair struct {
	Local, Remote Candidate
	Priority      uint64
	State         PairState
	// Nominated is set once the pair was nominated (RFC 8445 §8.1.1):
	// on the controlling side when a check with USE-CANDIDATE succeeded,
	// on the controlled side when such a check arrived and the pair succeeded.
	Nominated bool
	// UseCandidate is set on the controlling side when the next check of
	// this pair must carry USE-CANDIDATE, and on the controlled side when a
	// check carrying USE-CANDIDATE arrived (the nominated flag of §7.3.1.5).
	UseCandidate bool
	Checks       int           // checks sent
	RTT          time.Duration // of the first successful check
	Mapped       string        // XOR-MAPPED-ADDRESS seen in the success response
	Err          error         // why the pair failed
	started      time.Time
	valid        bool // a check succeeded once (RFC 8445 §7.2.5.3.2 valid list)
}

// Foundation of a pair: the local and remote foundations together.
func (p *Pair) Foundation() string { return p.Local.Foundation + ":" + p.Remote.Foundation }

func (p *Pair) String() string {
	return fmt.Sprintf("%s %s/%s %s -> %s %s/%s", p.Local.Addr, p.Local.Type, p.Local.TCPType,
		p.State, p.Remote.Addr, p.Remote.Type, p.Remote.TCPType)
}

// Direct reports whether neither side of the pair is a relayed candidate.
func (p *Pair) Direct() bool { return p.Local.Type != Relayed && p.Remote.Type != Relayed }

// Nomination selects how the controlling agent nominates (RFC 8445 §8.1.1).
type Nomination uint8

const (
	// Regular nomination: checks without USE-CANDIDATE; once a pair is valid
	// (and the stopping rule says so) it is checked again with USE-CANDIDATE.
	Regular Nomination = iota
	// Aggressive nomination (RFC 5245 §8.1.1.2): every check carries
	// USE-CANDIDATE; the first pair to succeed is selected.
	Aggressive
)

// Checklist is the pure ICE check list of one component: pairing, pruning,
// states, unfreezing and pacing (RFC 8445 §6.1.2, §6.1.4, §7.2.5.3) and the
// controlling agent's nomination decision (§8.1.1). Time comes in as
// arguments; nothing here sleeps or touches a socket.
type Checklist struct {
	Pairs       []*Pair // highest priority first
	Controlling bool
	Nomination  Nomination
	Ta          time.Duration // pacing between new checks (RFC 8445 §14.2)
	// DirectDeadline: relayed pairs are nominated only after it passes
	// (or after every direct pair failed).
	DirectDeadline time.Time
	// Settle: under regular nomination the controlling agent waits this long
	// after the first direct pair succeeded for higher-priority pairs still
	// in progress before nominating (the stopping rule of §8.1.1).
	Settle time.Duration

	lastCheck    time.Time
	firstValid   time.Time
	nominatedSet bool
	nominating   *Pair // the pair ToNominate chose
	peerSeen     bool
}

// NewChecklist forms the pairs of RFC 8445 §6.1.2.2 (with the TCP pairing
// rules of RFC 6544 §6.2), orders them by pair priority, prunes them
// (§6.1.2.4 and RFC 6544 §6.2: local srflx replaced by their base, pairs
// with local passive candidates removed, redundant pairs removed) and sets
// the initial states (§6.1.2.6).
func NewChecklist(local, remote []Candidate, controlling bool) *Checklist {
	cl := &Checklist{Controlling: controlling, Ta: 50 * time.Millisecond}
	for _, l := range local {
		for _, r := range remote {
			cl.add(l, r)
		}
	}
	cl.initialStates()
	return cl
}

// pairPriority of a local and a remote candidate for our role.
func (cl *Checklist) pairPriority(l, r Candidate) uint64 {
	if cl.Controlling {
		return PairPriority(l.Priority, r.Priority)
	}
	return PairPriority(r.Priority, l.Priority)
}

// add inserts a pair after pruning; returns the pair (existing or new) or
// nil if pruned away.
func (cl *Checklist) add(l, r Candidate) *Pair {
	if !canPair(l, r) || l.Component != r.Component {
		return nil
	}
	if l.TCPType == Passive {
		return nil // RFC 6544 §6.2: a passive candidate never initiates a check
	}
	// §6.1.2.4: a local server-reflexive candidate is replaced by its base;
	// checks are sent from the base.
	if l.Type == ServerReflexive {
		return nil // its base (a host candidate of the same tcptype) forms the same pair
	}
	prio := cl.pairPriority(l, r)
	for _, p := range cl.Pairs {
		if p.Local.Base == l.Base && p.Local.TCPType == l.TCPType && p.Remote.Addr == r.Addr && p.Remote.TCPType == r.TCPType {
			// redundant: keep the higher-priority one
			if prio > p.Priority {
				p.Local, p.Remote, p.Priority = l, r, prio
				cl.sort()
			}
			return p
		}
	}
	p := &Pair{Local: l, Remote: r, Priority: prio}
	cl.Pairs = append(cl.Pairs, p)
	cl.sort()
	return p
}

func (cl *Checklist) sort() {
	slices.SortStableFunc(cl.Pairs, func(a, b *Pair) int {
		switch {
		case a.Priority > b.Priority:
			return -1
		case a.Priority < b.Priority:
			return 1
		}
		return 0
	})
}

// initialStates: for each foundation, the highest-priority pair (lowest
// component id) is set Waiting; the rest stay Frozen (§6.1.2.6).
func (cl *Checklist) initialStates() {
	seen := map[string]bool{}
	for _, p := range cl.Pairs {
		if p.State != Frozen {
			continue
		}
		if !seen[p.Foundation()] {
			seen[p.Foundation()] = true
			p.State = Waiting
		}
	}
}

// AddRemote adds a remote candidate learned late (trickled or peer
// reflexive) and pairs it with every local candidate; new pairs start
// Waiting if no pair of their foundation is active, else Frozen.
func (cl *Checklist) AddRemote(local []Candidate, r Candidate) {
	for _, l := range local {
		cl.add(l, r)
	}
	cl.initialStates()
}

// Find returns the pair of a local candidate base/tcptype and a remote
// transport address, or nil.
func (cl *Checklist) Find(local Candidate, remote Candidate) *Pair {
	for _, p := range cl.Pairs {
		if p.Local.Base == local.Base && p.Local.TCPType == local.TCPType && p.Remote.Addr == remote.Addr && p.Remote.TCPType == remote.TCPType {
			return p
		}
	}
	return nil
}

// Triggered inserts (or finds) the pair a received check belongs to and
// handles it as a triggered check (§7.3.1.4): returns the pair and whether
// a check must be sent on it now. A pair that has already succeeded needs
// no new check; a failed pair is retried.
func (cl *Checklist) Triggered(local, remote Candidate, useCandidate bool) (p *Pair, check bool) {
	p = cl.Find(local, remote)
	if p == nil {
		// A passive local candidate pairs through a connection the peer opened:
		// add it bypassing the "passive never initiates" pruning rule.
		if !canPair(local, remote) {
			return nil, false
		}
		p = &Pair{Local: local, Remote: remote, Priority: cl.pairPriority(local, remote)}
		cl.Pairs = append(cl.Pairs, p)
		cl.sort()
	}
	if useCandidate && !cl.Controlling {
		p.UseCandidate = true
		if p.State == Succeeded {
			p.Nominated = true
		}
	}
	switch p.State {
	case Succeeded, InProgress:
		return p, false
	}
	p.State = Waiting
	return p, true
}

// Next returns the pair to check at now (or nil) and moves it to
// InProgress, respecting Ta between checks (§6.1.4.2): the highest-priority
// Waiting pair, else the highest-priority Frozen pair whose foundation has
// no Waiting or InProgress pair. wake is when to call again.
func (cl *Checklist) Next(now time.Time) (p *Pair, wake time.Time) {
	if !cl.lastCheck.IsZero() && now.Sub(cl.lastCheck) < cl.Ta {
		return nil, cl.lastCheck.Add(cl.Ta)
	}
	p = cl.pick()
	if p == nil {
		return nil, time.Time{}
	}
	p.State = InProgress
	p.Checks++
	p.started = now
	cl.lastCheck = now
	if cl.Controlling && cl.Nomination == Aggressive && (p.Direct() || cl.relayAllowed(now)) {
		p.UseCandidate = true
	}
	return p, now.Add(cl.Ta)
}

func (cl *Checklist) pick() *Pair {
	for _, p := range cl.Pairs {
		if p.State == Waiting {
			return p
		}
	}
	active := map[string]bool{}
	for _, p := range cl.Pairs {
		if p.State == Waiting || p.State == InProgress {
			active[p.Foundation()] = true
		}
	}
	for _, p := range cl.Pairs {
		if p.State == Frozen && !active[p.Foundation()] {
			return p
		}
	}
	return nil
}

// Succeeded records a successful check (§7.2.5.3): the pair becomes valid,
// Frozen pairs of the same foundation become Waiting (§7.2.5.3.3), and a
// check that carried USE-CANDIDATE nominates the pair.
func (cl *Checklist) Succeeded(p *Pair, now time.Time, useCandidate bool) {
	if !p.valid && !p.started.IsZero() {
		p.RTT = now.Sub(p.started)
	}
	p.valid = true
	p.State = Succeeded
	p.Err = nil
	if cl.firstValid.IsZero() && p.Direct() {
		cl.firstValid = now
	}
	if cl.Controlling && useCandidate {
		p.Nominated = true
	}
	if !cl.Controlling && p.UseCandidate {
		p.Nominated = true
	}
	for _, q := range cl.Pairs {
		if q.State == Frozen && q.Foundation() == p.Foundation() {
			q.State = Waiting
		}
	}
}

// PeerActive is called when the first authenticated check from the peer
// arrives. Direct pairs that failed before it are checked once more: they
// may have failed only because the peer had not started yet (a slow
// signaling path on its side), and an S-O pair in particular needs both
// sides' SYNs at about the same time. The relay then waits at least
// retry more for them (the direct deadline moves to now+retry if it was
// earlier). It returns how many pairs were put back to Waiting; later
// calls do nothing.
func (cl *Checklist) PeerActive(now time.Time, retry time.Duration) int {
	if cl.peerSeen {
		return 0
	}
	cl.peerSeen = true
	n := 0
	for _, p := range cl.Pairs {
		if p.State == Failed && p.Direct() && !unreachable(p.Err) {
			p.State = Waiting
			n++
		}
	}
	if n > 0 && cl.DirectDeadline.Before(now.Add(retry)) {
		cl.DirectDeadline = now.Add(retry)
	}
	return n
}

// unreachable: the failure does not depend on the peer (no route to its
// address), so a retry cannot help.
func unreachable(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}

// Fail records a failed check (§7.2.5.2).
func (cl *Checklist) Fail(p *Pair, err error) {
	p.State = Failed
	p.Err = err
}

// Retry puts a pair back to Waiting, as after a 487 role conflict
// (§7.2.5.1) where the check is repeated with the new role.
func (cl *Checklist) Retry(p *Pair) {
	p.State = Waiting
}

// SetRole changes the agent's role after a role conflict and recomputes pair
// priorities (§7.2.5.1, §7.3.1.1).
func (cl *Checklist) SetRole(controlling bool) {
	if cl.Controlling == controlling {
		return
	}
	cl.Controlling = controlling
	for _, p := range cl.Pairs {
		p.Priority = cl.pairPriority(p.Local, p.Remote)
		if !controlling {
			p.UseCandidate = false
		}
	}
	cl.sort()
}

// Selected returns the nominated pair with the highest priority, or nil
// (§8.1.1: with several nominated pairs the highest-priority one is used).
// A relayed pair is selected only after the direct deadline, or once no
// direct pair can still succeed.
func (cl *Checklist) Selected(now time.Time) *Pair {
	var best *Pair
	for _, p := range cl.Pairs {
		if p.Nominated && p.State == Succeeded {
			// the controlled agent takes what the controlling one nominated
			if !p.Direct() && cl.Controlling && !cl.relayAllowed(now) {
				continue
			}
			if best == nil || betterPair(p, best) {
				best = p
			}
		}
	}
	return best
}

// betterPair ranks direct pairs above relayed ones, then by priority.
func betterPair(a, b *Pair) bool {
	if a.Direct() != b.Direct() {
		return a.Direct()
	}
	return a.Priority > b.Priority
}

// relayAllowed: the direct deadline passed, or every direct pair failed.
func (cl *Checklist) relayAllowed(now time.Time) bool {
	if !cl.DirectDeadline.IsZero() && !now.Before(cl.DirectDeadline) {
		return true
	}
	for _, p := range cl.Pairs {
		if p.Direct() && p.State != Failed {
			return false
		}
	}
	return true
}

// Start moves a pair to InProgress for a check sent outside Next (a
// triggered check, §7.3.1.4, sent at once: TCP needs no pacing for it).
func (cl *Checklist) Start(p *Pair, now time.Time) {
	p.State = InProgress
	p.Checks++
	p.started = now
}

// RelayAllowed reports whether a relayed pair may be nominated at now.
func (cl *Checklist) RelayAllowed(now time.Time) bool { return cl.relayAllowed(now) }

// ToNominate returns, on the controlling agent under regular nomination
// (and under aggressive nomination for a pair checked without
// USE-CANDIDATE, such as a relayed pair checked before the deadline),
// the valid pair to check again with USE-CANDIDATE, or nil if it is not
// time yet (§8.1.1). The rule: the best valid direct pair once no
// higher-priority direct pair is still pending or Settle has passed since
// the first direct pair became valid; a relayed pair only when
// relayAllowed. It returns each nomination once.
func (cl *Checklist) ToNominate(now time.Time) *Pair {
	if cl.nominatedSet && cl.nominating != nil && cl.nominating.State == Failed {
		// the check with USE-CANDIDATE failed: nominate again (another pair)
		cl.nominatedSet, cl.nominating = false, nil
	}
	if !cl.Controlling || cl.nominatedSet {
		return nil
	}
	var best *Pair
	for _, p := range cl.Pairs {
		if p.State == Succeeded && !p.Nominated && (p.Direct() || cl.relayAllowed(now)) {
			if best == nil || betterPair(p, best) {
				best = p
			}
		}
	}
	if best == nil {
		return nil
	}
	if best.Direct() {
		pending := false
		for _, p := range cl.Pairs {
			if p.Direct() && p.Priority > best.Priority && (p.State == Waiting || p.State == InProgress || p.State == Frozen) {
				pending = true
			}
		}
		if pending && now.Sub(cl.firstValid) < cl.Settle {
			return nil
		}
	}
	cl.nominatedSet, cl.nominating = true, best
	best.UseCandidate = true
	best.State = Waiting // checked again, now with USE-CANDIDATE
	return best
}

// Failed reports whether the check list can no longer succeed: every pair
// failed (§6.1.2.6's Failed check-list state).
func (cl *Checklist) AllFailed() bool {
	for _, p := range cl.Pairs {
		if p.State != Failed {
			return false
		}
	}
	return true
}

// RoleAction is what to do with a check that claims the same role as ours
// (RFC 8445 §7.3.1.1).
type RoleAction uint8

const (
	// KeepRole: answer 487 (Role Conflict), keep our role.
	KeepRole RoleAction = iota + 1
	// SwitchRole: switch role and process the request.
	SwitchRole
)

// ResolveRoleConflict applies §7.3.1.1 to a request whose ICE-CONTROLLING /
// ICE-CONTROLLED attribute claims the same role as ours (no conflict
// otherwise: returns 0). The agent with the larger tie-breaker is
// controlling.
func ResolveRoleConflict(weControlling bool, ourTie uint64, theyControlling bool, theirTie uint64) RoleAction {
	if weControlling != theyControlling {
		return 0
	}
	if weControlling {
		if ourTie >= theirTie {
			return KeepRole
		}
		return SwitchRole
	}
	if ourTie >= theirTie {
		return SwitchRole
	}
	return KeepRole
}
