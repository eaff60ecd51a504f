package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/internal/testkeys"
)

// dhtRun starts `del dht run` and returns its HOST:PORT from the contract
// line "dht listening <host>:<port> id <node-id>".
func dhtRun(t *testing.T, home string, args ...string) string {
	t.Helper()
	c := exec.Command(delBinary(t), append([]string{"dht", "run", "--listen", "127.0.0.1:0"}, args...)...)
	c.Env = append(os.Environ(), "DEL_HOME="+home)
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Process.Signal(os.Interrupt)
		c.Wait()
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		m := regexp.MustCompile(`^dht listening (127\.0\.0\.1:\d+) id ([0-9a-f]{40})$`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unexpected first line %q", l)
		}
		return m[1]
	case <-time.After(10 * time.Second):
		t.Fatal("del dht run printed nothing")
		return ""
	}
}

func delDHT(t *testing.T, home string, args ...string) string {
	t.Helper()
	c := exec.Command(delBinary(t), append([]string{"dht"}, args...)...)
	c.Env = append(os.Environ(), "DEL_HOME="+home)
	start := time.Now()
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("del dht %v: %v\n%s", args, err, out)
	}
	t.Logf("del dht %v: %v", args[:2], time.Since(start))
	return string(out)
}

func TestDHTCommands(t *testing.T) {
	root := t.TempDir()
	alice, bob, none := filepath.Join(root, "alice"), filepath.Join(root, "bob"), filepath.Join(root, "none")
	aliceID := testkeys.Home(t, alice, 0)
	bobID := testkeys.Home(t, bob, 1)

	boot := dhtRun(t, none)
	dhtRun(t, none, "--bootstrap", boot)
	dhtRun(t, bob, "--bootstrap", boot) // publishes bob's certificate

	// listen prints values as they arrive.
	lc := exec.Command(delBinary(t), "dht", "listen", "pollution_level", "--bootstrap", boot)
	lc.Env = append(os.Environ(), "DEL_HOME="+none)
	lout, _ := lc.StdoutPipe()
	if err := lc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { lc.Process.Kill(); lc.Wait() }()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(lout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case l := <-lines:
		if !strings.HasPrefix(l, "listening c6c7e2b17b27367a841b2795a76c49b3fb81590e") {
			t.Fatalf("listen said %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("listen did not start")
	}

	out := delDHT(t, none, "put", "pollution_level", "42 ug/m3", "--bootstrap", boot)
	if !strings.Contains(out, "at c6c7e2b17b27367a841b2795a76c49b3fb81590e on ") {
		t.Fatalf("put said %q", out)
	}
	if out := delDHT(t, none, "get", "pollution_level", "--bootstrap", boot); !strings.HasSuffix(strings.TrimSpace(out), " 42 ug/m3") {
		t.Fatalf("get said %q", out)
	}
	select {
	case l := <-lines:
		if !strings.HasPrefix(l, "value ") || !strings.HasSuffix(l, " 42 ug/m3") {
			t.Fatalf("listen printed %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("listen printed no value")
	}

	// Signed, and encrypted for bob (whose certificate his node published).
	delDHT(t, alice, "put", "signed-key", "from alice", "--sign", "--bootstrap", boot)
	if out := delDHT(t, none, "get", "signed-key", "--bootstrap", boot); !strings.Contains(out, "signed-by "+aliceID.ID.String()+" from alice") {
		t.Fatalf("signed get said %q", out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := exec.Command(delBinary(t), "dht", "put", "secret-key", "for bob", "--encrypt-to", bobID.ID.String(), "--bootstrap", boot)
		c.Env = append(os.Environ(), "DEL_HOME="+alice)
		out, err := c.CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("encrypted put: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond) // bob's certificate is being published
	}
	if out := delDHT(t, bob, "get", "secret-key", "--bootstrap", boot); !strings.Contains(out, "signed-by "+aliceID.ID.String()+" encrypted for bob") {
		t.Fatalf("bob's get said %q", out)
	}
	if out := delDHT(t, none, "get", "secret-key", "--bootstrap", boot); strings.TrimSpace(out) != "" {
		t.Fatalf("a stranger read %q", out)
	}
}
