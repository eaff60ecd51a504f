package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/internal/testenv"
)

// startDelTurn runs `del turn` on loopback and returns its host:port.
func startDelTurn(t *testing.T) string {
	t.Helper()
	c := exec.Command(delBinary(t), "turn", "--listen", "127.0.0.1:0", "--user", "alice:secret123",
		"--realm", "del.test", "--allow-loopback-peers")
	return startServer(t, c, "turn listening ")
}

// startCoturn runs coturn's turnserver on loopback (the command from
// reference/facts.md) on a free port.
func startCoturn(t *testing.T) string {
	t.Helper()
	bin := testenv.NeedBinary(t, "turnserver")
	port := freePort(t)
	c := exec.Command(bin, "-n", "-v", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
		fmt.Sprintf("--listening-port=%d", port), "--lt-cred-mech", "--user=alice:secret123",
		"--realm=del.test", "--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli",
		"--min-port=49152", "--max-port=65535", "--log-file=stdout", "--simple-log")
	startServer(t, c, "")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("coturn did not start listening on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startServer starts c and, if prefix is set, waits for a stdout line with
// that prefix and returns what follows it.
func startServer(t *testing.T, c *exec.Cmd, prefix string) string {
	t.Helper()
	stdout, _ := c.StdoutPipe()
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	if prefix == "" {
		go io.Copy(io.Discard, stdout)
		return ""
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
				found <- v
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case v := <-found:
		return strings.TrimSpace(v)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not print %q: %s", c.Path, prefix, stderr.String())
		return ""
	}
}

func relayCase(t *testing.T, server string, senderRelayed bool) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	turnURL := "turn://alice:secret123@" + server
	data := randomData(t, 6<<20)
	src := filepath.Join(t.TempDir(), "through-relay.bin")
	os.WriteFile(src, data, 0o644)
	inbox := t.TempDir()

	// The receiver listens only on its relayed address.
	r := bob.receiveRelayed("--turn", turnURL, "--dir", inbox, "--yes", "--quiet")
	args := []string{"send", "--quiet", r.target, src}
	if senderRelayed {
		args = append(args, "--turn", turnURL, "--relay", "always")
	}
	out, err := alice.cmd(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	if senderRelayed != strings.Contains(string(out), "relayed link") {
		t.Fatalf("sender summary does not say how it went: %s", out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
	if !strings.Contains(r.stdout.String(), "over a relayed link (TURN "+server+")") {
		t.Fatalf("receiver summary does not say the link was relayed: %s", r.stdout)
	}
	got, _ := os.ReadFile(filepath.Join(inbox, "through-relay.bin"))
	if !bytes.Equal(got, data) {
		t.Fatal("file through the relay differs")
	}
}

// receiveRelayed is receive without --listen: the listening line carries
// the relayed address.
func (d *device) receiveRelayed(args ...string) *receiver {
	d.t.Helper()
	return d.receiveArgs(args...)
}

func TestCLIRelayDelTurn(t *testing.T) {
	server := startDelTurn(t)
	t.Run("receiver relayed", func(t *testing.T) { relayCase(t, server, false) })
	t.Run("both relayed", func(t *testing.T) { relayCase(t, server, true) })
}

func TestCLIRelayCoturn(t *testing.T) {
	server := startCoturn(t)
	t.Run("receiver relayed", func(t *testing.T) { relayCase(t, server, false) })
	t.Run("both relayed", func(t *testing.T) { relayCase(t, server, true) })
}
