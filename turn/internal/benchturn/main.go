// Command benchturn measures TCP relaying through `del turn` and coturn's
// turnserver against a direct TCP copy, with the same client (package turn)
// in the same run, on loopback only. scripts/bench-turn builds and runs it.
//
// Figures: one big transfer (MB/s, server CPU seconds), N concurrent
// allocations each moving a few MiB (wall seconds, server CPU seconds), and
// memory per idle allocation (server RSS growth / N).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/del-share/del/turn"
)

const (
	user  = "bench"
	pass  = "bench-secret"
	realm = "bench.del"
)

func main() {
	delBin := flag.String("del", "del", "del binary")
	coturnBin := flag.String("turnserver", "turnserver", "coturn turnserver binary (empty: skip coturn)")
	size := flag.Int64("size", 1<<30, "bytes of the big transfer")
	runs := flag.Int("runs", 3, "runs of the big transfer (median reported)")
	conc := flag.Int("conc", 200, "concurrent allocations")
	concSize := flag.Int64("conc-size", 4<<20, "bytes per concurrent allocation")
	idle := flag.Int("idle", 500, "idle allocations for the memory figure")
	flag.Parse()

	type server struct {
		name  string
		start func() (*proc, error)
	}
	servers := []server{{"del turn", func() (*proc, error) { return startDel(*delBin) }}}
	if *coturnBin != "" {
		if _, err := exec.LookPath(*coturnBin); err == nil {
			servers = append(servers, server{"coturn", func() (*proc, error) { return startCoturn(*coturnBin, *conc+*idle+50) }})
		} else {
			fmt.Fprintf(os.Stderr, "benchturn: %s not found, coturn skipped\n", *coturnBin)
		}
	}

	results := map[string]*result{}
	order := []string{}
	procs := map[string]*proc{}
	stopAll := func() {
		for _, p := range procs {
			p.stop()
		}
	}
	for _, s := range servers {
		p, err := s.start()
		if err != nil {
			stopAll()
			fatal("%s: %v", s.name, err)
		}
		procs[s.name] = p
		r := &result{}
		results[s.name] = r
		order = append(order, s.name)
		// Idle memory first, on the fresh process, before transfers have
		// grown its heap.
		r.idleKB, err = idleMemory(p, *idle)
		if err != nil {
			stopAll()
			fatal("%s: idle: %v", s.name, err)
		}
	}
	// The big transfers take turns run by run (each server, the direct copy
	// and the bare proxy), so that a change of load on the shared machine
	// weighs on all of them alike; ratios are also taken run by run.
	mbs := map[string][]float64{}
	var ratios []float64
	for i := 0; i < *runs; i++ {
		for _, n := range order {
			p := procs[n]
			cpu0 := p.cpu()
			v, err := bigTransfer(p.addr, *size)
			if err != nil {
				stopAll()
				fatal("%s: big transfer: %v", n, err)
			}
			results[n].bigCPU += (p.cpu() - cpu0) / float64(*runs)
			mbs[n] = append(mbs[n], v)
		}
		v, err := directTransfer(*size)
		if err != nil {
			stopAll()
			fatal("direct: %v", err)
		}
		mbs["direct"] = append(mbs["direct"], v)
		ratios = append(ratios, mbs["del turn"][i]/v)
		if v, err = proxyTransfer(*size); err != nil {
			stopAll()
			fatal("proxy: %v", err)
		}
		mbs["proxy"] = append(mbs["proxy"], v)
	}
	for _, n := range order {
		r := results[n]
		r.mbps = median(mbs[n])
		p := procs[n]
		cpu1 := p.cpu()
		t, err := concurrent(p.addr, *conc, *concSize)
		if err != nil {
			stopAll()
			fatal("%s: concurrent: %v", n, err)
		}
		r.concSec = t.Seconds()
		r.concCPU = p.cpu() - cpu1
	}
	stopAll()
	d, px := median(mbs["direct"]), median(mbs["proxy"])

	fmt.Printf("TURN over TCP, loopback, %d MiB transfer (median of %d), %d allocations x %d MiB, %d idle allocations\n\n",
		*size>>20, *runs, *conc, *concSize>>20, *idle)
	fmt.Printf("%-12s %10s %12s %14s %14s %16s\n", "path", "MB/s", "server CPU s", "conc. wall s", "conc. CPU s", "kB/idle alloc")
	for _, n := range order {
		r := results[n]
		fmt.Printf("%-12s %10.0f %12.2f %14.2f %14.2f %16.1f\n", n, r.mbps, r.bigCPU, r.concSec, r.concCPU, r.idleKB)
	}
	fmt.Printf("%-12s %10.0f %12s %14s %14s %16s\n", "TCP proxy", px, "-", "-", "-", "-")
	fmt.Printf("%-12s %10.0f %12s %14s %14s %16s\n", "direct TCP", d, "-", "-", "-", "-")
	fmt.Println()
	fmt.Println("TCP proxy: a bare in-process splice proxy, one extra TCP hop and no TURN; the ceiling of any relay here.")
	del := results["del turn"]
	fmt.Printf("del turn / direct:  %.2f x (medians; goal >= 0.40)\n", del.mbps/d)
	fmt.Printf("del turn / direct, run by run: median %.2f x, runs %s\n", median(ratios), fmtRatios(ratios))
	fmt.Printf("del turn / TCP proxy:  %.2f x\n", del.mbps/px)
	if c, ok := results["coturn"]; ok {
		fmt.Printf("del turn / coturn:  %.2f x (goal >= 3)\n", del.mbps/c.mbps)
		fmt.Printf("concurrent, coturn time / del turn time: %.2f x\n", c.concSec/del.concSec)
	}
}

func fmtRatios(v []float64) string {
	var b strings.Builder
	for i, x := range v {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%.2f", x)
	}
	return b.String()
}

type result struct {
	mbps, bigCPU, concSec, concCPU, idleKB float64
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchturn: "+format+"\n", args...)
	os.Exit(1)
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

// proc is a running TURN server process.
type proc struct {
	cmd  *exec.Cmd
	addr string
}

func (p *proc) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// cpu is the process's user+system CPU seconds so far (/proc/PID/stat).
func (p *proc) cpu() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rssKB is the process's resident set (/proc/PID/status VmRSS).
func (p *proc) rssKB() float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func startDel(bin string) (*proc, error) {
	cmd := exec.Command(bin, "turn", "--listen", "127.0.0.1:0", "--user", user+":"+pass,
		"--realm", realm, "--allow-loopback-peers")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "turn listening "); ok {
			go io.Copy(io.Discard, out)
			return &proc{cmd: cmd, addr: addr}, nil
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, errors.New("del turn exited before listening")
}

func startCoturn(bin string, ports int) (*proc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	minPort := 40000
	cmd := exec.Command(bin, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
		"--listening-port="+strconv.Itoa(port), "--lt-cred-mech", "--user="+user+":"+pass,
		"--realm="+realm, "--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli",
		"--min-port="+strconv.Itoa(minPort), "--max-port="+strconv.Itoa(minPort+2*ports),
		"--log-file=stdout", "--simple-log", "--total-quota=0", "--user-quota=0")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return &proc{cmd: cmd, addr: addr}, nil
		}
		time.Sleep(20 * time.Millisecond) // polling for the server to listen
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, errors.New("turnserver did not listen")
}

func client(addr string) *turn.Client {
	return &turn.Client{Server: addr, Username: user, Password: pass}
}

// relayedPair makes an allocation on addr and dials a loopback peer through
// it; it returns the relayed conn (client side), the peer's conn, and the
// allocation to close.
func relayedPair(ctx context.Context, addr string, ln net.Listener) (net.Conn, net.Conn, *turn.Allocation, error) {
	a, err := client(addr).Allocate(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	type acc struct {
		c   net.Conn
		err error
	}
	ch := make(chan acc, 1)
	go func() { c, err := ln.Accept(); ch <- acc{c, err} }()
	out, err := a.DialPeer(ctx, ln.Addr().String())
	if err != nil {
		a.Close()
		return nil, nil, nil, err
	}
	r := <-ch
	if r.err != nil {
		out.Close()
		a.Close()
		return nil, nil, nil, r.err
	}
	return out, r.c, a, nil
}

// transfer sends size bytes from w to r; r discards them and confirms with
// one byte; it returns the time until the confirmation.
func transfer(w, r net.Conn, size int64) (time.Duration, error) {
	errc := make(chan error, 1)
	go func() {
		// Read in 256 KiB pieces, like the writer (io.Discard reads 8 KiB).
		rb := make([]byte, 256<<10)
		var n int64
		var err error
		for n < size && err == nil {
			var k int
			k, err = r.Read(rb[:min(int64(len(rb)), size-n)])
			n += int64(k)
		}
		if err == nil {
			_, err = r.Write([]byte{1})
		} else {
			err = fmt.Errorf("received %d of %d: %w", n, size, err)
		}
		errc <- err
	}()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		if _, err := w.Write(buf[:n]); err != nil {
			return 0, err
		}
		left -= n
	}
	var ack [1]byte
	if _, err := io.ReadFull(w, ack[:]); err != nil {
		return 0, fmt.Errorf("confirmation: %w", err)
	}
	d := time.Since(start)
	return d, <-errc
}

func bigTransfer(addr string, size int64) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	out, peer, a, err := relayedPair(ctx, addr, ln)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	defer out.Close()
	defer peer.Close()
	d, err := transfer(out, peer, size)
	if err != nil {
		return 0, err
	}
	return float64(size) / d.Seconds() / 1e6, nil
}

func directTransfer(size int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer w.Close()
	r := <-ch
	if r == nil {
		return 0, errors.New("accept failed")
	}
	defer r.Close()
	d, err := transfer(w, r, size)
	if err != nil {
		return 0, err
	}
	return float64(size) / d.Seconds() / 1e6, nil
}

// proxyTransfer is directTransfer through a bare TCP proxy (io.Copy both
// ways, which splices) in this process.
func proxyTransfer(size int64) (float64, error) {
	back, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer back.Close()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer front.Close()
	go func() {
		in, err := front.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", back.Addr().String())
		if err != nil {
			in.Close()
			return
		}
		go func() { io.Copy(out, in); out.Close() }()
		io.Copy(in, out)
		in.Close()
	}()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := back.Accept(); ch <- c }()
	w, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		return 0, err
	}
	defer w.Close()
	r := <-ch
	if r == nil {
		return 0, errors.New("accept failed")
	}
	defer r.Close()
	d, err := transfer(w, r, size)
	if err != nil {
		return 0, err
	}
	return float64(size) / d.Seconds() / 1e6, nil
}

// concurrent sets up n allocations with a relayed connection each, then
// moves size bytes through every one at once; it returns the wall time of
// the transfers.
func concurrent(addr string, n int, size int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	type pair struct {
		out, peer net.Conn
		a         *turn.Allocation
	}
	pairs := make([]pair, 0, n)
	defer func() {
		for _, p := range pairs {
			p.out.Close()
			p.peer.Close()
			p.a.Close()
		}
	}()
	for i := 0; i < n; i++ {
		out, peer, a, err := relayedPair(ctx, addr, ln)
		if err != nil {
			return 0, fmt.Errorf("pair %d: %w", i, err)
		}
		pairs = append(pairs, pair{out, peer, a})
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := transfer(p.out, p.peer, size); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	return d, <-errs
}

// idleMemory makes n idle allocations and returns the server's RSS growth
// per allocation in kB.
func idleMemory(p *proc, n int) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := p.rssKB()
	allocs := make([]*turn.Allocation, 0, n)
	defer func() {
		for _, a := range allocs {
			a.Close()
		}
	}()
	for i := 0; i < n; i++ {
		a, err := client(p.addr).Allocate(ctx)
		if err != nil {
			return 0, fmt.Errorf("allocation %d: %w", i, err)
		}
		allocs = append(allocs, a)
	}
	return (p.rssKB() - before) / float64(n), nil
}
