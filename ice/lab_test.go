package ice

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/internal/netlab"
)

// labResult is what an agent helper reports on its last stdout line.
type labResult struct {
	Selected    string  // "host/active -> srflx/passive"
	Relay       bool    // the selected pair uses a relayed candidate
	Elapsed     float64 // ms, start of checks to selection
	FirstByte   float64 // ms, start of checks to the first application byte (controlling side)
	Gather      float64 // ms: listeners, STUN queries, TURN allocation
	Checks      int
	Report      string
	TransferOK  bool
	TransferMBs float64
	Err         string
}

// TestHelperProcess is not a test: lab tests re-execute the test binary
// inside a namespace with ICE_HELPER set.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("ICE_HELPER") {
	case "turn":
		// the project's TURN server, as `del turn` runs it; ICE_TURN_IMPL=pion
		// runs pion/turn v5's instead
		var addr netip.AddrPort
		if os.Getenv("ICE_TURN_IMPL") == "pion" {
			addr = startTURN(t, os.Getenv("ICE_ADDR"))
		} else {
			addr = startDelTURN(t, os.Getenv("ICE_ADDR"))
		}
		fmt.Println("turn", addr)
		_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
		os.Exit(0)
	case "agent":
		res := labAgent()
		b, _ := json.Marshal(res)
		fmt.Println("result", string(b))
		os.Exit(0)
	}
}

func labAgent() (res labResult) {
	env := func(k string) string { return os.Getenv(k) }
	cfg := Config{
		Addrs:         []netip.Addr{netip.MustParseAddr(env("ICE_ADDR"))},
		Controlling:   env("ICE_CONTROLLING") == "1",
		CheckTimeout:  2 * time.Second,
		DirectTimeout: 4 * time.Second,
		Timeout:       15 * time.Second,
	}
	if s := env("ICE_TURN"); s != "" {
		srv := netip.MustParseAddrPort(s)
		cfg.STUN = []netip.AddrPort{srv}
		cfg.Relay = delRelay(srv)
		if env("ICE_TURN_IMPL") == "pion" {
			cfg.Relay = pionRelay(srv)
		}
	}
	if env("ICE_DEBUG") != "" {
		cfg.Logf = func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, "%s [%s] %s\n", time.Now().Format("15:04:05.000000"), env("ICE_ADDR"), fmt.Sprintf(f, a...))
		}
	}
	a, err := NewAgent(cfg)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer a.Close()
	ctx := context.Background()
	g0 := time.Now()
	d, err := a.Gather(ctx)
	res.Gather = float64(time.Since(g0).Microseconds()) / 1000
	if err != nil {
		res.Err = err.Error()
		return res
	}
	fmt.Println("desc", base64.StdEncoding.EncodeToString(d.Marshal()))
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		res.Err = "read peer description: " + err.Error()
		return res
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(line, "desc ")))
	if err != nil {
		res.Err = err.Error()
		return res
	}
	remote, err := ParseDescription(raw)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	if d, _ := time.ParseDuration(env("ICE_DELAY")); d > 0 {
		time.Sleep(d) // the signaling delay of one side (see labCell.skew)
	}
	start := time.Now()
	conn, rep, err := a.Connect(ctx, remote)
	if rep != nil {
		res.Report = rep.String()
		res.Checks = rep.ChecksSent
		res.Elapsed = float64(rep.Elapsed.Microseconds()) / 1000
		if s := rep.SelectedPair(); s != nil {
			res.Selected = fmt.Sprintf("%s/%s -> %s/%s", s.Local.Type, s.Local.TCPType, s.Remote.Type, s.Remote.TCPType)
			res.Relay = s.Local.Type == Relayed || s.Remote.Type == Relayed
		}
	}
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	size, _ := strconv.Atoi(env("ICE_SIZE"))
	if cfg.Controlling {
		// the controlled side greets first: time to the first application byte
		var hello [1]byte
		if _, err := io.ReadFull(conn, hello[:]); err != nil {
			res.Err = "read greeting: " + err.Error()
			return res
		}
		res.FirstByte = float64(time.Since(start).Microseconds()) / 1000
		data := make([]byte, size)
		rand.Read(data)
		sum := sha256.Sum256(data)
		t0 := time.Now()
		if _, err := conn.Write(data); err != nil {
			res.Err = "write: " + err.Error()
			return res
		}
		var got [32]byte
		if _, err := io.ReadFull(conn, got[:]); err != nil {
			res.Err = "read hash: " + err.Error()
			return res
		}
		res.TransferMBs = float64(size) / 1e6 / time.Since(t0).Seconds()
		res.TransferOK = got == sum
		return res
	}
	if _, err := conn.Write([]byte{'!'}); err != nil {
		res.Err = "greet: " + err.Error()
		return res
	}
	h := sha256.New()
	if _, err := io.CopyN(h, conn, int64(size)); err != nil {
		res.Err = "read data: " + err.Error()
		return res
	}
	if _, err := conn.Write(h.Sum(nil)); err != nil {
		res.Err = "write hash: " + err.Error()
		return res
	}
	res.TransferOK = true
	// wait for the controlling side to close, so the hash is not cut off
	_, _ = io.Copy(io.Discard, conn)
	return res
}

// labProc is a helper process in a namespace.
type labProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startHelper(t *testing.T, ns *netlab.NS, env ...string) *labProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &labProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// expect returns the payload of the next stdout line starting with prefix.
func (p *labProc) expect(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("helper exited before %q", prefix)
			}
			if rest, ok := strings.CutPrefix(l, prefix+" "); ok {
				return rest
			}
		case <-deadline:
			t.Fatalf("no %q line within %v", prefix, timeout)
		}
	}
}

type labCell struct {
	name string
	// build returns the two devices (a controlling); a and b get their
	// addresses from the lab.
	build func(l *netlab.Lab) (a, b *netlab.NS)
	relay bool // true: no direct path exists, the relay is required
	// race: a direct path exists only if the S-O SYNs cross within the
	// NATs' RST round trip (NATs answering unsolicited SYNs with RST kill
	// the mapping of the other side's attempt): either outcome is right,
	// but the S-O pair must have been tried and fail by refusal if the
	// relay is used.
	race bool
	// skew delays the controlled agent's checks, as a slow signaling path
	// would: the controlling side's S-O attempts are over by then.
	skew time.Duration
}

// labCells are the lab's standard cells, plus one where the controlled side
// starts 2.5 s late.
var labCells = func() []labCell {
	var cs []labCell
	for _, c := range netlab.Cells {
		cs = append(cs, labCell{name: c.Name, build: c.Build, relay: c.Expect == netlab.Relay, race: c.Expect == netlab.Race})
		if c.Name == "eim-drop-both" {
			cs = append(cs, labCell{name: "eim-drop-both-skew", build: c.Build, skew: 2500 * time.Millisecond})
		}
	}
	return cs
}()

// runCell builds the cell, runs a TURN/STUN server in the public segment
// and two agents, passes their descriptions through pipes, and returns
// both results.
func runCell(t *testing.T, c labCell, size int) (ra, rb labResult) {
	lab := netlab.New(t)
	a, b := c.build(lab)
	turn := startHelper(t, lab.Public(), "ICE_HELPER=turn", "ICE_ADDR="+netlab.PublicAddr.String())
	srv := turn.expect(t, "turn", 10*time.Second)
	common := []string{"ICE_HELPER=agent", "ICE_TURN=" + srv, "ICE_SIZE=" + strconv.Itoa(size)}
	pa := startHelper(t, a, append(common, "ICE_ADDR="+a.Addr.String(), "ICE_CONTROLLING=1")...)
	pb := startHelper(t, b, append(common, "ICE_ADDR="+b.Addr.String(), "ICE_CONTROLLING=0", "ICE_DELAY="+c.skew.String())...)
	da := pa.expect(t, "desc", 10*time.Second)
	db := pb.expect(t, "desc", 10*time.Second)
	fmt.Fprintf(pa.stdin, "desc %s\n", db)
	fmt.Fprintf(pb.stdin, "desc %s\n", da)
	for _, x := range []struct {
		p *labProc
		r *labResult
	}{{pa, &ra}, {pb, &rb}} {
		if err := json.Unmarshal([]byte(x.p.expect(t, "result", 40*time.Second)), x.r); err != nil {
			t.Fatal(err)
		}
	}
	return ra, rb
}

// TestLab runs every NAT-lab cell: a direct path where one exists, the
// relay where none does, and a completed, verified transfer in each.
func TestLab(t *testing.T) {
	for _, c := range labCells {
		t.Run(c.name, func(t *testing.T) {
			ra, rb := runCell(t, c, 4<<20)
			t.Logf("controlling:\n%s\ncontrolled:\n%s", ra.Report, rb.Report)
			if ra.Err != "" || rb.Err != "" {
				t.Fatalf("errors: %q / %q", ra.Err, rb.Err)
			}
			if !ra.TransferOK || !rb.TransferOK {
				t.Fatal("transfer not verified")
			}
			if ra.Relay != rb.Relay {
				t.Fatalf("the agents disagree: %q / %q", ra.Selected, rb.Selected)
			}
			if c.race {
				if ra.Relay && !strings.Contains(ra.Report, "srflx so      failed") {
					t.Errorf("relay used but the S-O pair did not fail:\n%s", ra.Report)
				}
			} else if ra.Relay != c.relay || rb.Relay != c.relay {
				t.Errorf("relay used: %v/%v, want %v (selected %q / %q)", ra.Relay, rb.Relay, c.relay, ra.Selected, rb.Selected)
			}
			t.Logf("BENCH cell=%s selected=%q first_byte_ms=%.1f select_ms=%.1f checks=%d+%d transfer_MBps=%.0f gather_ms=%.1f",
				c.name, ra.Selected, ra.FirstByte, ra.Elapsed, ra.Checks, rb.Checks, ra.TransferMBs, max(ra.Gather, rb.Gather))
		})
	}
}
