package ice

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Config configures an Agent. The zero value gathers host candidates on
// every up, non-loopback interface, uses no STUN or TURN server and is
// controlled; tests always set Addrs (loopback or lab addresses).
type Config struct {
	// Addrs are the local addresses to gather host candidates on. When
	// empty, the addresses of Interfaces are used.
	Addrs []netip.Addr
	// Interfaces limits gathering to these interface names (DEL_INTERFACES,
	// see InterfacesFromEnv). Empty: every up interface except loopback.
	Interfaces []string
	// TCPTypes lists the host candidate types to gather (default: active,
	// passive and S-O).
	TCPTypes []TCPType
	// STUN servers for server-reflexive candidates (Binding over TCP).
	STUN []netip.AddrPort
	// Relay, if set, makes the TURN-TCP allocation of the relayed candidate.
	Relay RelayFunc
	// Controlling: this agent nominates (RFC 8445 §6.1.1: the offerer).
	Controlling bool
	// Nomination: Regular (default) or Aggressive.
	Nomination Nomination
	// Ta paces new checks (default 10 ms; RFC 8445 §14.2 allows 5 ms and
	// up; each check here is one TCP SYN).
	Ta time.Duration
	// CheckTimeout bounds one check: the TCP connect (S-O retries included)
	// and the wait for its response (default 2 s).
	CheckTimeout time.Duration
	// DirectTimeout: after it (counted from the start of checks), a relayed
	// pair may be nominated even if direct pairs are still pending
	// (default 4 s). Before it, only once every direct pair failed.
	DirectTimeout time.Duration
	// Settle: how long the controlling agent waits, after the first direct
	// pair succeeded, for higher-priority pairs still in progress
	// (default 100 ms).
	Settle time.Duration
	// Keepalive: the returned Conn sends a STUN Binding indication after
	// this long without writing (RFC 8445 §11), for NAT and TURN mappings;
	// default 15 s, negative: none.
	Keepalive time.Duration
	// Timeout bounds Connect when ctx has no deadline (default 10 s).
	Timeout time.Duration
	// Logf, if set, receives debug lines.
	Logf func(format string, args ...any)
	// Now is the clock (default time.Now).
	Now func() time.Time

	// connHook, set by tests only, wraps every pair connection (to simulate
	// latency); dialed tells whether we opened it.
	connHook func(c net.Conn, dialed bool) net.Conn
	// tieBreaker, set by tests only, replaces the random tie-breaker.
	tieBreaker uint64
}

func (c *Config) setDefaults() {
	if c.Ta == 0 {
		c.Ta = 10 * time.Millisecond
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = 2 * time.Second
	}
	if c.DirectTimeout == 0 {
		c.DirectTimeout = 4 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = 100 * time.Millisecond
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Keepalive == 0 {
		c.Keepalive = 15 * time.Second
	}
	if len(c.TCPTypes) == 0 {
		c.TCPTypes = []TCPType{Active, Passive, SO}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// validate refuses settings that cannot work.
func (c *Config) validate() error {
	for _, a := range c.Addrs {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("ice: cannot gather on address %v", a)
		}
	}
	for _, t := range c.TCPTypes {
		if t < Active || t > SO {
			return fmt.Errorf("ice: unknown tcptype %d", t)
		}
	}
	for _, s := range c.STUN {
		if !s.IsValid() || s.Port() == 0 {
			return fmt.Errorf("ice: bad STUN server %v", s)
		}
	}
	if c.Nomination > Aggressive {
		return fmt.Errorf("ice: unknown nomination %d", c.Nomination)
	}
	if c.Ta < 0 || c.CheckTimeout < 0 || c.DirectTimeout < 0 || c.Settle < 0 || c.Timeout < 0 {
		return errors.New("ice: negative duration")
	}
	return nil
}

// Errors of the agent.
var (
	// ErrNoPath: no pair was selected before the deadline.
	ErrNoPath = errors.New("ice: no working path")
	// ErrClosed: the agent was closed.
	ErrClosed = errors.New("ice: agent closed")
)

// maxCheckFrame bounds a STUN frame during checks; a STUN-looking frame
// announcing more is hostile and its connection is closed.
const maxCheckFrame = 2048

// Agent gathers candidates and runs the checks for one connection.
// Use: NewAgent, Gather (send the Description to the peer), Connect with
// the peer's Description. Close releases everything not handed out.
type Agent struct {
	cfg        Config
	ufrag, pwd string
	tieBreaker uint64

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the agent but the relay's accept loop
	// relayWG: the relay's accept loop, which ends when the allocation
	// closes; owned by the returned Conn when the relayed pair is selected.
	relayWG sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	locals    []Candidate
	listeners []net.Listener
	// soListeners: the listener of each S-O candidate, by base address
	// (see run.unstick).
	soListeners map[netip.AddrPort]net.Listener
	relay       RelayAllocation
	permitted   map[netip.Addr]bool // asked of the relay already (see Permit)
	accepted    chan acceptedConn
	conns       map[*pconn]bool
	handedOut   *pconn
	closed      bool
}

type acceptedConn struct {
	c     net.Conn
	local Candidate
}

// NewAgent returns an agent with fresh credentials.
func NewAgent(cfg Config) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	var tb [8]byte
	if _, err := rand.Read(tb[:]); err != nil {
		return nil, err
	}
	tie := binary.BigEndian.Uint64(tb[:])
	if cfg.tieBreaker != 0 {
		tie = cfg.tieBreaker
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Agent{
		cfg:         cfg,
		ufrag:       randomICEString(8),
		pwd:         randomICEString(24),
		tieBreaker:  tie,
		ctx:         ctx,
		cancel:      cancel,
		accepted:    make(chan acceptedConn, 64),
		soListeners: map[netip.AddrPort]net.Listener{},
		conns:       map[*pconn]bool{},
	}, nil
}

// Gather collects the local candidates (RFC 8445 §5.1.1, RFC 6544 §4):
// for each allowed address a host active, passive and S-O candidate;
// server-reflexive passive and S-O candidates from each STUN server, asked
// over TCP from the candidate's own port; a relayed passive candidate if
// Relay is set. Redundant candidates are removed.
func (a *Agent) Gather(ctx context.Context) (Description, error) {
	addrs, err := localAddrs(&a.cfg)
	if err != nil {
		return Description{}, err
	}
	var cands []Candidate
	var jobs []srflxJob
	lc := net.ListenConfig{Control: reuseControl}
	for i, ip := range addrs {
		pref := otherPref(ip, i)
		for _, tcp := range a.cfg.TCPTypes {
			if tcp == Active {
				cands = append(cands, newLocal(Host, Active, netip.AddrPortFrom(ip, DiscardPort), netip.AddrPortFrom(ip, 0), netip.Addr{}, pref))
				continue
			}
			ln, err := lc.Listen(ctx, tcpNet(ip), netip.AddrPortFrom(ip, 0).String())
			if err != nil {
				a.Close()
				return Description{}, fmt.Errorf("ice: listen on %s: %w", ip, err)
			}
			base := ln.Addr().(*net.TCPAddr).AddrPort()
			base = netip.AddrPortFrom(base.Addr().Unmap(), base.Port())
			c := newLocal(Host, tcp, base, base, netip.Addr{}, pref)
			a.addListener(ln, c)
			cands = append(cands, c)
			for _, srv := range a.cfg.STUN {
				if srv.Addr().Is4() == ip.Is4() {
					jobs = append(jobs, srflxJob{base: base, srv: srv, tcp: tcp, pref: pref})
				}
			}
		}
	}
	// STUN queries and the TURN allocation run in parallel: an unreachable
	// server costs one CheckTimeout, not one per candidate.
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Add(1)
		go func(j *srflxJob) {
			defer wg.Done()
			j.mapped, j.err = stunBinding(ctx, j.base, j.srv, a.cfg.CheckTimeout)
		}(&jobs[i])
	}
	var alloc RelayAllocation
	var allocErr error
	if a.cfg.Relay != nil {
		alloc, allocErr = a.cfg.Relay(ctx)
	}
	wg.Wait()
	for _, j := range jobs {
		if j.err != nil {
			a.cfg.Logf("ice: srflx from %s: %v", j.base, j.err)
			continue
		}
		cands = append(cands, newLocal(ServerReflexive, j.tcp, j.mapped, j.base, j.srv.Addr(), j.pref))
	}
	if a.cfg.Relay != nil {
		err := allocErr
		if err != nil {
			a.cfg.Logf("ice: relay allocation: %v", err)
		} else {
			c := newLocal(Relayed, Passive, alloc.Addr(), alloc.Addr(), alloc.Addr().Addr(), 0)
			c.Related = alloc.Mapped()
			a.mu.Lock()
			a.relay = alloc
			a.mu.Unlock()
			a.relayWG.Add(1)
			go func() {
				defer a.relayWG.Done()
				a.acceptInto(alloc.Accept, c)
			}()
			cands = append(cands, c)
		}
	}
	cands = dedupe(cands)
	a.mu.Lock()
	a.locals = cands
	a.mu.Unlock()
	return Description{Ufrag: a.ufrag, Pwd: a.pwd, Candidates: cands}, nil
}

// srflxJob is one STUN query of Gather: from a candidate's base to a server.
type srflxJob struct {
	base, srv netip.AddrPort
	tcp       TCPType
	pref      uint32
	mapped    netip.AddrPort
	err       error
}

func (a *Agent) addListener(ln net.Listener, c Candidate) {
	a.mu.Lock()
	a.listeners = append(a.listeners, ln)
	if c.TCPType == SO {
		a.soListeners[c.Base] = ln
	}
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.acceptInto(ln.Accept, c)
	}()
}

// acceptInto hands every accepted connection to the check loop until the
// listener or the agent closes.
func (a *Agent) acceptInto(accept func() (net.Conn, error), local Candidate) {
	for {
		c, err := accept()
		if err != nil {
			return
		}
		select {
		case a.accepted <- acceptedConn{c, local}:
		case <-a.ctx.Done():
			c.Close()
			return
		}
	}
}

// Close releases listeners, the relay allocation (unless the selected
// connection uses it), every connection not handed out, and waits for
// every goroutine. Safe to call twice.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.cancel()
	for _, ln := range a.listeners {
		ln.Close()
	}
	relay := a.relay
	keepRelay := a.handedOut != nil && a.handedOut.local.Type == Relayed
	for pc := range a.conns {
		if pc != a.handedOut {
			pc.c.Close()
		}
	}
	a.mu.Unlock()
	if relay != nil && !keepRelay {
		relay.Close()
		a.relayWG.Wait()
	}
	a.wg.Wait()
	// drain connections accepted but never taken by a check loop
	for {
		select {
		case ac := <-a.accepted:
			ac.c.Close()
		default:
			return nil
		}
	}
}
