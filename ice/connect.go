package ice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/pion/stun/v4"
)

type evKind uint8

const (
	evMessage evKind = iota + 1 // a STUN message arrived on pc
	evData                      // application data arrived on pc: reader stopped
	evClosed                    // pc failed or was closed
	evDialed                    // a dial for pair finished (c or err)
)

type event struct {
	kind evKind
	pc   *pconn
	msg  *stun.Message
	pair *Pair
	c    net.Conn
	err  error
	ack  chan struct{} // evMessage: closed by the loop once handled
}

// txn is an outstanding check.
type txn struct {
	pair         *Pair
	pc           *pconn
	deadline     time.Time
	useCandidate bool
	controlling  bool // the role the check claimed
}

// run is the state of one Connect: owned by the Connect goroutine only.
type run struct {
	a         *Agent
	remote    Description
	cl        *Checklist
	start     time.Time
	deadline  time.Time
	events    chan event
	ctx       context.Context // canceled when the run ends
	txns      map[[stun.TransactionIDSize]byte]*txn
	connOf    map[*Pair]*pconn
	dialing   map[*Pair]bool
	committed *Pair // controlled: the only pair whose USE-CANDIDATE we answer
	// stuck: S-O pairs whose connect found the 4-tuple taken, and when to
	// look again (see unstick).
	stuck map[*Pair]time.Time
	// redial: pairs on a peer's relayed candidate whose connection the
	// relay closed before the check was answered, and when to connect
	// again (see relayClosed); relayTries counts those connections.
	redial     map[*Pair]time.Time
	relayTries map[*Pair]int
	// soDeadline: when a pending S-O connect's pair counts as failed (the
	// connect itself goes on, see dial).
	soDeadline map[*Pair]time.Time
	checksSent int
	prflxN     int
}

// Connect runs the checks against the peer's description and returns the
// selected pair's connection. The report describes every pair, also on
// error. The agent should be closed afterwards; the returned Conn
// outlives it.
func (a *Agent) Connect(ctx context.Context, remote Description) (*Conn, *Report, error) {
	a.mu.Lock()
	locals := a.locals
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return nil, nil, ErrClosed
	}
	now := a.cfg.Now()
	deadline := now.Add(a.cfg.Timeout)
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &run{
		a: a, remote: remote, start: now, deadline: deadline, ctx: ctx,
		events:     make(chan event, 64),
		txns:       map[[stun.TransactionIDSize]byte]*txn{},
		connOf:     map[*Pair]*pconn{},
		dialing:    map[*Pair]bool{},
		stuck:      map[*Pair]time.Time{},
		redial:     map[*Pair]time.Time{},
		relayTries: map[*Pair]int{},
		soDeadline: map[*Pair]time.Time{},
	}
	var rc []Candidate
	for _, c := range remote.Candidates {
		if c.Component == 1 {
			rc = append(rc, c)
		}
	}
	r.cl = NewChecklist(locals, rc, a.cfg.Controlling)
	r.cl.Ta = a.cfg.Ta
	r.cl.Nomination = a.cfg.Nomination
	r.cl.Settle = a.cfg.Settle
	r.cl.DirectDeadline = now.Add(a.cfg.DirectTimeout)
	a.Permit(remote)
	sel, err := r.loop()
	var conn *Conn
	if err == nil {
		conn = r.handOver(sel)
	}
	// Losing pairs: cancel dials and readers, close every other socket and
	// wait for every goroutine.
	cancel()
	a.Close()
	rep := r.report(sel, err)
	if err != nil {
		return nil, rep, err
	}
	return conn, rep, nil
}

// Permit lets the peer of remote reach our relayed candidate: it installs
// a permission on the relay allocation for each of remote's addresses
// (RFC 8656 §9; a TURN server closes a connection from an address without
// one, RFC 6062 §5.3). Connect does it first thing; an agent that has the
// peer's description before it sends its own (the answering side) should
// call it before sending, so that the peer's first check finds the
// permission in place. Addresses asked once are not asked again.
func (a *Agent) Permit(remote Description) {
	var ips []netip.Addr
	for _, c := range remote.Candidates {
		if c.Component == 1 {
			ips = append(ips, c.Addr.Addr(), c.Related.Addr())
		}
	}
	a.mu.Lock()
	relay := a.relay
	if relay == nil { // no relayed candidate (Gather makes it)
		a.mu.Unlock()
		return
	}
	var fresh []netip.Addr
	for _, ip := range validAddrs(ips) {
		if !a.permitted[ip] {
			if a.permitted == nil {
				a.permitted = map[netip.Addr]bool{}
			}
			a.permitted[ip] = true
			fresh = append(fresh, ip)
		}
	}
	a.mu.Unlock()
	if len(fresh) == 0 {
		return
	}
	// one request per address (see RelayAllocation.Permit); an address the
	// server refuses is refused again if asked again
	if err := relay.Permit(fresh); err != nil {
		a.cfg.Logf("ice: relay permissions: %v", err)
	}
}

func validAddrs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, ip := range in {
		if ip.IsValid() && !ip.IsUnspecified() && !seen[ip] {
			seen[ip] = true
			out = append(out, ip)
		}
	}
	return out
}

func (r *run) logf(format string, args ...any) { r.a.cfg.Logf(format, args...) }

// loop is the check loop (RFC 8445 §6.1.4, §7): it returns the selected pair.
func (r *run) loop() (*Pair, error) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		now := r.a.cfg.Now()
		if p := r.cl.Selected(now); p != nil && r.connOf[p] != nil {
			return p, nil
		}
		if !now.Before(r.deadline) {
			return nil, fmt.Errorf("%w: no pair selected within %v (%s)", ErrNoPath, r.deadline.Sub(r.start).Round(time.Millisecond), r.summary())
		}
		r.expire(now)
		r.unstick(now)
		for p, t := range r.redial {
			if !now.Before(t) {
				delete(r.redial, p)
				if r.connOf[p] == nil && p.State == InProgress {
					r.logf("ice: connecting again to the relayed candidate %s (try %d)", p.Remote.Addr, r.relayTries[p]+1)
					r.cl.Start(p, now)
					r.check(p, now)
				}
			}
		}
		for p, t := range r.soDeadline {
			if !now.Before(t) {
				delete(r.soDeadline, p)
				if r.connOf[p] == nil && p.State == InProgress {
					r.cl.Fail(p, errors.New("no S-O connection yet (still trying)"))
				}
			}
		}
		if p := r.cl.ToNominate(now); p != nil {
			r.logf("ice: nominating %s", p)
			// on the pair's open connection: no new SYN, so no Ta pacing
			if pc := r.connOf[p]; pc != nil {
				r.cl.Start(p, now)
				r.send(p, pc, now)
			}
		}
		wake := r.deadline
		for {
			p, next := r.cl.Next(now)
			if !next.IsZero() && next.Before(wake) {
				wake = next
			}
			if p == nil {
				break
			}
			r.check(p, now)
		}
		for _, t := range r.txns {
			if t.deadline.Before(wake) {
				wake = t.deadline
			}
		}
		for _, t := range r.stuck {
			if t.Before(wake) {
				wake = t
			}
		}
		for _, t := range r.soDeadline {
			if t.Before(wake) {
				wake = t
			}
		}
		for _, t := range r.redial {
			if t.Before(wake) {
				wake = t
			}
		}
		if !r.cl.DirectDeadline.Before(now) && r.cl.DirectDeadline.Before(wake) {
			wake = r.cl.DirectDeadline
		}
		if r.cl.Controlling && r.cl.firstValidSet() {
			if s := r.cl.firstValid.Add(r.cl.Settle); s.After(now) && s.Before(wake) {
				wake = s
			}
		}
		timer.Reset(max(wake.Sub(now), time.Millisecond))
		select {
		case <-timer.C:
		case ac := <-r.a.accepted:
			r.logf("ice: accepted %s on %s candidate %s", ac.c.RemoteAddr(), ac.local.TCPType, ac.local.Addr)
			r.addConn(ac.c, ac.local, nil)
		case ev := <-r.events:
			r.handle(ev)
			if ev.ack != nil {
				close(ev.ack)
			}
		case <-r.ctx.Done():
			return nil, fmt.Errorf("%w: %w (%s)", ErrNoPath, context.Cause(r.ctx), r.summary())
		case <-r.a.ctx.Done():
			return nil, ErrClosed
		}
	}
}

func (cl *Checklist) firstValidSet() bool { return !cl.firstValid.IsZero() }

// summary counts pairs per state for error messages.
func (r *run) summary() string {
	n := map[PairState]int{}
	for _, p := range r.cl.Pairs {
		n[p.State]++
	}
	return fmt.Sprintf("%d pairs: %d succeeded, %d failed, %d in progress, %d waiting, %d frozen; %d checks sent",
		len(r.cl.Pairs), n[Succeeded], n[Failed], n[InProgress], n[Waiting], n[Frozen], r.checksSent)
}

// expire fails checks whose response did not come in time.
func (r *run) expire(now time.Time) {
	for id, t := range r.txns {
		if !now.Before(t.deadline) {
			delete(r.txns, id)
			if t.pair.State == InProgress {
				r.cl.Fail(t.pair, errors.New("no response to the check"))
			}
		}
	}
}

// check sends a check on p: on its connection, or after dialing one.
func (r *run) check(p *Pair, now time.Time) {
	if pc := r.connOf[p]; pc != nil {
		r.send(p, pc, now)
		return
	}
	if r.dialing[p] {
		return
	}
	r.dialing[p] = true
	so := p.Local.TCPType == SO
	local, reuse := netip.AddrPortFrom(p.Local.Base.Addr(), 0), false
	if so {
		// from the S-O port itself; the pair fails after CheckTimeout
		// while the connect goes on (see dial)
		local, reuse = p.Local.Base, true
		r.soDeadline[p] = now.Add(r.a.cfg.CheckTimeout)
	}
	remote := p.Remote.Addr
	timeout := r.a.cfg.CheckTimeout
	r.a.wg.Add(1)
	go func() {
		defer r.a.wg.Done()
		c, err := r.dial(local, remote, reuse, so, timeout)
		select {
		case r.events <- event{kind: evDialed, pair: p, c: c, err: err}:
		case <-r.ctx.Done():
			if c != nil {
				c.Close()
			}
		}
	}()
}

// soRetry: after a refused S-O connect, the next comes this much later.
const soRetry = 1 * time.Millisecond

// dial connects for a check: active candidates within timeout, S-O
// candidates as below (RFC 6544 §7.1 leaves S-O retries to the agent).
func (r *run) dial(local, remote netip.AddrPort, reuse, so bool, timeout time.Duration) (net.Conn, error) {
	if !so {
		ctx, cancel := context.WithTimeout(r.ctx, timeout)
		defer cancel()
		return dialFrom(ctx, local, remote, reuse)
	}
	// S-O: one connect lives as long as Connect does, so the kernel keeps
	// retransmitting the same SYN (same sequence number) and a peer that
	// starts late still meets a socket in SYN-SENT: its SYN completes the
	// simultaneous open. A new socket would have a new sequence number,
	// which a NAT's connection tracking (holding our first SYN) drops as
	// out of window. The pair itself fails after CheckTimeout (see
	// soDeadline) so the relay decision does not wait for this. After a
	// refusal (RST: no mapping at the peer's NAT yet, or a NAT that answers
	// with RST) the socket is dead anyway: connect again soRetry later,
	// for CheckTimeout.
	refusedUntil := time.Now().Add(timeout)
	for {
		c, err := dialFrom(r.ctx, local, remote, reuse)
		if err == nil || r.ctx.Err() != nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(refusedUntil) {
			return c, err
		}
		t := time.NewTimer(soRetry)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return nil, err
		}
	}
}

// stuckWait is how long an S-O pair whose 4-tuple is taken waits for the
// peer's connection to show up on our listener.
const stuckWait = 100 * time.Millisecond

// unstick handles S-O pairs whose connect failed because our S-O listener
// holds the 4-tuple: the peer's SYN arrived while we were not connecting
// (the peer started late). On a LAN that connection completes at once and
// carries the peer's check. Behind a NAT it never does: the listener's
// SYN-ACK has a new sequence number, which the NAT's connection tracking
// (still holding our earlier SYN) finds out of window and drops. Then the
// listener is closed, which frees the 4-tuple, and we connect again so the
// SYNs cross as simultaneous open wants.
func (r *run) unstick(now time.Time) {
	for p, t := range r.stuck {
		if now.Before(t) {
			continue
		}
		delete(r.stuck, p)
		if r.connOf[p] != nil || p.State != InProgress {
			continue
		}
		r.a.mu.Lock()
		ln := r.a.soListeners[p.Local.Base]
		delete(r.a.soListeners, p.Local.Base)
		r.a.mu.Unlock()
		if ln != nil {
			r.logf("ice: S-O %s: peer connection never completed; closing the S-O listener and connecting again", p.Local.Base)
			ln.Close()
		}
		r.check(p, now)
	}
}

// send writes a check for p on pc.
func (r *run) send(p *Pair, pc *pconn, now time.Time) {
	use := p.UseCandidate && r.cl.Controlling
	if r.cl.Controlling && r.cl.Nomination == Aggressive && (p.Direct() || r.cl.RelayAllowed(now)) {
		use = true
	}
	req := checkRequest{
		tx:           stun.NewTransactionID(),
		username:     r.remote.Ufrag + ":" + r.a.ufrag,
		priority:     Priority(PeerReflexive, p.Local.TCPType, 0, 1),
		controlling:  r.cl.Controlling,
		tieBreaker:   r.a.tieBreaker,
		useCandidate: use,
	}
	raw, err := buildCheck(req, r.remote.Pwd)
	if err == nil {
		err = pc.writeFrame(raw, r.a.cfg.CheckTimeout)
	}
	if err != nil {
		if !r.relayClosed(p, now) {
			r.cl.Fail(p, fmt.Errorf("send check: %w", err))
		}
		return
	}
	r.checksSent++
	r.txns[req.tx] = &txn{pair: p, pc: pc, deadline: now.Add(r.a.cfg.CheckTimeout), useCandidate: use, controlling: req.controlling}
}

// handle processes one event of the loop.
func (r *run) handle(ev event) {
	now := r.a.cfg.Now()
	switch ev.kind {
	case evDialed:
		delete(r.dialing, ev.pair)
		if ev.err != nil {
			delete(r.soDeadline, ev.pair)
		}
		r.logf("ice: connect %s: %v", ev.pair, ev.err)
		if ev.err != nil && ev.pair.Local.TCPType == SO && errors.Is(ev.err, syscall.EADDRNOTAVAIL) && r.connOf[ev.pair] == nil {
			// The peer's SYN reached our S-O listener: either that connection
			// is about to be accepted, or it never completes (see unstick).
			r.stuck[ev.pair] = now.Add(stuckWait)
			return
		}
		if ev.err != nil {
			refused := errors.Is(ev.err, syscall.ECONNRESET) || errors.Is(ev.err, syscall.ECONNREFUSED)
			if r.connOf[ev.pair] == nil && ev.pair.State == InProgress && !(refused && r.relayClosed(ev.pair, now)) {
				r.cl.Fail(ev.pair, fmt.Errorf("connect: %w", ev.err))
			}
			return
		}
		if r.connOf[ev.pair] != nil { // the peer's connection for this pair came first
			ev.c.Close()
			return
		}
		delete(r.soDeadline, ev.pair)
		pc := r.addConn(ev.c, ev.pair.Local, ev.pair)
		if pc != nil && ev.pair.State == Failed && ev.pair.Local.TCPType == SO {
			// a late simultaneous open: the peer started after our pair failed
			r.cl.Start(ev.pair, now)
		}
		if pc != nil && ev.pair.State == InProgress {
			r.send(ev.pair, pc, now)
		}
	case evClosed:
		r.dropConn(ev.pc, ev.err)
	case evData:
		// The peer already treats this connection as selected.
		r.logf("ice: data before selection on %s", ev.pc.remote)
	case evMessage:
		switch ev.msg.Type.Class {
		case stun.ClassRequest:
			r.onRequest(ev.pc, ev.msg, now)
		case stun.ClassSuccessResponse, stun.ClassErrorResponse:
			r.onResponse(ev.pc, ev.msg, now)
		}
	}
}

func (r *run) dropConn(pc *pconn, err error) {
	pc.c.Close()
	r.a.mu.Lock()
	delete(r.a.conns, pc)
	r.a.mu.Unlock()
	for id, t := range r.txns {
		if t.pc == pc {
			delete(r.txns, id)
		}
	}
	if p := pc.pair; p != nil && r.connOf[p] == pc {
		delete(r.connOf, p)
		if p.State != Failed && p.State != Succeeded && !r.relayClosed(p, r.a.cfg.Now()) {
			r.cl.Fail(p, fmt.Errorf("connection: %w", err))
		}
	}
}

// relayRetries: how often a check connects again to a peer's relayed
// candidate whose relay closed the connection; the waits before them double
// from relayRetryWait (50 ms, 100 ms, ... 1.6 s: 3.15 s in all).
const (
	relayRetries   = 6
	relayRetryWait = 50 * time.Millisecond
)

// relayClosed handles the relay closing our connection to the peer's
// relayed candidate before the check was answered. A TURN server closes at
// once a connection on a relayed address from an address the allocation
// has no permission for (RFC 6062 §5.3; pion's server after accepting it,
// coturn with a reset before our connect returns); the peer
// installs permissions for our addresses only once it has our description,
// so a check that arrives before that (our side got the peer's description
// first) meets a closed connection, and there is no retransmission over
// TCP to cover it as there is over UDP. So the pair stays in progress and
// connects again a little later, a few times; it reports whether it will.
func (r *run) relayClosed(p *Pair, now time.Time) bool {
	if p.Remote.Type != Relayed || p.State != InProgress || r.relayTries[p] >= relayRetries {
		return false
	}
	wait := relayRetryWait << r.relayTries[p]
	r.relayTries[p]++
	if !now.Add(wait).Before(r.deadline) {
		return false
	}
	r.redial[p] = now.Add(wait)
	return true
}

// handOver stops the winner's reader without losing buffered bytes,
// closes every other connection and returns the Conn.
func (r *run) handOver(p *Pair) *Conn {
	pc := r.connOf[p]
	pc.stopping.Store(true)
	close(pc.stopc) // the loop no longer reads events or acknowledges them
	_ = pc.c.SetReadDeadline(time.Unix(1, 0))
	<-pc.done
	_ = pc.c.SetReadDeadline(time.Time{})
	a := r.a
	a.mu.Lock()
	a.handedOut = pc
	a.mu.Unlock()
	var relay RelayAllocation
	if pc.local.Type == Relayed {
		relay = a.relay
	}
	return newConn(pc, *p, a.ufrag, a.pwd, relay, &a.relayWG, a.cfg.Keepalive)
}
