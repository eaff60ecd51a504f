package ice

import (
	"fmt"
	"strings"
	"time"
)

// PairReport is one pair's outcome.
type PairReport struct {
	Local, Remote Candidate
	State         PairState
	Nominated     bool
	Checks        int
	RTT           time.Duration
	Mapped        string // XOR-MAPPED-ADDRESS the peer saw
	Err           string
}

// Report describes a Connect: every pair, which one was chosen and why.
type Report struct {
	Controlling bool
	Pairs       []PairReport
	Selected    int // index in Pairs, -1 if none
	Reason      string
	Elapsed     time.Duration // from the start of checks to selection (or failure)
	ChecksSent  int
}

func (r *run) report(sel *Pair, err error) *Report {
	rep := &Report{Controlling: r.cl.Controlling, Selected: -1, ChecksSent: r.checksSent, Elapsed: r.a.cfg.Now().Sub(r.start)}
	for i, p := range r.cl.Pairs {
		pr := PairReport{Local: p.Local, Remote: p.Remote, State: p.State, Nominated: p.Nominated, Checks: p.Checks, RTT: p.RTT, Mapped: p.Mapped}
		if p.Err != nil {
			pr.Err = p.Err.Error()
		}
		if p == sel {
			rep.Selected = i
		}
		rep.Pairs = append(rep.Pairs, pr)
	}
	switch {
	case err != nil:
		rep.Reason = err.Error()
	case !r.cl.Controlling:
		rep.Reason = "nominated by the controlling agent"
	case sel.Direct():
		rep.Reason = "the highest-priority direct pair that succeeded"
	default:
		direct := 0
		for _, p := range r.cl.Pairs {
			if p.Direct() {
				direct++
			}
		}
		if r.cl.DirectDeadline.After(r.a.cfg.Now()) {
			rep.Reason = fmt.Sprintf("relay: all %d direct pairs failed", direct)
		} else {
			rep.Reason = fmt.Sprintf("relay: no direct pair (of %d) succeeded within %v", direct, r.a.cfg.DirectTimeout)
		}
	}
	return rep
}

// SelectedPair returns the chosen pair's report, or nil.
func (r *Report) SelectedPair() *PairReport {
	if r == nil || r.Selected < 0 {
		return nil
	}
	return &r.Pairs[r.Selected]
}

// String renders the report as a table, one pair per line, the chosen
// one marked with '*'.
func (r *Report) String() string {
	var b strings.Builder
	role := "controlled"
	if r.Controlling {
		role = "controlling"
	}
	fmt.Fprintf(&b, "ice %s: %d pairs, %d checks, %v: %s\n", role, len(r.Pairs), r.ChecksSent, r.Elapsed.Round(time.Microsecond), r.Reason)
	for i, p := range r.Pairs {
		mark := " "
		if i == r.Selected {
			mark = "*"
		}
		fmt.Fprintf(&b, "%s %-22s %-5s %-7s -> %-22s %-5s %-7s %-11s checks=%d rtt=%v", mark,
			p.Local.Addr, p.Local.Type, p.Local.TCPType, p.Remote.Addr, p.Remote.Type, p.Remote.TCPType,
			p.State, p.Checks, p.RTT.Round(time.Microsecond))
		if p.Nominated {
			b.WriteString(" nominated")
		}
		if p.Err != "" {
			fmt.Fprintf(&b, " err=%q", p.Err)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
