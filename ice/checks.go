package ice

import (
	"fmt"
	"time"

	"github.com/pion/stun/v4"
)

// remoteFor identifies the remote candidate a check on pc came from
// (RFC 8445 §7.3.1.3, RFC 6544 §7.2): a known candidate, or a new
// peer-reflexive one.
func (r *run) remoteFor(pc *pconn, req checkRequest) Candidate {
	if pc.pair != nil {
		return pc.pair.Remote
	}
	want := Active
	if pc.local.TCPType == SO {
		want = SO
	}
	for _, c := range r.remote.Candidates {
		if c.TCPType != want {
			continue
		}
		// an active candidate's port is 9 in its description: match on the IP
		if (want == Active && c.Addr.Addr() == pc.remote.Addr()) || c.Addr == pc.remote {
			return c
		}
	}
	r.prflxN++
	c := Candidate{
		Foundation: fmt.Sprintf("prflx%d", r.prflxN),
		Component:  1,
		Priority:   req.priority,
		Addr:       pc.remote,
		Type:       PeerReflexive,
		TCPType:    want,
	}
	r.remote.Candidates = append(r.remote.Candidates, c)
	return c
}

func (r *run) respond(pc *pconn, raw []byte, err error) {
	if err != nil {
		return
	}
	if werr := pc.writeFrame(raw, r.a.cfg.CheckTimeout); werr != nil {
		r.logf("ice: respond to %s: %v", pc.remote, werr)
	}
}

// onRequest answers a check (RFC 8445 §7.3).
func (r *run) onRequest(pc *pconn, m *stun.Message, now time.Time) {
	req, err := parseCheck(m, r.a.ufrag, r.a.pwd)
	if err != nil {
		if code := checkError(err); code != 0 {
			raw, berr := buildError(m.TransactionID, code, "")
			r.respond(pc, raw, berr)
		}
		r.logf("ice: bad check from %s: %v", pc.remote, err)
		return
	}
	pc.trusted.Store(true)
	if n := r.cl.PeerActive(now, r.a.cfg.CheckTimeout); n > 0 {
		r.logf("ice: peer started late: %d failed direct pairs checked again", n)
	}
	switch ResolveRoleConflict(r.cl.Controlling, r.a.tieBreaker, req.controlling, req.tieBreaker) {
	case KeepRole:
		raw, berr := buildError(req.tx, stun.CodeRoleConflict, r.a.pwd)
		r.respond(pc, raw, berr)
		return
	case SwitchRole:
		r.logf("ice: role conflict: now controlling=%v", !r.cl.Controlling)
		r.cl.SetRole(!r.cl.Controlling)
	}
	remote := r.remoteFor(pc, req)
	p, check := r.cl.Triggered(pc.local, remote, false)
	if p == nil {
		return
	}
	if pc.pair == nil {
		pc.pair = p
	}
	if r.connOf[p] == nil {
		r.connOf[p] = pc
	}
	if req.useCandidate && !r.cl.Controlling {
		if r.committed != nil && r.committed != p {
			r.logf("ice: USE-CANDIDATE on %s ignored: committed to %s", p, r.committed)
			return
		}
		r.committed = p
		r.cl.Triggered(pc.local, remote, true)
		raw, berr := buildSuccess(req.tx, pc.remote, r.a.pwd)
		r.respond(pc, raw, berr)
		// The controlling agent nominates only a pair whose check succeeded,
		// over this very TCP connection, and the request is authenticated:
		// both directions work. Waiting for our own check would deadlock when
		// the controlling agent has already handed the connection to an
		// application that does not read (see the package doc).
		if p.State != Succeeded {
			r.cl.Succeeded(p, now, false)
		}
		return
	}
	raw, berr := buildSuccess(req.tx, pc.remote, r.a.pwd)
	r.respond(pc, raw, berr)
	if check || (p.State == InProgress && !r.pending(p)) {
		r.cl.Start(p, now)
		r.send(p, r.connOf[p], now)
	}
}

func (r *run) pending(p *Pair) bool {
	for _, t := range r.txns {
		if t.pair == p {
			return true
		}
	}
	return false
}

// onResponse processes the answer to one of our checks (RFC 8445 §7.2.5).
func (r *run) onResponse(pc *pconn, m *stun.Message, now time.Time) {
	t := r.txns[m.TransactionID]
	if t == nil || t.pc != pc {
		return // unknown or late: dropped
	}
	resp, err := parseResponse(m, r.remote.Pwd)
	if err != nil {
		r.logf("ice: bad response from %s: %v", pc.remote, err)
		return
	}
	delete(r.txns, m.TransactionID)
	p := t.pair
	switch {
	case resp.ok:
		pc.trusted.Store(true)
		if resp.mapped.IsValid() {
			p.Mapped = resp.mapped.String()
		}
		r.cl.Succeeded(p, now, t.useCandidate)
	case resp.code == stun.CodeRoleConflict:
		// §7.2.5.1: switch role and repeat the check.
		if t.controlling == r.cl.Controlling {
			r.cl.SetRole(!r.cl.Controlling)
		}
		r.cl.Retry(p)
	default:
		r.cl.Fail(p, fmt.Errorf("error response %d", resp.code))
	}
}
