package ice

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
)

var loopback = []netip.Addr{netip.MustParseAddr("127.0.0.1")}

type result struct {
	conn *Conn
	rep  *Report
	err  error
}

// connectPair runs two agents (a controlling) against each other.
func connectPair(t *testing.T, ca, cb Config) (ra, rb result) {
	t.Helper()
	ca.Controlling, cb.Controlling = true, false
	return connectAgents(t, ca, cb, nil)
}

// connectAgents runs two agents with their own roles; edit, if set, changes
// a's description before b sees it.
func connectAgents(t *testing.T, ca, cb Config, edit func(*Description)) (ra, rb result) {
	t.Helper()
	return connectAgentsThen(t, ca, cb, edit, nil)
}

// connectAgentsThen also runs then(b's conn) in b's goroutine as soon as
// b's Connect returns.
func connectAgentsThen(t *testing.T, ca, cb Config, edit func(*Description), then func(*Conn)) (ra, rb result) {
	t.Helper()
	if testing.Verbose() {
		ca.Logf, cb.Logf = chainLogf(ca.Logf, t.Logf), chainLogf(cb.Logf, t.Logf)
	}
	a, err := NewAgent(ca)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewAgent(cb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	ctx := context.Background()
	da, err := a.Gather(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Gather(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&da)
	}
	// the descriptions travel as text
	da2, err := ParseDescription(da.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	db2, err := ParseDescription(db.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan result, 1)
	go func() {
		c, rep, err := b.Connect(ctx, da2)
		if err == nil && then != nil {
			then(c)
		}
		ch <- result{c, rep, err}
	}()
	c, rep, err := a.Connect(ctx, db2)
	ra = result{c, rep, err}
	rb = <-ch
	for _, r := range []result{ra, rb} {
		if r.conn != nil {
			t.Cleanup(func() { r.conn.Close() })
		}
	}
	return ra, rb
}

func chainLogf(f, g func(string, ...any)) func(string, ...any) {
	if f == nil {
		return g
	}
	return func(format string, args ...any) { f(format, args...); g(format, args...) }
}

// exchange sends n random bytes each way and checks them. Both sides read
// while both write, as a full-duplex application does (reading one side
// first can stall a relay whose buffers couple the two directions), and
// every read has a deadline, so a lost byte fails the test instead of
// hanging it.
func exchange(t *testing.T, x, y *Conn, n int) {
	t.Helper()
	exchangeTurns(t, x, y, n, true)
}

// exchangeTurns is exchange; with duplex false the bytes go one way, and
// only once they have all arrived the other way (see relayImpl.halfDuplex).
func exchangeTurns(t *testing.T, x, y *Conn, n int, duplex bool) {
	t.Helper()
	msgX, msgY := make([]byte, n), make([]byte, n)
	rand.Read(msgX)
	rand.Read(msgY)
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range []*Conn{x, y} {
		c.SetDeadline(deadline)
		defer c.SetDeadline(time.Time{})
	}
	gotY, gotX := make([]byte, n), make([]byte, n)
	send := func(from, to *Conn, msg, got []byte, side string) chan error {
		errc := make(chan error, 2)
		go func() { _, err := from.Write(msg); errc <- err }()
		go func() {
			k, err := io.ReadFull(to, got)
			if err != nil {
				err = fmt.Errorf("read at the %s side: %d of %d bytes: %w", side, k, n, err)
			}
			errc <- err
		}()
		return errc
	}
	wait := func(errc chan error) {
		t.Helper()
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
	}
	toY := send(x, y, msgX, gotX, "second")
	if !duplex {
		wait(toY)
		toY = nil
	}
	toX := send(y, x, msgY, gotY, "first")
	if toY != nil {
		wait(toY)
	}
	wait(toX)
	if !bytes.Equal(gotX, msgX) || !bytes.Equal(gotY, msgY) {
		t.Fatal("data corrupted")
	}
}

func samePath(t *testing.T, a, b *Conn) {
	t.Helper()
	if a.LocalAddr().String() != b.RemoteAddr().String() || a.RemoteAddr().String() != b.LocalAddr().String() {
		t.Fatalf("agents chose different connections: %s<->%s vs %s<->%s", a.LocalAddr(), a.RemoteAddr(), b.LocalAddr(), b.RemoteAddr())
	}
}

func TestConnectLoopback(t *testing.T) {
	for _, nom := range []Nomination{Regular, Aggressive} {
		name := map[Nomination]string{Regular: "regular", Aggressive: "aggressive"}[nom]
		t.Run(name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			ra, rb := connectPair(t, Config{Addrs: loopback, Nomination: nom}, Config{Addrs: loopback, Nomination: nom})
			if ra.err != nil || rb.err != nil {
				t.Fatalf("connect: %v / %v\n%v\n%v", ra.err, rb.err, ra.rep, rb.rep)
			}
			t.Logf("\n%s%s", ra.rep, rb.rep)
			samePath(t, ra.conn, rb.conn)
			exchange(t, ra.conn, rb.conn, 200_000)
			sel := ra.rep.SelectedPair()
			if sel == nil || sel.Local.Type != Host || sel.Remote.Type != Host || !sel.Nominated {
				t.Fatalf("selected %+v", sel)
			}
			// host active -> passive has the highest pair priority on one
			// address; aggressive nomination takes whichever succeeds first
			if nom == Regular && (sel.Local.TCPType != Active || sel.Remote.TCPType != Passive) {
				t.Errorf("selected %s->%s, want active->passive", sel.Local.TCPType, sel.Remote.TCPType)
			}
			if ra.rep.ChecksSent > 6 {
				t.Errorf("%d checks sent", ra.rep.ChecksSent)
			}
			ra.conn.Close()
			rb.conn.Close()
			waitGoroutines(t, base)
		})
	}
}

// waitGoroutines polls until the goroutine count is back to base.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConnectNoAnswer(t *testing.T) {
	// The peer's description points at a listener that accepts and never
	// answers, and at an S-O address nobody listens on.
	a, err := NewAgent(Config{Addrs: loopback, Controlling: true, CheckTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Gather(context.Background()); err != nil {
		t.Fatal(err)
	}
	silent := listenSilent(t)
	remote := Description{Ufrag: "abcd", Pwd: strings.Repeat("p", 22), Candidates: []Candidate{
		{Foundation: "1", Component: 1, Priority: 1000, Addr: silent, Type: Host, TCPType: Passive},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, rep, err := a.Connect(ctx, remote)
	el := time.Since(start)
	if !errors.Is(err, ErrNoPath) {
		t.Fatalf("err = %v, want ErrNoPath", err)
	}
	if el > 1500*time.Millisecond {
		t.Errorf("took %v with a 1 s deadline", el)
	}
	if len(rep.Pairs) != 1 || rep.Pairs[0].State != Failed || !strings.Contains(rep.Pairs[0].Err, "no response") {
		t.Errorf("report:\n%s", rep)
	}
	t.Logf("%v\n%s", err, rep)
}

// listenSilent accepts connections on loopback and never writes.
func listenSilent(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
