package ice

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// pipeConn builds a Conn over one end of a loopback connection, as handOver does.
func pipeConn(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	x, y := tcpPair(t)
	pc := &pconn{c: x, br: bufio.NewReaderSize(x, 2+MaxFrame+16)}
	return newConn(pc, Pair{}, ufragB, pwdB, nil, nil, 0), y
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	// a real TCP connection on loopback: answers carry the peer's address
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	y, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	x, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}

func TestConnLateCheckAnswered(t *testing.T) {
	c, peer := pipeConn(t)
	req := checkRequest{tx: stun.NewTransactionID(), username: ufragB + ":" + ufragA, priority: 1, tieBreaker: 2, controlling: true}
	raw, _ := buildCheck(req, pwdB)
	var stream []byte
	stream, _ = AppendFrame(stream, raw)
	stream, _ = AppendFrame(stream, []byte("hello"))
	stream, _ = AppendFrame(stream, nil) // empty frame: no data
	stream, _ = AppendFrame(stream, []byte(" world"))
	go peer.Write(stream)
	// The peer reads the answer to its late check while we read data.
	got := make(chan []byte, 1)
	go func() {
		br := bufio.NewReader(peer)
		var hdr [2]byte
		io.ReadFull(br, hdr[:])
		b := make([]byte, int(hdr[0])<<8|int(hdr[1]))
		io.ReadFull(br, b)
		got <- b
	}()
	buf := make([]byte, 3) // smaller than a frame: frames are split across reads
	var data []byte
	for len(data) < len("hello world") {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, buf[:n]...)
	}
	if string(data) != "hello world" {
		t.Fatalf("data %q", data)
	}
	select {
	case b := <-got:
		m, err := decodeSTUN(b)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := parseResponse(m, pwdB); err != nil || !r.ok || r.tx != req.tx {
			t.Fatalf("late check not answered: %v %+v", err, r)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no answer to the late check")
	}
}

func TestConnWriteSplitsFrames(t *testing.T) {
	c, peer := pipeConn(t)
	big := bytes.Repeat([]byte("0123456789"), 20000) // 200000 bytes: 4 frames
	go func() { c.Write(big); c.Write(nil) }()
	br := bufio.NewReaderSize(peer, 1<<17)
	var got []byte
	frames := 0
	for len(got) < len(big) {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatal(err)
		}
		n := int(hdr[0])<<8 | int(hdr[1])
		if n > MaxFrame || n == 0 {
			t.Fatalf("frame of %d bytes", n)
		}
		b := make([]byte, n)
		io.ReadFull(br, b)
		got = append(got, b...)
		frames++
	}
	if !bytes.Equal(got, big) || frames != 4 {
		t.Fatalf("%d frames, equal=%v", frames, bytes.Equal(got, big))
	}
}

// countFDs counts the process's open sockets. Only sockets: the runtime
// keeps the pipes of splice(2) (io.Copy between two TCP connections, as the
// in-process TURN server relays) in a pool that the garbage collector
// empties whenever it runs, so other descriptors come and go on their own.
func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// TestLosersClosed: after Connect, only the selected connection's socket
// remains: listeners, losing connections and goroutines are gone.
func TestLosersClosed(t *testing.T) {
	t.Run("direct", func(t *testing.T) { testLosersClosed(t, false) })
	// with a relayed candidate on each side (the project's TURN server) and
	// a STUN server: allocations and their connections go too
	t.Run("with-relay", func(t *testing.T) { testLosersClosed(t, true) })
}

func testLosersClosed(t *testing.T, relay bool) {
	ca, cb := Config{Addrs: loopback}, Config{Addrs: loopback}
	if relay {
		srv := startDelTURN(t, "127.0.0.1", delturnLoopback...)
		ca.Relay, cb.Relay = delRelay(srv), delRelay(srv)
		ca.STUN = []netip.AddrPort{srv}
		cb.STUN = ca.STUN
	}
	base := runtime.NumGoroutine()
	fds := countFDs(t)
	ra, rb := connectPair(t, ca, cb)
	if ra.err != nil || rb.err != nil {
		t.Fatal(ra.err, rb.err)
	}
	exchange(t, ra.conn, rb.conn, 10)
	// Two sockets remain open: each side's end of the selected connection.
	// With the relay, the in-process TURN server closes its side of the
	// released allocations asynchronously: poll.
	want := fds + 2
	if relay && ra.rep.SelectedPair().Remote.Type == Relayed {
		want = -1 // not expected: direct works on loopback
	}
	waitFDs(t, want)
	ra.conn.Close()
	rb.conn.Close()
	waitGoroutines(t, base)
	waitFDs(t, fds)
}

// waitFDs polls until the process has want descriptors open.
func waitFDs(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := countFDs(t)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, want %d", n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestInterfacesAllowList(t *testing.T) {
	t.Setenv("DEL_INTERFACES", " lo, ")
	names := InterfacesFromEnv()
	if len(names) != 1 || names[0] != "lo" {
		t.Fatalf("InterfacesFromEnv = %q", names)
	}
	addrs, err := localAddrs(&Config{Interfaces: names})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if !a.IsLoopback() {
			t.Errorf("address %s gathered from outside the allow-list", a)
		}
	}
	if len(addrs) == 0 {
		t.Fatal("nothing gathered on lo")
	}
	if _, err := localAddrs(&Config{Interfaces: []string{"no-such-if0"}}); err == nil {
		t.Error("unknown interface gave addresses")
	}
}

func TestGatherCandidates(t *testing.T) {
	srv := startTURN(t, "127.0.0.1")
	a, err := NewAgent(Config{Addrs: loopback, STUN: []netip.AddrPort{srv}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	d, err := a.Gather(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[TCPType]int{}
	for _, c := range d.Candidates {
		if c.Type != Host {
			// on loopback the server-reflexive address equals the host one:
			// redundant, removed (RFC 8445 §5.1.3)
			t.Errorf("non-host candidate %s on loopback", c)
		}
		kinds[c.TCPType]++
		if c.Priority != Priority(c.Type, c.TCPType, otherPref(c.Addr.Addr(), 0), 1) {
			t.Errorf("priority of %s", c)
		}
	}
	if kinds[Active] != 1 || kinds[Passive] != 1 || kinds[SO] != 1 {
		t.Fatalf("candidates %v", d.Candidates)
	}
	// the STUN server was asked from the candidate's own port
	for _, c := range d.Candidates {
		if c.TCPType == Active {
			continue
		}
		mapped, err := stunBinding(context.Background(), netip.AddrPortFrom(c.Base.Addr(), 0), srv, time.Second)
		if err != nil || mapped.Addr() != c.Base.Addr() {
			t.Fatalf("STUN over TCP: %v %s", err, mapped)
		}
		mapped, err = stunBinding(context.Background(), c.Base, srv, time.Second)
		if err != nil || mapped != c.Base {
			t.Fatalf("STUN from the candidate port %s: %v %s", c.Base, err, mapped)
		}
	}
}

func TestConnectIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	ln.Close()
	v6 := []netip.Addr{netip.MustParseAddr("::1")}
	ra, rb := connectPair(t, Config{Addrs: v6}, Config{Addrs: v6})
	if ra.err != nil || rb.err != nil {
		t.Fatal(ra.err, rb.err)
	}
	if !ra.rep.SelectedPair().Local.Addr.Addr().Is6() {
		t.Fatal("not IPv6")
	}
	exchange(t, ra.conn, rb.conn, 1000)
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{Addrs: []netip.Addr{{}}},
		{Addrs: []netip.Addr{netip.MustParseAddr("0.0.0.0")}},
		{TCPTypes: []TCPType{9}},
		{STUN: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}},
		{Nomination: 7},
		{CheckTimeout: -time.Second},
	}
	for i, c := range bad {
		if _, err := NewAgent(c); err == nil {
			t.Errorf("config %d accepted: %+v", i, c)
		}
	}
	a, err := NewAgent(Config{Addrs: loopback})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a.Close() // safe twice
	if _, _, err := a.Connect(context.Background(), Description{}); err != ErrClosed {
		t.Errorf("Connect after Close: %v", err)
	}
}

func TestConnKeepalive(t *testing.T) {
	x, y := tcpPair(t)
	cx := newConn(&pconn{c: x, br: bufio.NewReaderSize(x, 2+MaxFrame+16)}, Pair{}, ufragA, pwdA, nil, nil, 10*time.Millisecond)
	defer cx.Close()
	// idle: a Binding indication arrives on the wire
	_ = y.SetReadDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReaderSize(y, 2+MaxFrame+16)
	f, err := peekFrame(br, MaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeSTUN(f)
	if err != nil || m.Type != stun.NewType(stun.MethodBinding, stun.ClassIndication) {
		t.Fatalf("first frame on an idle connection: %v %v", err, m)
	}
	// the peer's Conn skips keepalives and returns data only
	cy := newConn(&pconn{c: y, br: br}, Pair{}, ufragB, pwdB, nil, nil, -1)
	defer cy.Close()
	if _, err := cx.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(cy, got); err != nil || string(got) != "data" {
		t.Fatalf("read %q %v", got, err)
	}
	cx.Close()
	cx.Close() // safe twice; the keepalive goroutine has ended (Close waits)
}

// TestGatherSilentSTUN: a STUN server that never answers costs one
// CheckTimeout for the whole gathering (queries run in parallel), and
// leaves the host candidates.
func TestGatherSilentSTUN(t *testing.T) {
	silent := listenSilent(t)
	a, err := NewAgent(Config{Addrs: loopback, STUN: []netip.AddrPort{silent}, CheckTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	start := time.Now()
	d, err := a.Gather(context.Background())
	el := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if el > 550*time.Millisecond {
		t.Errorf("gathering took %v with two queries of 300 ms each: not parallel", el)
	}
	if len(d.Candidates) != 3 {
		t.Errorf("candidates %v", d.Candidates)
	}
}
