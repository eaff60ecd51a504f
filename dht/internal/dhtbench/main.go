// Command dhtbench measures put, get and listen on a loopback network of
// `del dht run` processes and on the same network of `dhtnode` processes,
// in the same run and with the same client (two Go nodes of package dht
// joined to the network), and prints the figures side by side.
//
// It must run inside a private network namespace (scripts/bench-dht does
// `unshare -n`), because dhtnode binds every interface; every address used
// is 127.0.0.1.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
)

type result struct {
	name                     string
	nodes                    int
	put, get, getFirst, lstn []time.Duration
	found, gets              int
	putMsgs, getMsgs         []int
	cpuPerOp                 time.Duration
	sysPerOp                 time.Duration // the kernel's part of cpuPerOp
	faultsPerOp              float64       // minor page faults
	switchesPerOp            float64       // context switches of the node processes' threads
	pingRTT                  []time.Duration
	coldPing                 []time.Duration // each ping to the next node in turn
	coldFind                 []time.Duration // a find to each node in turn
	reqRTT                   []time.Duration // the clients' requests during puts and gets
	idleCPU                  time.Duration   // per second, whole network
	privPerNode              float64         // kB, median RssAnon
	perValue                 float64         // bytes of private memory per stored copy of a value
	replicas                 int             // stored copies (put acks)
	failed                   int
}

func main() {
	nodes := flag.Int("nodes", 50, "nodes per network")
	ops := flag.Int("ops", 200, "operations of each kind")
	delBin := flag.String("del", "del", "path of the del binary")
	only := flag.String("only", "", "run only this implementation (del or dhtnode)")
	flag.Parse()
	if os.Getenv("DEL_DHT_NETNS") == "" {
		fmt.Fprintln(os.Stderr, "dhtbench: run me through scripts/bench-dht (inside unshare -n)")
		os.Exit(2)
	}
	var results []*result
	for _, impl := range []string{"del", "dhtnode"} {
		if *only != "" && *only != impl {
			continue
		}
		r, err := bench(impl, *delBin, *nodes, *ops)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dhtbench %s: %v\n", impl, err)
			os.Exit(1)
		}
		results = append(results, r)
	}
	report(results, *ops)
}

func freePort() int {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func startNode(impl, delBin string, port int, boot string) (*exec.Cmd, error) {
	var cmd *exec.Cmd
	if impl == "del" {
		args := []string{"dht", "run", "--listen", fmt.Sprintf("127.0.0.1:%d", port)}
		if boot != "" {
			args = append(args, "--bootstrap", boot)
		}
		cmd = exec.Command(delBin, args...)
		cmd.Env = append(os.Environ(), "DEL_HOME="+os.TempDir()+"/dhtbench-nohome")
		if dir := os.Getenv("DHTBENCH_PROFDIR"); dir != "" {
			// A CPU profile per node, written when the node stops.
			cmd.Env = append(cmd.Env, fmt.Sprintf("DEL_CPUPROFILE=%s/node-%d.prof", dir, port))
		}
	} else {
		args := []string{"-s", "-p", strconv.Itoa(port)}
		if boot != "" {
			args = append(args, "-b", boot)
		}
		cmd = exec.Command("dhtnode", args...)
	}
	return cmd, cmd.Start()
}

// procStat returns CPU time and private (anonymous) memory of a process.
func procStat(pid int) (cpu time.Duration, rssAnonKB int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		s := string(b)
		f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
		ut, _ := strconv.Atoi(f[11])
		st, _ := strconv.Atoi(f[12])
		cpu = time.Duration(ut+st) * time.Second / 100
	}
	st, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		sc := bufio.NewScanner(st)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
				rssAnonKB, _ = strconv.Atoi(strings.Fields(v)[0])
			}
		}
		st.Close()
	}
	return cpu, rssAnonKB
}

// sysFaults returns the system CPU time and minor page faults of the
// node processes.
func sysFaults(cmds []*exec.Cmd) (sys time.Duration, faults int) {
	for _, c := range cmds {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
		mf, _ := strconv.Atoi(f[7])
		st, _ := strconv.Atoi(f[12])
		faults += mf
		sys += time.Duration(st) * time.Second / 100
	}
	return sys, faults
}

// switches counts the context switches (voluntary and not) of every thread
// of the node processes.
func switches(cmds []*exec.Cmd) int {
	total := 0
	for _, c := range cmds {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", c.Process.Pid))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", c.Process.Pid, t.Name()))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasSuffix(strings.SplitN(l, ":", 2)[0], "ctxt_switches") {
					v, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(l, ":", 2)[1]))
					total += v
				}
			}
		}
	}
	return total
}

func netStats(cmds []*exec.Cmd) (cpu time.Duration, anon []int) {
	for _, c := range cmds {
		cc, a := procStat(c.Process.Pid)
		cpu += cc
		anon = append(anon, a)
	}
	return cpu, anon
}

func bench(impl, delBin string, n, ops int) (*result, error) {
	r := &result{name: impl, nodes: n}
	p0 := freePort()
	boot := fmt.Sprintf("127.0.0.1:%d", p0)
	var cmds []*exec.Cmd
	defer func() {
		// SIGTERM first, so that a node writes its CPU profile.
		for _, c := range cmds {
			c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range cmds {
			t := time.AfterFunc(5*time.Second, func() { c.Process.Kill() })
			c.Wait()
			t.Stop()
		}
	}()
	var addrs []netip.AddrPort
	for i := 0; i < n; i++ {
		port := p0
		b := boot
		if i > 0 {
			port = freePort()
		} else {
			b = ""
		}
		c, err := startNode(impl, delBin, port, b)
		if err != nil {
			return nil, err
		}
		cmds = append(cmds, c)
		addrs = append(addrs, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)))
		if i == 0 {
			time.Sleep(200 * time.Millisecond) // let the first node bind
		}
	}
	if f := os.Getenv("DHTBENCH_PIDFILE"); f != "" {
		// The node pids, for perf record -p.
		var pids []string
		for _, c := range cmds {
			pids = append(pids, strconv.Itoa(c.Process.Pid))
		}
		os.WriteFile(f, []byte(strings.Join(pids, ",")+"\n"), 0o644)
	}
	bootAddr := netip.MustParseAddrPort(boot)
	var clients []*tracedClient
	for i := 0; i < 2; i++ {
		c, err := newTracedClient(dht.Config{})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.Bootstrap(bootAddr)
		clients = append(clients, c)
	}
	// Let the network settle: the clients must know a good part of it.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && (clients[0].Stats().Nodes < min(n, 24) || clients[1].Stats().Nodes < min(n, 24)) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	idle0, _ := netStats(cmds)
	time.Sleep(5 * time.Second)
	idle1, _ := netStats(cmds)
	r.idleCPU = (idle1 - idle0) / 5
	r.pingRTT = pingRTT([]netip.AddrPort{bootAddr}, 400, false)
	r.coldPing = pingRTT(addrs, 400, false)
	r.coldFind = pingRTT(addrs, 400, true)
	cpu0, anon0 := netStats(cmds)
	sw0 := switches(cmds)
	sys0, pf0 := sysFaults(cmds)
	slices.Sort(anon0)
	r.privPerNode = float64(anon0[len(anon0)/2])
	sum0 := 0
	for _, a := range anon0 {
		sum0 += a
	}

	ctx := context.Background()
	a, b := clients[0], clients[1]
	a.trace(true)
	b.trace(true)
	payload := make([]byte, 200)
	for i := 0; i < ops; i++ {
		var key wire.ID
		for j := range key {
			key[j] = byte(rand.UintN(256))
		}
		for j := range payload {
			payload[j] = byte('a' + rand.UintN(26))
		}
		v := &wire.Value{Data: append([]byte{}, payload...)}
		octx, cancel := context.WithTimeout(ctx, 20*time.Second)
		t0 := time.Now()
		pr, err := a.Put(octx, key, v)
		r.put = append(r.put, time.Since(t0))
		if err != nil {
			r.failed++
		} else {
			r.putMsgs = append(r.putMsgs, pr.Messages)
			r.replicas += pr.Stored
		}
		t0 = time.Now()
		gr, err := b.Get(octx, key, nil)
		r.get = append(r.get, time.Since(t0))
		r.gets++
		found := false
		if err == nil {
			r.getMsgs = append(r.getMsgs, gr.Messages)
			for _, g := range gr.Values {
				if g.ID == v.ID {
					r.found++
					found = true
				}
			}
		}
		if !found {
			// Say what happened, and whether another get finds it.
			again, err2 := b.Get(octx, key, nil)
			n := -1
			if err2 == nil {
				n = len(again.Values)
			}
			var answered, msgs, stored int
			if gr != nil {
				answered, msgs = gr.Nodes, gr.Messages
			}
			if pr != nil {
				stored = pr.Stored
			}
			fmt.Fprintf(os.Stderr, "dhtbench %s: get %d missed (err %v, %d nodes answered, %d messages; put acked by %d); a second get: %d values (err %v)\n",
				impl, i, err, answered, msgs, stored, n, err2)
		}
		cancel()
	}
	cpu1, anon1 := netStats(cmds)
	a.trace(false)
	b.trace(false)
	r.reqRTT = append(a.rtts(), b.rtts()...)
	r.switchesPerOp = float64(switches(cmds)-sw0) / float64(2*ops)
	sys1, pf1 := sysFaults(cmds)
	r.sysPerOp = (sys1 - sys0) / time.Duration(2*ops)
	r.faultsPerOp = float64(pf1-pf0) / float64(2*ops)
	sum1 := 0
	for _, a := range anon1 {
		sum1 += a
	}
	r.perValue = float64(sum1-sum0) * 1024 / float64(max(r.replicas, 1))
	r.cpuPerOp = (cpu1 - cpu0) / time.Duration(2*ops)

	// Listen: B listens on a fresh key, A puts there; time from the start
	// of the put to B's event.
	for i := 0; i < ops/4; i++ {
		key := wire.HashKey(fmt.Sprintf("listen-%s-%d-%d", impl, i, rand.Uint64()))
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		events, err := b.Listen(lctx, key, nil)
		if err != nil {
			cancel()
			return nil, err
		}
		// The listen is in place once its lookup ended and listens went out.
		time.Sleep(300 * time.Millisecond)
		t0 := time.Now()
		go a.Put(lctx, key, &wire.Value{Data: []byte("listen me")})
		select {
		case <-events:
			r.lstn = append(r.lstn, time.Since(t0))
		case <-lctx.Done():
		}
		cancel()
		for range events {
		}
	}
	return r, nil
}

// pingRTT sends pings from a plain UDP socket, one at a time, to each
// address of to in turn: with one address it times a node that is busy
// answering, with all of them a node that has been idle for a while.
//
// With find set it sends find requests for random targets instead of pings.
// The pinger marks its messages as a client's, so that it stays out of the
// nodes' routing tables.
func pingRTT(tos []netip.AddrPort, count int, find bool) []time.Duration {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil
	}
	defer c.Close()
	id := wire.HashKey("dhtbench-pinger")
	buf := make([]byte, 2048)
	var out []time.Duration
	for i := 0; i < count; i++ {
		m := wire.Message{Kind: wire.KindQuery, Method: wire.Ping, TID: uint32(i + 1), UA: wire.UserAgent, ID: id, IsClient: true}
		if find {
			m.Method = wire.Find
			m.Target = wire.HashKey(fmt.Sprint("target", i))
		}
		t0 := time.Now()
		c.WriteToUDPAddrPort(m.Marshal(), tos[i%len(tos)])
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if r, err := wire.Decode(buf[:n]); err == nil && r.Kind == wire.KindReply && r.TID == uint32(i+1) {
				out = append(out, time.Since(t0))
				break
			}
		}
		time.Sleep(2 * time.Millisecond) // stay under the per-IP rate limit
	}
	return out
}

func pct(d []time.Duration, p float64) string {
	if len(d) == 0 {
		return "-"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(len(s)-1, int(p*float64(len(s))))
	return fmt.Sprintf("%.2f", float64(s[i].Microseconds())/1000)
}

func medInt(a []int) string {
	if len(a) == 0 {
		return "-"
	}
	s := slices.Clone(a)
	slices.Sort(s)
	return strconv.Itoa(s[len(s)/2])
}

func report(rs []*result, ops int) {
	fmt.Printf("\nDHT benchmark: %d puts and gets of 200-byte values, %d listens; client = 2 Go nodes; loopback in a private netns\n", ops, ops/4)
	fmt.Printf("%-36s", "")
	for _, r := range rs {
		fmt.Printf("%26s", fmt.Sprintf("%s x%d", r.name, r.nodes))
	}
	fmt.Println()
	row := func(label string, f func(r *result) string) {
		fmt.Printf("%-36s", label)
		for _, r := range rs {
			fmt.Printf("%26s", f(r))
		}
		fmt.Println()
	}
	lat := func(d func(r *result) []time.Duration) func(r *result) string {
		return func(r *result) string {
			return fmt.Sprintf("%s / %s / %s", pct(d(r), 0.5), pct(d(r), 0.9), pct(d(r), 0.99))
		}
	}
	row("ping RTT ms (median / p90 / p99)", lat(func(r *result) []time.Duration { return r.pingRTT }))
	row("ping RTT, each node in turn", lat(func(r *result) []time.Duration { return r.coldPing }))
	row("find RTT, each node in turn", lat(func(r *result) []time.Duration { return r.coldFind }))
	row("request→answer ms in puts/gets", lat(func(r *result) []time.Duration { return r.reqRTT }))
	row("requests answered after > 100 ms", func(r *result) string {
		c := 0
		for _, d := range r.reqRTT {
			if d > 100*time.Millisecond {
				c++
			}
		}
		return fmt.Sprintf("%d/%d", c, len(r.reqRTT))
	})
	row("put ms (median / p90 / p99)", lat(func(r *result) []time.Duration { return r.put }))
	row("get ms (median / p90 / p99)", lat(func(r *result) []time.Duration { return r.get }))
	row("listen: put→event ms", lat(func(r *result) []time.Duration { return r.lstn }))
	row("gets that returned the value", func(r *result) string { return fmt.Sprintf("%d/%d", r.found, r.gets) })
	row("failed puts", func(r *result) string { return strconv.Itoa(r.failed) })
	row("messages per put (median)", func(r *result) string { return medInt(r.putMsgs) })
	row("messages per get (median)", func(r *result) string { return medInt(r.getMsgs) })
	row("idle network CPU, ms per s", func(r *result) string { return fmt.Sprintf("%.0f", float64(r.idleCPU.Microseconds())/1000) })
	row("network CPU per op, ms", func(r *result) string { return fmt.Sprintf("%.2f", float64(r.cpuPerOp.Microseconds())/1000) })
	row("  of which in the kernel", func(r *result) string { return fmt.Sprintf("%.2f", float64(r.sysPerOp.Microseconds())/1000) })
	row("page faults per op", func(r *result) string { return fmt.Sprintf("%.1f", r.faultsPerOp) })
	row("context switches per op", func(r *result) string { return fmt.Sprintf("%.0f", r.switchesPerOp) })
	row("private memory per node (RssAnon)", func(r *result) string { return fmt.Sprintf("%.1f MB", r.privPerNode/1024) })
	row("copies stored per put (mean)", func(r *result) string { return fmt.Sprintf("%.1f", float64(r.replicas)/float64(ops)) })
	row("private memory growth per copy", func(r *result) string { return fmt.Sprintf("%.0f B", r.perValue) })
}
