package netlab

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestHelperProcess is not a test: the lab re-executes the test binary
// inside a namespace with NETLAB_HELPER set.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("NETLAB_HELPER") {
	case "listen":
		ln, err := net.Listen("tcp4", os.Getenv("NETLAB_ADDR"))
		if err != nil {
			fmt.Println("err", err)
			os.Exit(1)
		}
		fmt.Println("listening", ln.Addr())
		c, err := ln.Accept()
		if err != nil {
			fmt.Println("err", err)
			os.Exit(1)
		}
		fmt.Println("peer", c.RemoteAddr())
		c.Close()
		os.Exit(0)
	case "dial":
		d := net.Dialer{Timeout: 700 * time.Millisecond}
		if lp := os.Getenv("NETLAB_LOCAL"); lp != "" {
			a, _ := net.ResolveTCPAddr("tcp4", lp)
			d.LocalAddr = a
		}
		c, err := d.Dial("tcp4", os.Getenv("NETLAB_ADDR"))
		if err != nil {
			fmt.Println("err", err)
			os.Exit(0)
		}
		fmt.Println("ok", c.LocalAddr())
		c.Close()
		os.Exit(0)
	}
}

// helper starts the test binary in ns with the given role; it returns a
// line reader over its stdout and a wait function.
func helper(t *testing.T, ns *NS, env ...string) (next func() string, wait func()) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next = func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("helper exited early")
			}
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("helper silent for 10 s")
		}
		return ""
	}
	wait = func() {
		for range lines {
		}
		_ = cmd.Wait()
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		wait()
	})
	return next, wait
}

func TestNATMapping(t *testing.T) {
	for _, kind := range []NATKind{NATDrop, NATReset, NATSymmetric} {
		t.Run(kind.String(), func(t *testing.T) {
			lab := New(t)
			r := lab.AddNAT("nat", 2, 1, kind)
			h := r.AddHost("dev", 2)
			next, _ := helper(t, lab.Public(), "NETLAB_HELPER=listen", "NETLAB_ADDR=198.51.100.1:0")
			ln := strings.TrimPrefix(next(), "listening ")
			dnext, _ := helper(t, h, "NETLAB_HELPER=dial", "NETLAB_ADDR="+ln, "NETLAB_LOCAL=10.1.0.2:40123")
			if l := dnext(); !strings.HasPrefix(l, "ok ") {
				t.Fatalf("dial out through the NAT: %s\n%s", l, r.Nft())
			}
			peer := netip.MustParseAddrPort(strings.TrimPrefix(next(), "peer "))
			if peer.Addr() != r.Addr {
				t.Fatalf("server saw %s, want the NAT's address %s", peer, r.Addr)
			}
			preserved := peer.Port() == 40123
			if preserved != (kind != NATSymmetric) {
				t.Errorf("%s: mapped port %d (source 40123)", kind, peer.Port())
			}
		})
	}
}

func TestNATUnsolicited(t *testing.T) {
	lab := New(t)
	drop := lab.AddNAT("drop", 2, 1, NATDrop)
	rst := lab.AddNAT("rst", 3, 2, NATReset)
	pub := lab.AddPublicHost("pubhost", 10)
	for _, r := range []*Router{drop, rst} {
		start := time.Now()
		next, _ := helper(t, pub, "NETLAB_HELPER=dial", "NETLAB_ADDR="+r.Addr.String()+":40000")
		l := next()
		el := time.Since(start)
		switch r.Kind {
		case NATDrop:
			if !strings.Contains(l, "timeout") {
				t.Errorf("drop NAT: %s (after %v), want a timeout", l, el)
			}
		case NATReset:
			if !strings.Contains(l, "refused") {
				t.Errorf("RST NAT: %s, want connection refused", l)
			}
		}
	}
}

func TestCleanupRemovesNamespaces(t *testing.T) {
	var names []string
	t.Run("lab", func(t *testing.T) {
		lab := New(t)
		lab.AddNAT("nat", 2, 1, NATDrop).AddHost("dev", 2)
		names = lab.Namespaces()
	})
	out, err := ipNetnsList()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.Contains(out, n) {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

func ipNetnsList() (string, error) {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	return string(out), err
}
