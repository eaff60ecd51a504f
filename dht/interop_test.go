package dht

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/internal/testenv"
	"github.com/del-share/del/internal/testkeys"
)

// dhtnode 2.4 binds every interface, so the interop tests run in a private
// network namespace with only lo up: the test binary re-executes itself
// under `unshare -n` (`unshare -r -n` when not root), and nothing can leave
// the machine.
const netnsEnv = "DEL_DHT_NETNS"

// inNetns returns true when the test already runs in its own namespace;
// otherwise it runs the test there and returns false.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(netnsEnv) != "" {
		return true
	}
	testenv.NeedBinary(t, "dhtnode")
	testenv.NeedBinary(t, "unshare")
	testenv.NeedBinary(t, "ip")
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		testenv.Missing(t, "/usr/bin/python3 is not installed")
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import opendht").CombinedOutput(); err != nil {
		testenv.Missing(t, "python3-opendht is not installed: %s", out)
	}
	// Root can make a network namespace; anyone else makes a user namespace
	// with it (unshare -r), where they are root enough to bring lo up.
	ns := []string{"-n"}
	if os.Geteuid() != 0 {
		ns = []string{"-r", "-n"}
	}
	if out, err := exec.Command("unshare", append(ns, "sh", "-c", "ip link set lo up")...).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot create a network namespace (unshare %v): %v %s", ns, err, out)
	}
	args := append(ns, "sh", "-c", `ip link set lo up && exec "$0" "$@"`, os.Args[0],
		"-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("interop test failed in its namespace: %v", err)
	}
	return false
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startDhtnode runs `dhtnode -s` (or interactive with -i) on port.
type dhtnodeProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	port  int
}

func startDhtnode(t *testing.T, port int, bootstrap string, interactive bool) *dhtnodeProc {
	t.Helper()
	args := []string{"-p", fmt.Sprint(port)}
	if interactive {
		args = append(args, "-i")
	} else {
		args = append(args, "-s")
	}
	if bootstrap != "" {
		args = append(args, "-b", bootstrap)
	}
	cmd := exec.Command("dhtnode", args...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &dhtnodeProc{cmd: cmd, stdin: stdin, lines: make(chan string, 1000), port: port}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return p
}

// expect reads output lines until one contains want.
func (p *dhtnodeProc) expect(t *testing.T, want string, d time.Duration) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("dhtnode exited before printing %q", want)
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-timer.C:
			t.Fatalf("dhtnode did not print %q within %v", want, d)
		}
	}
}

// pyClient drives testdata/pydht.py.
type pyClient struct {
	stdin  io.WriteCloser
	mu     sync.Mutex
	n      int
	waits  map[int]chan map[string]any
	events chan map[string]any
	info   map[string]any
}

func startPython(t *testing.T, bootstrap string, bits int) *pyClient {
	t.Helper()
	script, _ := filepath.Abs("testdata/pydht.py")
	cmd := exec.Command("/usr/bin/python3", script, bootstrap, fmt.Sprint(bits))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &pyClient{stdin: stdin, waits: map[int]chan map[string]any{}, events: make(chan map[string]any, 100)}
	ready := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			switch {
			case m["ready"] != nil:
				ready <- m
			case m["event"] != nil:
				c.events <- m
			case m["re"] != nil:
				c.mu.Lock()
				ch := c.waits[int(m["re"].(float64))]
				c.mu.Unlock()
				if ch != nil {
					ch <- m
				}
			}
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	select {
	case c.info = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("python3-opendht client did not start")
	}
	return c
}

func (c *pyClient) call(t *testing.T, cmd map[string]any) map[string]any {
	t.Helper()
	c.mu.Lock()
	c.n++
	n := c.n
	ch := make(chan map[string]any, 1)
	c.waits[n] = ch
	c.mu.Unlock()
	cmd["n"] = n
	b, _ := json.Marshal(cmd)
	if _, err := c.stdin.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("python: no answer to %v", cmd)
		return nil
	}
}

func pyValues(m map[string]any) []map[string]any {
	var out []map[string]any
	vs, _ := m["values"].([]any)
	for _, v := range vs {
		out = append(out, v.(map[string]any))
	}
	return out
}

// TestInteropOpenDHT runs a network of two dhtnode processes, a
// python3-opendht client and Go nodes, and checks every direction.
func TestInteropOpenDHT(t *testing.T) {
	if !inNetns(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	portA := freeUDPPort(t)
	startDhtnode(t, portA, "", false)
	bootA := fmt.Sprintf("127.0.0.1:%d", portA)
	addrA := netip.MustParseAddrPort(bootA)

	var gos []*UDPNode
	for i := 0; i < 3; i++ {
		cfg := Config{}
		if i < 2 {
			cfg.Identity = testkeys.Identity(t, i)
		}
		u, err := ListenUDP(cfg, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		u.Bootstrap(addrA)
		gos = append(gos, u)
	}
	waitFor(t, 20*time.Second, "Go nodes joined dhtnode", func() bool {
		for _, u := range gos {
			if u.Stats().Nodes < 1 {
				return false
			}
		}
		return true
	})
	portB := freeUDPPort(t)
	nodeB := startDhtnode(t, portB, bootA, true)
	pkLine := nodeB.expect(t, "Public key ID", 60*time.Second)
	pkB, err := wire.ParseID(strings.TrimSpace(pkLine[strings.LastIndex(pkLine, " ")+1:]))
	if err != nil {
		t.Fatalf("dhtnode key id line %q: %v", pkLine, err)
	}
	py := startPython(t, bootA, 2048)
	pyPK, err := wire.ParseID(py.info["pk_id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "Go nodes see more of the network", func() bool {
		for _, u := range gos {
			if u.Stats().Nodes < 2 {
				return false
			}
		}
		return true
	})

	// Start the expiry check early: an IceCandidates value (type 5) lives 1 min.
	expKey := wire.HashKey("del-interop-expiry")
	expCtx, expCancel := context.WithCancel(ctx)
	defer expCancel()
	expEvents, err := gos[2].Listen(expCtx, expKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	expVal := &wire.Value{Type: TypeIceCandidates, Data: []byte("candidate 1")}
	if _, err := gos[1].Put(ctx, expKey, expVal); err != nil {
		t.Fatalf("put expiring value: %v", err)
	}

	t.Run("GoPutPythonGetListen", func(t *testing.T) {
		key := wire.HashKey("del-interop-1")
		if m := py.call(t, map[string]any{"op": "listen", "key": key.String()}); m["ok"] != true {
			t.Fatalf("python listen: %v", m)
		}
		v := &wire.Value{Data: []byte("42 ug/m3"), UserType: "text/plain"}
		if _, err := gos[0].Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
		vals := pyValues(py.call(t, map[string]any{"op": "get", "key": key.String()}))
		if len(vals) != 1 || vals[0]["data"] != hex.EncodeToString(v.Data) || vals[0]["id"] != fmt.Sprint(v.ID) || vals[0]["utype"] != "text/plain" {
			t.Fatalf("python got %v", vals)
		}
		select {
		case ev := <-py.events:
			if ev["data"] != hex.EncodeToString(v.Data) || ev["expired"] != false {
				t.Fatalf("python heard %v", ev)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("python listener heard nothing")
		}
	})

	t.Run("PythonPutGoGetListen", func(t *testing.T) {
		key := wire.HashKey("del-interop-2")
		lctx, lcancel := context.WithCancel(ctx)
		defer lcancel()
		events, err := gos[1].Listen(lctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		m := py.call(t, map[string]any{"op": "put", "key": key.String(), "data": hex.EncodeToString([]byte("17 ppm"))})
		if m["ok"] != true {
			t.Fatalf("python put: %v", m)
		}
		r, err := gos[2].Get(ctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Values) != 1 || string(r.Values[0].Data) != "17 ppm" || fmt.Sprint(r.Values[0].ID) != m["id"] {
			t.Fatalf("Go got %+v", r.Values)
		}
		select {
		case ev := <-events:
			if string(ev.Value.Data) != "17 ppm" || ev.Expired {
				t.Fatalf("Go heard %+v", ev)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Go listener heard nothing")
		}
	})

	t.Run("Fragmented3KB", func(t *testing.T) {
		key := wire.HashKey("del-interop-big")
		// Both sides listen first: the values reach them in fragmented
		// update pushes.
		lctx, lcancel := context.WithCancel(ctx)
		defer lcancel()
		goEvents, err := gos[1].Listen(lctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m := py.call(t, map[string]any{"op": "listen", "key": key.String()}); m["ok"] != true {
			t.Fatalf("python listen: %v", m)
		}
		goData := bytes.Repeat([]byte("go-3k-"), 500)
		if _, err := gos[0].Put(ctx, key, &wire.Value{Data: goData}); err != nil {
			t.Fatal(err)
		}
		pyData := bytes.Repeat([]byte("py-3k-"), 500)
		if m := py.call(t, map[string]any{"op": "put", "key": key.String(), "data": hex.EncodeToString(pyData)}); m["ok"] != true {
			t.Fatalf("python put: %v", m)
		}
		found := map[string]bool{}
		for _, v := range pyValues(py.call(t, map[string]any{"op": "get", "key": key.String()})) {
			found[v["data"].(string)] = true
		}
		if !found[hex.EncodeToString(goData)] {
			t.Errorf("python did not get the 3 KB Go value (got %d values)", len(found))
		}
		r, err := gos[2].Get(ctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, v := range r.Values {
			if bytes.Equal(v.Data, pyData) || bytes.Equal(v.Data, goData) {
				got++
			}
		}
		if got != 2 {
			t.Errorf("Go got %d of the 2 big values", got)
		}
		heard := map[string]bool{}
		for len(heard) < 2 {
			select {
			case ev := <-goEvents:
				heard[string(ev.Value.Data[:6])] = bytes.Equal(ev.Value.Data, goData) || bytes.Equal(ev.Value.Data, pyData)
			case <-time.After(20 * time.Second):
				t.Fatalf("Go listener heard %v", heard)
			}
		}
		pyHeard := map[string]bool{}
		for len(pyHeard) < 2 {
			select {
			case ev := <-py.events:
				if ev["key"] == key.String() {
					pyHeard[ev["data"].(string)] = true
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("python listener heard %d values", len(pyHeard))
			}
		}
		if !pyHeard[hex.EncodeToString(goData)] || !pyHeard[hex.EncodeToString(pyData)] || !heard["go-3k-"] || !heard["py-3k-"] {
			t.Fatalf("listeners heard wrong values: Go %v", heard)
		}
	})

	t.Run("SignedGoToPython", func(t *testing.T) {
		key := wire.HashKey("del-interop-signed")
		v := &wire.Value{Data: []byte("signed by go"), UserType: "text/plain"}
		if _, err := gos[0].PutSigned(ctx, key, v); err != nil {
			t.Fatal(err)
		}
		vals := pyValues(py.call(t, map[string]any{"op": "get", "key": key.String()}))
		if len(vals) != 1 || !strings.Contains(vals[0]["str"].(string), "signed") || vals[0]["owner"] != gos[0].cfg.Identity.ID.String() {
			t.Fatalf("python got %v", vals)
		}
		// A value whose signature does not match is dropped by OpenDHT.
		bad := &wire.Value{Data: []byte("forged")}
		if err := Sign(bad, gos[0].cfg.Identity); err != nil {
			t.Fatal(err)
		}
		bad.Data = []byte("forged!")
		if _, err := gos[0].Put(ctx, key, bad); err != nil {
			t.Logf("put of forged value: %v", err)
		}
		vals = pyValues(py.call(t, map[string]any{"op": "get", "key": key.String()}))
		if len(vals) != 1 {
			t.Fatalf("python got %d values, the forged one must be dropped: %v", len(vals), vals)
		}
	})

	t.Run("SignedOpenDHTToGo", func(t *testing.T) {
		key := wire.HashKey("del-interop-signed-2")
		fmt.Fprintf(nodeB.stdin, "s %s signed-by-dhtnode\n", key)
		nodeB.expect(t, "Put signed: success", 30*time.Second)
		r, err := gos[1].Get(ctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Values) != 1 || !r.Values[0].Signed() || string(r.Values[0].Data) != "signed-by-dhtnode" {
			t.Fatalf("Go got %+v", r.Values)
		}
		if err := Verify(r.Values[0]); err != nil || OwnerID(r.Values[0]) != pkB {
			t.Fatalf("signature %v, owner %s want %s", err, OwnerID(r.Values[0]), pkB)
		}
	})

	t.Run("EncryptedGoToPython", func(t *testing.T) {
		key := wire.HashKey("del-interop-enc")
		// python3-opendht publishes its certificate in the background at start.
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := gos[0].FindCertificate(ctx, pyPK)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				r, gerr := gos[0].Get(ctx, pyPK, nil)
				t.Logf("Go get at %s: %v, %+v", pyPK, gerr, r)
				if r != nil {
					for _, v := range r.Values {
						_, perr := ParseCertificateValue(v)
						t.Logf("value %d type %d: %v", v.ID, v.Type, perr)
					}
				}
				t.Logf("python get at its own key: %v", py.call(t, map[string]any{"op": "get", "key": pyPK.String()}))
				t.Fatalf("python's certificate is not on the DHT: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		v := &wire.Value{Data: []byte("secret for python"), UserType: "text/plain"}
		if _, err := gos[0].PutEncrypted(ctx, key, pyPK, v); err != nil {
			t.Fatal(err)
		}
		vals := pyValues(py.call(t, map[string]any{"op": "get", "key": key.String()}))
		if len(vals) != 1 || vals[0]["data"] != hex.EncodeToString([]byte("secret for python")) || vals[0]["owner"] != gos[0].cfg.Identity.ID.String() {
			t.Fatalf("python got %v", vals)
		}
	})

	t.Run("EncryptedOpenDHTToGo", func(t *testing.T) {
		if _, err := gos[1].PublishCertificate(ctx); err != nil {
			t.Fatal(err)
		}
		key := wire.HashKey("del-interop-enc-2")
		fmt.Fprintf(nodeB.stdin, "e %s %s secret-for-go\n", key, gos[1].cfg.Identity.ID)
		nodeB.expect(t, "Put encrypted: success", 30*time.Second)
		r, err := gos[1].Get(ctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Values) != 1 || string(r.Values[0].Data) != "secret-for-go" || OwnerID(r.Values[0]) != pkB {
			t.Fatalf("Go got %+v", r.Values)
		}
		// Another Go identity cannot read it and gets nothing.
		r, err = gos[0].Get(ctx, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Values) != 0 {
			t.Fatalf("a value for someone else was returned: %+v", r.Values)
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		u, err := ListenUDP(Config{}, "[::1]:0")
		if err != nil {
			testenv.Missing(t, "IPv6 loopback: %v", err)
		}
		defer u.Close()
		u.Bootstrap(netip.AddrPortFrom(netip.IPv6Loopback(), uint16(portA)))
		if err := u.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		key := wire.HashKey("del-interop-v6")
		if _, err := u.Put(ctx, key, &wire.Value{Data: []byte("via ::1")}); err != nil {
			t.Fatal(err)
		}
		// dhtnode stored it over IPv6; a Go node on IPv4 finds it there.
		r, err := gos[2].Get(ctx, key, nil)
		if err != nil || len(r.Values) != 1 || string(r.Values[0].Data) != "via ::1" {
			t.Fatalf("IPv4 get of a value put over IPv6: %v %+v", err, r)
		}
	})

	t.Run("GoListenerSeesExpiry", func(t *testing.T) {
		var gotValue bool
		for {
			select {
			case ev, ok := <-expEvents:
				if !ok {
					t.Fatal("listen closed")
				}
				if ev.Value.ID != expVal.ID {
					continue
				}
				if !ev.Expired {
					gotValue = true
					continue
				}
				if !gotValue {
					t.Fatal("expired before it was heard")
				}
				return
			case <-time.After(90 * time.Second):
				t.Fatalf("no expiry heard (value heard: %v)", gotValue)
			}
		}
	})
}
