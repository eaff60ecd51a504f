package ice

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/stun/v4"
)

// pconn is one TCP connection of a candidate pair during checks. Its reader
// goroutine consumes STUN frames only: the first non-STUN frame (the peer
// already sends application data) is left in br for the returned Conn.
type pconn struct {
	c      net.Conn
	br     *bufio.Reader
	local  Candidate      // the local candidate: the listener's, or the dialing pair's
	remote netip.AddrPort // the peer's transport address as seen on this connection
	pair   *Pair          // nil until a check identifies it (accepted connections)

	wmu      sync.Mutex // serializes frame writes
	stopping atomic.Bool
	stopc    chan struct{} // closed by handOver: the reader must not block
	// trusted: an authenticated check or response was seen on this
	// connection, so the peer may now send application data on it. Before,
	// a non-STUN frame is garbage and is dropped.
	trusted atomic.Bool
	done    chan struct{} // closed when the reader goroutine exits
}

func (pc *pconn) writeFrame(p []byte, timeout time.Duration) error {
	b, err := AppendFrame(make([]byte, 0, 2+len(p)), p)
	if err != nil {
		return err
	}
	pc.wmu.Lock()
	defer pc.wmu.Unlock()
	_ = pc.c.SetWriteDeadline(time.Now().Add(timeout))
	_, err = pc.c.Write(b)
	_ = pc.c.SetWriteDeadline(time.Time{})
	return err
}

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
	a          *Agent
	remote     Description
	cl         *Checklist
	start      time.Time
	deadline   time.Time
	events     chan event
	ctx        context.Context // canceled when the run ends
	txns       map[[stun.TransactionIDSize]byte]*txn
	connOf     map[*Pair]*pconn
	dialing    map[*Pair]bool
	committed  *Pair // controlled: the only pair whose USE-CANDIDATE we answer
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
		events:  make(chan event, 64),
		txns:    map[[stun.TransactionIDSize]byte]*txn{},
		connOf:  map[*Pair]*pconn{},
		dialing: map[*Pair]bool{},
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
	a.mu.Lock()
	relay := a.relay
	a.mu.Unlock()
	if relay != nil {
		var ips []netip.Addr
		for _, c := range rc {
			ips = append(ips, c.Addr.Addr(), c.Related.Addr())
		}
		// one request per address (see RelayAllocation.Permit)
		if err := relay.Permit(validAddrs(ips)); err != nil {
			a.cfg.Logf("ice: relay permissions: %v", err)
		}
	}
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
	local := netip.AddrPortFrom(p.Local.Base.Addr(), 0)
	reuse := false
	if p.Local.TCPType == SO {
		local, reuse = p.Local.Base, true
	}
	remote := p.Remote.Addr
	timeout := r.a.cfg.CheckTimeout
	so := p.Local.TCPType == SO
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

// S-O connect pacing: one attempt lasts soAttempt; after a refusal the
// next comes soRetry later.
const (
	soAttempt = 250 * time.Millisecond
	soRetry   = 1 * time.Millisecond
)

// retrySO: an S-O connect is retried after a refusal (the peer's SYN has not
// gone out, or its NAT answered RST) or a timeout (its NAT dropped our SYN),
// not when the 4-tuple is taken (the peer's SYN reached our listener first)
// or there is no route.
func retrySO(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dial connects for a check. An S-O connect is retried while the peer
// answers with RST (its SYN has not gone out yet) until timeout (RFC 6544
// §7.1 leaves retries to the agent).
func (r *run) dial(local, remote netip.AddrPort, reuse, so bool, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	for {
		actx := ctx
		var acancel context.CancelFunc = func() {}
		if so {
			// Each attempt sends a fresh SYN at once instead of waiting for
			// the kernel's 1 s SYN retransmission: the peer's NAT drops our
			// SYNs until the peer's own SYN has opened its mapping.
			actx, acancel = context.WithTimeout(ctx, soAttempt)
		}
		c, err := dialFrom(actx, local, remote, reuse)
		acancel()
		if err == nil || !so || ctx.Err() != nil || !retrySO(err) {
			return c, err
		}
		t := time.NewTimer(soRetry)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
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
		r.cl.Fail(p, fmt.Errorf("send check: %w", err))
		return
	}
	r.checksSent++
	r.txns[req.tx] = &txn{pair: p, pc: pc, deadline: now.Add(r.a.cfg.CheckTimeout), useCandidate: use, controlling: req.controlling}
}

// addConn registers a connection and starts its reader.
func (r *run) addConn(c net.Conn, local Candidate, p *Pair) *pconn {
	if r.a.cfg.connHook != nil {
		c = r.a.cfg.connHook(c, p != nil)
	}
	ra := addrPortOf(c.RemoteAddr())
	pc := &pconn{
		c: c, br: bufio.NewReaderSize(c, 2+MaxFrame+16), local: local, pair: p,
		remote: netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port()),
		done:   make(chan struct{}),
		stopc:  make(chan struct{}),
	}
	r.a.mu.Lock()
	if r.a.closed {
		r.a.mu.Unlock()
		c.Close()
		return nil
	}
	r.a.conns[pc] = true
	r.a.mu.Unlock()
	if p != nil {
		r.connOf[p] = pc
	}
	r.a.wg.Add(1)
	go r.read(pc)
	return pc
}

// read delivers STUN frames of pc to the loop until an error, a data frame
// or a stop request.
func (r *run) read(pc *pconn) {
	defer r.a.wg.Done()
	defer close(pc.done)
	for {
		kind, m, err := nextFrame(pc.br)
		if pc.stopping.Load() {
			return
		}
		var ev event
		switch {
		case err != nil:
			ev = event{kind: evClosed, pc: pc, err: err}
		case kind == frameData && !pc.trusted.Load():
			if err := discardFrame(pc.br); err != nil {
				ev = event{kind: evClosed, pc: pc, err: err}
				break
			}
			continue
		case kind == frameData:
			ev = event{kind: evData, pc: pc}
		case m == nil:
			continue // malformed STUN (no FINGERPRINT...): dropped
		default:
			ev = event{kind: evMessage, pc: pc, msg: m}
		}
		if ev.kind == evMessage {
			// The loop acknowledges each message once handled: whether the
			// next non-STUN frame is data (trusted) or garbage depends on it.
			ev.ack = make(chan struct{})
		}
		select {
		case r.events <- ev:
		case <-r.ctx.Done():
			return
		case <-pc.stopc:
			return
		}
		if ev.kind != evMessage {
			return
		}
		select {
		case <-ev.ack:
		case <-r.ctx.Done():
			return
		case <-pc.stopc:
			return
		}
	}
}

type frameKind uint8

const (
	frameSTUN frameKind = iota + 1
	frameData
)

// nextFrame classifies the next frame of br. A STUN frame is consumed and
// returned decoded (nil if it does not decode or has no valid FINGERPRINT);
// a data frame is left unread. An oversized STUN frame is an error.
func nextFrame(br *bufio.Reader) (frameKind, *stun.Message, error) {
	h, err := br.Peek(2)
	if err != nil {
		return 0, nil, err
	}
	n := int(h[0])<<8 | int(h[1])
	if n < 20 {
		return frameData, nil, nil
	}
	hdr, err := br.Peek(2 + 20)
	if err != nil {
		return 0, nil, err
	}
	if !stun.IsMessage(hdr[2:]) || 20+(int(hdr[4])<<8|int(hdr[5])) != n {
		return frameData, nil, nil
	}
	if n > maxCheckFrame {
		return 0, nil, fmt.Errorf("%w: STUN frame of %d bytes", ErrFrameTooLarge, n)
	}
	b, err := peekFrame(br, maxCheckFrame)
	if err != nil {
		return 0, nil, err
	}
	m, derr := decodeSTUN(b)
	if _, err := br.Discard(2 + n); err != nil {
		return 0, nil, err
	}
	if derr != nil {
		return frameSTUN, nil, nil
	}
	return frameSTUN, m, nil
}

// discardFrame skips the next frame of br.
func discardFrame(br *bufio.Reader) error {
	h, err := br.Peek(2)
	if err != nil {
		return err
	}
	_, err = br.Discard(2 + (int(h[0])<<8 | int(h[1])))
	return err
}

// handle processes one event of the loop.
func (r *run) handle(ev event) {
	now := r.a.cfg.Now()
	switch ev.kind {
	case evDialed:
		delete(r.dialing, ev.pair)
		if ev.err != nil {
			if r.connOf[ev.pair] == nil && ev.pair.State == InProgress {
				r.cl.Fail(ev.pair, fmt.Errorf("connect: %w", ev.err))
			}
			return
		}
		if r.connOf[ev.pair] != nil { // the peer's connection for this pair came first
			ev.c.Close()
			return
		}
		pc := r.addConn(ev.c, ev.pair.Local, ev.pair)
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
	if p := pc.pair; p != nil && r.connOf[p] == pc {
		delete(r.connOf, p)
		if p.State != Failed && p.State != Succeeded {
			r.cl.Fail(p, fmt.Errorf("connection: %w", err))
		}
	}
	for id, t := range r.txns {
		if t.pc == pc {
			delete(r.txns, id)
		}
	}
}

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
	return newConn(pc, *p, a.ufrag, a.pwd, relay, &a.relayWG)
}

// addrPortOf converts a connection's address (a *net.TCPAddr, or whatever a
// relay client returns) to a netip.AddrPort; zero if it cannot.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok && ta != nil {
		return ta.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
