// Command delbench measures DEL against reference copies in one run, side by
// side: a plain TCP copy, a bare TLS 1.3 copy (both written for the
// benchmark, as two processes like del), del itself, and croc when present.
// Everything stays on loopback; croc runs inside its own network namespace.
//
//	delbench transfer [--size 1GiB] [--runs 3]
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: delbench transfer [--size N] [--runs N] | copy-recv | copy-send")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "transfer":
		err = benchTransfer(os.Args[2:])
	case "copy-recv":
		err = copyRecv(os.Args[2:])
	case "copy-send":
		err = copySend(os.Args[2:])
	default:
		err = fmt.Errorf("unknown benchmark %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "delbench:", err)
		os.Exit(1)
	}
}

// ---- reference copies: two processes, like del ----

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func tlsConfig() (*tls.Config, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		InsecureSkipVerify: true, ClientAuth: tls.RequireAnyClientCert}, nil
}

// copyRecv listens, prints "listening ADDR", receives one stream into a file.
func copyRecv(args []string) error {
	fs := flag.NewFlagSet("copy-recv", flag.ExitOnError)
	useTLS := fs.Bool("tls", false, "TLS 1.3")
	out := fs.String("out", "", "output file")
	fs.Parse(args)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	var r io.ReadWriter = c
	if *useTLS {
		cfg, err := tlsConfig()
		if err != nil {
			return err
		}
		r = tls.Server(c, cfg)
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if *useTLS {
		err = copyBlocks(f, r)
	} else {
		// Plain TCP: *os.File's ReadFrom splices socket to file in the
		// kernel, the fastest copy there is.
		_, err = io.Copy(f, r)
	}
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = r.Write([]byte("ok"))
	return err
}

func copySend(args []string) error {
	fs := flag.NewFlagSet("copy-send", flag.ExitOnError)
	useTLS := fs.Bool("tls", false, "TLS 1.3")
	addr := fs.String("addr", "", "receiver")
	fs.Parse(args)
	in, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	c, err := net.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	var conn io.ReadWriter = c
	closeWrite := c.(*net.TCPConn).CloseWrite
	if *useTLS {
		cfg, err := tlsConfig()
		if err != nil {
			return err
		}
		tc := tls.Client(c, cfg)
		conn, closeWrite = tc, tc.CloseWrite
	}
	if *useTLS {
		err = copyBlocks(conn, in)
	} else {
		_, err = io.Copy(conn, in) // sendfile
	}
	if err != nil {
		return err
	}
	closeWrite()
	ack := make([]byte, 2)
	_, err = io.ReadFull(conn, ack)
	return err
}

// copyBlocks copies r to w in whole 256 KiB blocks, as a careful copy
// does: a TLS connection returns one record (at most 16 KiB) per Read, and
// io.Copy would hand each record to the disk with its own write(2) (or,
// through *os.File's ReadFrom, in 32 KiB pieces). Whole blocks make the
// reference as cheap as it can be and its writes the size of DEL's.
func copyBlocks(w io.Writer, r io.Reader) error {
	buf := make([]byte, 256<<10)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// ---- the orchestrator ----

type sample struct {
	secs          float64
	sendRSS, recv int64   // peak RSS in KiB
	cpu           float64 // both sides
	sendCPU       float64
}

func benchTransfer(args []string) error {
	fs := flag.NewFlagSet("transfer", flag.ExitOnError)
	size := fs.Int64("size", 1<<30, "file size in bytes")
	runs := fs.Int("runs", 3, "runs per contender (median reported)")
	del := fs.String("del", "bin/del", "del binary")
	croc := fs.String("croc", "", "croc binary (skipped if empty or missing)")
	srcFlag := fs.String("src", "", "send this file instead of a new random one of --size bytes")
	only := fs.String("only", "", "comma-separated contenders to run (tcp, tls, del, croc); all by default")
	fs.Parse(args)
	self, _ := os.Executable()
	work, err := os.MkdirTemp("", "delbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src := *srcFlag
	if src == "" {
		src = filepath.Join(work, "payload.bin")
		if err := writeRandom(src, *size); err != nil {
			return err
		}
	} else if st, err := os.Stat(src); err != nil {
		return err
	} else {
		*size = st.Size()
	}
	homes, err := benchHomes(*del, work)
	if err != nil {
		return err
	}
	type contender struct {
		name string
		// run calls ready (the warm-up) once its receiver listens, right
		// before its sender starts.
		run func(out string, ready func() error) (sample, error)
	}
	cs := []contender{
		{"plain TCP copy", func(out string, ready func() error) (sample, error) {
			return runPair(self, []string{"copy-recv", "--out", out}, self, []string{"copy-send", "--addr", "%s", src}, nil, nil, ready)
		}},
		{"bare TLS 1.3 copy", func(out string, ready func() error) (sample, error) {
			return runPair(self, []string{"copy-recv", "--tls", "--out", out}, self, []string{"copy-send", "--tls", "--addr", "%s", src}, nil, nil, ready)
		}},
		{"del send/receive", func(out string, ready func() error) (sample, error) {
			return runPair(*del, []string{"receive", "--listen", "127.0.0.1:0", "--yes", "--quiet", "--dir", out}, *del, []string{"send", "--quiet", "%s", src},
				[]string{"DEL_HOME=" + homes[0]}, []string{"DEL_HOME=" + homes[1]}, ready)
		}},
	}
	if *croc != "" {
		if _, err := exec.LookPath(*croc); err == nil {
			cs = append(cs, contender{"croc --no-compress", func(out string, ready func() error) (sample, error) {
				if err := ready(); err != nil {
					return sample{}, err
				}
				return runCroc(*croc, src, out)
			}})
		} else {
			fmt.Printf("croc: %s not found, skipped\n", *croc)
		}
	}
	if *only != "" {
		keep := map[string]bool{}
		for _, k := range strings.Split(*only, ",") {
			keep[k] = true
		}
		short := map[string]string{"plain TCP copy": "tcp", "bare TLS 1.3 copy": "tls", "del send/receive": "del", "croc --no-compress": "croc"}
		var kept []contender
		for _, c := range cs {
			if keep[short[c.name]] {
				kept = append(kept, c)
				delete(keep, short[c.name])
			}
		}
		for k := range keep {
			return fmt.Errorf("--only: no contender %q here (tcp, tls, del, and croc with --croc)", k)
		}
		cs = kept
	}
	fmt.Printf("transfer of %s on loopback, %d runs each, medians (host: %s)\n", human(*size), *runs, hostInfo())
	// Contenders take turns, run by run, so that a change of load on the
	// machine affects all of them alike; ratios are also taken run by run.
	// Every run starts from the same state of memory: right after a file
	// as big as the transfer was written and deleted, by the harness. On a
	// VM whose freed memory goes back to the host (virtio-balloon free page
	// reporting, as here), writing into pages the host no longer backs costs
	// several times more, and which pages a run gets otherwise depends on
	// what ran before it (measured: the bare TLS copy 1.3 s after its own
	// run, 2.5 s after the plain TCP copy's). The warm-up comes once the
	// receiver listens, right before the sender starts: the pages it leaves
	// go back to the host within a second or two (the same copy: 1.12 s
	// started at once, 1.28 s half a second later, 1.57 s two seconds
	// later, medians of 5), so a contender whose receiver takes longer to
	// start must not meet a colder machine for it.
	scratch := filepath.Join(work, "warm-up")
	warm := func() error {
		err := writeZeros(scratch, *size)
		os.Remove(scratch)
		if err != nil {
			return err
		}
		// Each run starts with no dirty page cache: otherwise the
		// kernel's writeback of earlier runs' output (1 GiB each)
		// lands on whichever contender runs next.
		syscall.Sync()
		return nil
	}
	all := make([][]sample, len(cs))
	for i := 0; i < *runs; i++ {
		// Each round starts with the next contender, so that each one
		// follows each other one equally often: what a run leaves behind
		// (freed page cache, writeback) weighs on whichever runs next.
		for k := range cs {
			ci := (i + k) % len(cs)
			c := cs[ci]
			out := filepath.Join(work, fmt.Sprintf("out-%d", i))
			os.RemoveAll(out)
			s, err := c.run(out, warm)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			if err := sameSize(src, out); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			all[ci] = append(all[ci], s)
			if os.Getenv("DELBENCH_VERBOSE") != "" {
				fmt.Printf("  run %d %-20s %6.2f s  cpu %5.2f s (sender %.2f)\n", i+1, c.name, s.secs, s.cpu, s.sendCPU)
			}
			os.RemoveAll(out)
		}
	}
	index := map[string]int{}
	for ci, c := range cs {
		index[c.name] = ci
		ss := append([]sample(nil), all[ci]...)
		sort.Slice(ss, func(a, b int) bool { return ss[a].secs < ss[b].secs })
		m := ss[len(ss)/2]
		rss := fmt.Sprintf("(sender %.2f)  peak RSS sender %4d MiB receiver %4d MiB", m.sendCPU, m.sendRSS/1024, m.recv/1024)
		if m.sendRSS == 0 {
			rss = "peak RSS not measured"
		}
		fmt.Printf("%-20s %8.1f MB/s  %6.2f s  cpu %5.2f s  %s\n", c.name, float64(*size)/m.secs/1e6, m.secs, m.cpu, rss)
	}
	// runRatio is the median over runs of ref's time / name's time, each
	// pair measured back to back.
	runRatio := func(name, ref string) (float64, bool) {
		a, okA := index[name]
		b, okB := index[ref]
		if !okA || !okB {
			return 0, false
		}
		var rs []float64
		for i := range all[a] {
			rs = append(rs, all[b][i].secs/all[a][i].secs)
		}
		sort.Float64s(rs)
		return rs[len(rs)/2], true
	}
	for _, pair := range [][2]string{{"del send/receive", "bare TLS 1.3 copy"}, {"del send/receive", "plain TCP copy"}, {"del send/receive", "croc --no-compress"}} {
		if r, ok := runRatio(pair[0], pair[1]); ok {
			fmt.Printf("run-by-run median ratio %s / %s: %5.2fx (throughput)\n", pair[0], pair[1], r)
		}
	}
	return nil
}

// runPair starts the receiver, waits for its "listening X" line, calls
// ready, runs the sender with %s replaced by X, and waits for both.
func runPair(rbin string, rargs []string, sbin string, sargs []string, renv, senv []string, ready func() error) (sample, error) {
	r := exec.Command(rbin, rargs...)
	r.Env = append(os.Environ(), renv...)
	stdout, _ := r.StdoutPipe()
	var rerr strings.Builder
	r.Stderr = &rerr
	if err := r.Start(); err != nil {
		return sample{}, err
	}
	defer r.Process.Kill()
	sc := bufio.NewScanner(stdout)
	addr := ""
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "listening" {
			addr = f[1]
			break
		}
	}
	if addr == "" {
		r.Wait()
		return sample{}, fmt.Errorf("receiver did not start: %s", rerr.String())
	}
	go io.Copy(io.Discard, stdout)
	if err := ready(); err != nil {
		return sample{}, err
	}
	args := make([]string, len(sargs))
	for i, a := range sargs {
		args[i] = strings.ReplaceAll(a, "%s", addr)
	}
	s := exec.Command(sbin, args...)
	s.Env = append(os.Environ(), senv...)
	t0 := time.Now()
	sout, err := s.CombinedOutput()
	if err != nil {
		return sample{}, fmt.Errorf("sender: %v: %s", err, sout)
	}
	if err := r.Wait(); err != nil {
		return sample{}, fmt.Errorf("receiver: %v: %s", err, rerr.String())
	}
	secs := time.Since(t0).Seconds()
	return sample{secs: secs, sendRSS: maxRSS(s.ProcessState), recv: maxRSS(r.ProcessState),
		cpu: cpuSecs(s.ProcessState) + cpuSecs(r.ProcessState), sendCPU: cpuSecs(s.ProcessState)}, nil
}

func maxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}

func cpuSecs(ps *os.ProcessState) float64 { return (ps.UserTime() + ps.SystemTime()).Seconds() }

// runCroc runs croc's relay, sender and receiver inside a new network
// namespace that has only loopback, so croc cannot reach anything else.
func runCroc(croc, src, out string) (sample, error) {
	croc, err := filepath.Abs(croc)
	if err != nil {
		return sample{}, err
	}
	logs, err := os.MkdirTemp("", "delbench-croc-")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(logs)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return sample{}, err
	}
	script := fmt.Sprintf(`set -e
ip link set lo up
cd %[3]q
%[1]s relay --host 127.0.0.1 --ports 9009,9010,9011,9012,9013 >%[4]q/relay.log 2>&1 &
relay=$!
sleep 0.5
export CROC_SECRET=del-bench-code-4821
%[1]s --relay 127.0.0.1:9009 --no-compress --yes send --no-local %[2]q >%[4]q/send.log 2>&1 &
snd=$!
# The receiver starts once the sender is in its room (after hashing the
# file): croc's time excludes its sender's set-up, which favours croc.
for i in $(seq 600); do grep -q "On the other computer" %[4]q/send.log && break; sleep 0.05; done
start=$(date +%%s.%%N)
timeout 600 %[1]s --relay 127.0.0.1:9009 --yes --overwrite >%[4]q/recv.log 2>&1
wait $snd
end=$(date +%%s.%%N)
kill $relay || true
echo "start $start"
echo "end $end"
`, croc, src, out, logs)
	cmd := exec.Command("unshare", "-n", "bash", "-c", script)
	b, err := cmd.CombinedOutput()
	if err != nil {
		var tails []string
		for _, f := range []string{"relay.log", "send.log", "recv.log"} {
			t, _ := os.ReadFile(filepath.Join(logs, f))
			if len(t) > 600 {
				t = t[len(t)-600:]
			}
			tails = append(tails, f+": "+string(t))
		}
		return sample{}, fmt.Errorf("croc: %v: %s\n%s", err, b, strings.Join(tails, "\n"))
	}
	var start, end float64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "start "); ok {
			fmt.Sscan(v, &start)
		}
		if v, ok := strings.CutPrefix(l, "end "); ok {
			fmt.Sscan(v, &end)
		}
	}
	secs := end - start
	if secs <= 0 {
		return sample{}, fmt.Errorf("croc: no timing in %q", b)
	}
	return sample{secs: secs, cpu: cpuSecs(cmd.ProcessState)}, nil
}

func benchHomes(del, work string) ([]string, error) {
	var homes []string
	for _, dev := range []string{"recv", "send"} {
		home := filepath.Join(work, dev)
		cmd := exec.Command(del, "id")
		cmd.Env = append(os.Environ(), "DEL_HOME="+home)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("del id: %v: %s", err, out)
		}
		homes = append(homes, home)
	}
	return homes, nil
}

// writeZeros fills path with n zero bytes in 1 MiB writes (into the page
// cache; it is deleted before it reaches the disk).
func writeZeros(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return err
		}
		n -= k
	}
	return f.Close()
}

func writeRandom(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sameSize checks that out (a file, or a folder holding one file) has src's size.
func sameSize(src, out string) error {
	a, err := os.Stat(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	if st.IsDir() {
		st, err = os.Stat(filepath.Join(out, filepath.Base(src)))
		if err != nil {
			return err
		}
	}
	if st.Size() != a.Size() {
		return fmt.Errorf("received %d bytes, want %d", st.Size(), a.Size())
	}
	return nil
}

func human(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func hostInfo() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
			break
		}
	}
	cores := strings.Count(string(b), "processor\t:")
	return fmt.Sprintf("%d cores, %s", cores, model)
}
