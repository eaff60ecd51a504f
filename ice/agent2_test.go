package ice

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

func TestConnectSimultaneousOpen(t *testing.T) {
	so := []TCPType{SO}
	ra, rb := connectPair(t, Config{Addrs: loopback, TCPTypes: so}, Config{Addrs: loopback, TCPTypes: so})
	if ra.err != nil || rb.err != nil {
		t.Fatalf("%v / %v\n%s%s", ra.err, rb.err, ra.rep, rb.rep)
	}
	t.Logf("\n%s%s", ra.rep, rb.rep)
	sel := ra.rep.SelectedPair()
	if sel.Local.TCPType != SO || sel.Remote.TCPType != SO {
		t.Fatalf("selected %s/%s", sel.Local.TCPType, sel.Remote.TCPType)
	}
	// the S-O connection runs between the two S-O ports themselves
	if addrPortOf(ra.conn.LocalAddr()) != sel.Local.Addr || addrPortOf(ra.conn.RemoteAddr()) != sel.Remote.Addr {
		t.Errorf("connection %s->%s is not between the S-O candidates %s->%s", ra.conn.LocalAddr(), ra.conn.RemoteAddr(), sel.Local.Addr, sel.Remote.Addr)
	}
	samePath(t, ra.conn, rb.conn)
	exchange(t, ra.conn, rb.conn, 100_000)
}

// TestConnectRoleConflict: both agents claim the same role (RFC 8445
// §7.3.1.1); the larger tie-breaker ends controlling, whichever side's
// check arrives first (one answers 487 and keeps its role, or switches).
func TestConnectRoleConflict(t *testing.T) {
	for _, both := range []bool{true, false} {
		for _, aLarger := range []bool{true, false} {
			ca := Config{Addrs: loopback, Controlling: both, tieBreaker: 100}
			cb := Config{Addrs: loopback, Controlling: both, tieBreaker: 200}
			if aLarger {
				ca.tieBreaker = 300
			}
			ra, rb := connectAgents(t, ca, cb, nil)
			if ra.err != nil || rb.err != nil {
				t.Fatalf("both controlling=%v: %v / %v\n%s%s", both, ra.err, rb.err, ra.rep, rb.rep)
			}
			if ra.rep.Controlling != aLarger || rb.rep.Controlling == aLarger {
				t.Fatalf("both controlling=%v, a larger=%v: a controlling=%v, b controlling=%v", both, aLarger, ra.rep.Controlling, rb.rep.Controlling)
			}
			samePath(t, ra.conn, rb.conn)
			exchange(t, ra.conn, rb.conn, 1000)
		}
	}
}

// relayImpls: the project's TURN server and client (what `del turn` runs),
// pion/turn v5's, and coturn's server.
var relayImpls = []relayImpl{
	{"del", func(t testing.TB) netip.AddrPort { return startDelTURN(t, "127.0.0.1", delturnLoopback...) }, delRelay, false},
	{"pion", func(t testing.TB) netip.AddrPort { return startTURN(t, "127.0.0.1") }, pionRelay, false},
	// coturn 4.6.1 with the project's client: a relayed candidate on a real,
	// independent TURN server
	{"coturn", startCoturn, delRelay, true},
}

type relayImpl struct {
	name   string
	server func(testing.TB) netip.AddrPort
	relay  func(netip.AddrPort) RelayFunc
	// halfDuplex: the tests send through this server one way at a time.
	// coturn (4.6.1 here, and still in 4.17.1) stalls a TCP relay for good
	// when both directions are backed up at once: reading from the client's
	// data connection stops while the peer's output buffer is over 192 KiB,
	// and when that buffer drains, socket_output_handler_bev starts reading
	// the client again only if the client's own output buffer is under the
	// limit too (ns_ioalib_engine_impl.c). 300 kB each way at once through
	// it failed CI that way once; 8 MiB each way fails nearly every time.
	// The project's server (pion's, one copy per direction) has no such
	// coupling and is tested full duplex. Over a stalled coturn relay the
	// link's keepalive (go-yamux's, every 30 s) closes the link; a transfer
	// sent again resumes from its partial files.
	halfDuplex bool
}

// countingRelay records whether the allocation was closed.
type countingRelay struct {
	RelayAllocation
	closed *atomic.Bool
}

func (c countingRelay) Close() error { c.closed.Store(true); return c.RelayAllocation.Close() }

func withCount(f RelayFunc, closed *atomic.Bool) RelayFunc {
	return func(ctx context.Context) (RelayAllocation, error) {
		r, err := f(ctx)
		if err != nil {
			return nil, err
		}
		return countingRelay{r, closed}, nil
	}
}

func TestRelayNotUsedWhenDirectWorks(t *testing.T) {
	for _, impl := range relayImpls {
		t.Run(impl.name, func(t *testing.T) { testRelayNotUsed(t, impl) })
	}
}

func testRelayNotUsed(t *testing.T, impl relayImpl) {
	srv := impl.server(t)
	var closed atomic.Bool
	ra, rb := connectPair(t, Config{Addrs: loopback}, Config{Addrs: loopback, Relay: withCount(impl.relay(srv), &closed)})
	if ra.err != nil || rb.err != nil {
		t.Fatalf("%v / %v", ra.err, rb.err)
	}
	t.Logf("\n%s%s", ra.rep, rb.rep)
	hasRelay := false
	for _, p := range ra.rep.Pairs {
		hasRelay = hasRelay || p.Remote.Type == Relayed
	}
	if !hasRelay {
		t.Fatal("no relayed pair was formed")
	}
	if sel := ra.rep.SelectedPair(); sel.Local.Type == Relayed || sel.Remote.Type == Relayed {
		t.Fatalf("relay selected although a direct pair works: %+v", sel)
	}
	if !closed.Load() {
		t.Error("unused relay allocation left open")
	}
	exchange(t, ra.conn, rb.conn, 1000)
}

// TestRelayAfterDirectFails: b's only direct candidate accepts and never
// answers; the relayed pair is selected only after that check fails.
func TestRelayAfterDirectFails(t *testing.T) {
	for _, impl := range relayImpls {
		t.Run(impl.name, func(t *testing.T) { testRelayAfterDirectFails(t, impl) })
	}
}

func testRelayAfterDirectFails(t *testing.T, impl relayImpl) {
	srv := impl.server(t)
	silent := listenSilent(t)
	var closed atomic.Bool
	ca := Config{Addrs: loopback, Relay: withCount(impl.relay(srv), &closed), CheckTimeout: 500 * time.Millisecond}
	cb := Config{Addrs: loopback, TCPTypes: []TCPType{Active}, CheckTimeout: 500 * time.Millisecond, Controlling: true}
	ca.Controlling = false
	// a is "behind a NAT": b sees only its relayed candidate and a dead host one
	dead := Candidate{Foundation: "dead", Component: 1, Priority: Priority(Host, Passive, 0, 1), Addr: silent, Type: Host, TCPType: Passive}
	ra, rb := connectAgents(t, ca, cb, onlyRelayed(dead))
	relayedSelected(t, ra, rb)
	var direct *PairReport
	for i, p := range rb.rep.Pairs {
		if p.Remote.Type == Host {
			direct = &rb.rep.Pairs[i]
		}
	}
	if direct == nil || direct.State != Failed {
		t.Fatalf("direct pair: %+v", direct)
	}
	if rb.rep.Elapsed < 500*time.Millisecond {
		t.Errorf("relay selected after %v, before the direct check could fail", rb.rep.Elapsed)
	}
	if rb.rep.Elapsed > 1500*time.Millisecond {
		t.Errorf("relay selected %v after the start, more than 1 s after the direct check failed", rb.rep.Elapsed)
	}
	if !strings.Contains(rb.rep.Reason, "relay") {
		t.Errorf("reason %q", rb.rep.Reason)
	}
	exchangeTurns(t, ra.conn, rb.conn, 300_000, !impl.halfDuplex)
	if closed.Load() {
		t.Fatal("relay allocation closed under the selected connection")
	}
	ra.conn.Close()
	if !closed.Load() {
		t.Error("closing the relayed Conn left the allocation open")
	}
}

// TestRelayCheckBeforePermission: b's check reaches a's relayed candidate
// before a has installed a permission for b, so the relay closes the
// connection (RFC 6062 §5.3), as happens whenever b gets a's description
// before a gets b's. b connects again a little later and the relayed pair
// is selected.
func TestRelayCheckBeforePermission(t *testing.T) {
	for _, impl := range relayImpls {
		t.Run(impl.name, func(t *testing.T) { testRelayCheckBeforePermission(t, impl) })
	}
}

func testRelayCheckBeforePermission(t *testing.T, impl relayImpl) {
	srv := impl.server(t)
	refused := make(chan struct{}) // b saw the relay close its connection
	var once sync.Once
	gated := func(ctx context.Context) (RelayAllocation, error) {
		r, err := impl.relay(srv)(ctx)
		if err != nil {
			return nil, err
		}
		return gatedPermit{r, refused}, nil
	}
	ca := Config{Addrs: loopback, Relay: gated, TCPTypes: []TCPType{Passive}}
	cb := Config{Addrs: loopback, TCPTypes: []TCPType{Active}, Controlling: true,
		Logf: func(format string, _ ...any) {
			if strings.HasPrefix(format, "ice: connecting again to the relayed candidate") {
				once.Do(func() { close(refused) })
			}
		}}
	ra, rb := connectAgents(t, ca, cb, onlyRelayed())
	sel := relayedSelected(t, ra, rb)
	if sel.Checks < 2 {
		t.Errorf("relayed pair selected after %d checks; the first should have met a closed connection", sel.Checks)
	}
	exchangeTurns(t, ra.conn, rb.conn, 100_000, !impl.halfDuplex)
}

// TestPermitBeforeAnswer: the answering side installs its permissions for
// the requester before sending its description (Agent.Permit), so the
// requester's first check on its relayed candidate goes through, and
// Connect does not ask the relay again.
func TestPermitBeforeAnswer(t *testing.T) {
	srv := startDelTURN(t, "127.0.0.1", delturnLoopback...)
	var asked []netip.Addr
	var mu sync.Mutex
	counted := func(ctx context.Context) (RelayAllocation, error) {
		r, err := delRelay(srv)(ctx)
		if err != nil {
			return nil, err
		}
		return permitLog{r, &mu, &asked}, nil
	}
	retried := false
	b, err := NewAgent(Config{Addrs: loopback, TCPTypes: []TCPType{Active}, Controlling: true,
		Logf: func(format string, _ ...any) {
			retried = retried || strings.HasPrefix(format, "ice: connecting again to the relayed candidate")
		}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAgent(Config{Addrs: loopback, Relay: counted, TCPTypes: []TCPType{Passive}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	ctx := context.Background()
	db, err := b.Gather(ctx) // the request
	if err != nil {
		t.Fatal(err)
	}
	da, err := a.Gather(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.Permit(db) // before the answer leaves
	onlyRelayed()(&da)
	ch := make(chan result, 1)
	go func() { c, rep, err := b.Connect(ctx, da); ch <- result{c, rep, err} }()
	c, rep, err := a.Connect(ctx, db)
	ra, rb := result{c, rep, err}, <-ch
	for _, r := range []result{ra, rb} {
		if r.conn != nil {
			t.Cleanup(func() { r.conn.Close() })
		}
	}
	relayedSelected(t, ra, rb)
	if retried {
		t.Error("the first check on the relayed candidate was refused although the permission was installed before")
	}
	mu.Lock()
	defer mu.Unlock()
	seen := map[netip.Addr]int{}
	for _, ip := range asked {
		seen[ip]++
	}
	if seen[netip.MustParseAddr("127.0.0.1")] != 1 {
		t.Errorf("permissions asked: %v; want 127.0.0.1 once", asked)
	}
	exchange(t, ra.conn, rb.conn, 10_000)
}

// permitLog records the addresses each Permit asks for.
type permitLog struct {
	RelayAllocation
	mu    *sync.Mutex
	asked *[]netip.Addr
}

func (p permitLog) Permit(ips []netip.Addr) error {
	p.mu.Lock()
	*p.asked = append(*p.asked, ips...)
	p.mu.Unlock()
	return p.RelayAllocation.Permit(ips)
}

// onlyRelayed edits a description down to its relayed candidates, plus
// extra.
func onlyRelayed(extra ...Candidate) func(*Description) {
	return func(d *Description) {
		var keep []Candidate
		for _, c := range d.Candidates {
			if c.Type == Relayed {
				keep = append(keep, c)
			}
		}
		d.Candidates = append(keep, extra...)
	}
}

// relayedSelected checks that both connected and b selected a pair on a's
// relayed candidate, and returns b's selected pair.
func relayedSelected(t *testing.T, ra, rb result) *PairReport {
	t.Helper()
	if ra.err != nil || rb.err != nil {
		t.Fatalf("%v / %v\n%s%s", ra.err, rb.err, ra.rep, rb.rep)
	}
	t.Logf("\n%s%s", ra.rep, rb.rep)
	sel := rb.rep.SelectedPair()
	if sel.Remote.Type != Relayed {
		t.Fatalf("selected %+v, want the relayed pair", sel)
	}
	return sel
}

// gatedPermit holds Permit until open is closed (or 10 s passed).
type gatedPermit struct {
	RelayAllocation
	open chan struct{}
}

func (g gatedPermit) Permit(ips []netip.Addr) error {
	select {
	case <-g.open:
	case <-time.After(10 * time.Second):
		return errors.New("the peer never met a closed relay connection")
	}
	return g.RelayAllocation.Permit(ips)
}

// rawPeer talks to an agent's passive candidate by hand.
type rawPeer struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (p *rawPeer) send(raw []byte) {
	p.t.Helper()
	b, err := AppendFrame(nil, raw)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

func (p *rawPeer) recv() (*stun.Message, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	f, err := peekFrame(p.br, MaxFrame)
	if err != nil {
		return nil, err
	}
	m, err := decodeSTUN(f)
	p.br.Discard(2 + len(f))
	return m, err
}

func TestBadChecks(t *testing.T) {
	a, err := NewAgent(Config{Addrs: loopback, TCPTypes: []TCPType{Passive}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	da, err := a.Gather(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const peerUfrag, peerPwd = "PEER", "peerpasswordpeerpassword"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := a.Connect(ctx, Description{Ufrag: peerUfrag, Pwd: peerPwd, Candidates: []Candidate{
			{Foundation: "1", Component: 1, Priority: Priority(Host, Active, 0, 1), Addr: netip.MustParseAddrPort("127.0.0.1:9"), Type: Host, TCPType: Active}}})
		done <- err
	}()
	dial := func() *rawPeer {
		c, err := net.Dial("tcp4", da.Candidates[0].Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &rawPeer{t, c, bufio.NewReaderSize(c, 1<<17)}
	}
	check := func(user, pwd string) ([]byte, [stun.TransactionIDSize]byte) {
		tx := stun.NewTransactionID()
		raw, err := buildCheck(checkRequest{tx: tx, username: user, priority: 5, tieBreaker: 1, controlling: true}, pwd)
		if err != nil {
			t.Fatal(err)
		}
		return raw, tx
	}
	expectCode := func(p *rawPeer, tx [stun.TransactionIDSize]byte, code stun.ErrorCode) {
		t.Helper()
		m, err := p.recv()
		if err != nil {
			t.Fatalf("want error %d, got %v", code, err)
		}
		var ec stun.ErrorCodeAttribute
		if m.TransactionID != tx || m.Type != stun.BindingError || ec.GetFrom(m) != nil || ec.Code != code {
			t.Fatalf("want error %d for our transaction, got %s", code, m)
		}
	}
	p := dial()
	// wrong password: 401
	raw, tx := check(da.Ufrag+":"+peerUfrag, peerPwd)
	p.send(raw)
	expectCode(p, tx, stun.CodeUnauthorized)
	// unknown username: 401
	raw, tx = check("nobody:"+peerUfrag, da.Pwd)
	p.send(raw)
	expectCode(p, tx, stun.CodeUnauthorized)
	// no FINGERPRINT: dropped silently; the next answer is for the next request
	m, _ := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername(da.Ufrag+":"+peerUfrag),
		uint32Attr{stun.AttrPriority, 5}, uint64Attr{stun.AttrICEControlling, 1}, stun.NewShortTermIntegrity(da.Pwd))
	p.send(m.Raw)
	// no MESSAGE-INTEGRITY: 400
	m, _ = stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername(da.Ufrag+":"+peerUfrag),
		uint32Attr{stun.AttrPriority, 5}, uint64Attr{stun.AttrICEControlling, 1}, stun.Fingerprint)
	p.send(m.Raw)
	expectCode(p, m.TransactionID, stun.CodeBadRequest)
	// a truncated STUN message inside a frame: dropped
	raw, _ = check(da.Ufrag+":"+peerUfrag, da.Pwd)
	p.send(raw[:30])
	// a good check on the same connection is still answered
	raw, tx = check(da.Ufrag+":"+peerUfrag, da.Pwd)
	p.send(raw)
	m, err = p.recv()
	if err != nil || m.TransactionID != tx || m.Type != stun.BindingSuccess {
		t.Fatalf("good check after bad ones: %v %v", err, m)
	}

	// an oversize STUN frame: the connection is closed
	q := dial()
	big := make([]byte, 20+4000)
	copy(big, raw[:20])
	big[2], big[3] = byte(4000>>8), byte(4000&0xff)
	q.send(big)
	if _, err := q.recv(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("oversize frame: connection not closed: %v", err)
	}
	// the agent survived all of it and still ends with a clear error at its deadline
	select {
	case err := <-done:
		if !errors.Is(err, ErrNoPath) {
			t.Fatalf("Connect: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Connect did not end at its deadline")
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }
