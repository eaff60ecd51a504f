package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// startDHT runs `del dht run` on loopback and returns its address.
func startDHT(t *testing.T) string {
	t.Helper()
	c := exec.Command(delBinary(t), "dht", "run", "--listen", "127.0.0.1:0")
	v := startServer(t, c, "dht listening ")
	return strings.Fields(v)[0]
}

// TestCLISendByID: the receiver goes online through the DHT and prints only
// its id; the sender needs nothing else.
func TestCLISendByID(t *testing.T) {
	boot := startDHT(t)
	t.Setenv("DEL_BOOTSTRAP", boot)
	t.Setenv("DEL_INTERFACES", "lo")
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	data := randomData(t, 5<<20)
	src := filepath.Join(t.TempDir(), "by-id.bin")
	os.WriteFile(src, data, 0o644)
	inbox := t.TempDir()

	r := bob.receiveArgs("--dir", inbox, "--yes", "--quiet")
	if r.target != bob.id.String() {
		t.Fatalf("listening line %q, want the bare id %s", r.target, bob.id)
	}
	out, err := alice.cmd("send", "--quiet", bob.id.String(), src).CombinedOutput()
	if err != nil {
		t.Fatalf("send by id: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`over ICE \(host-(host|prflx) path; lookup \S+, signaling \S+, checks \S+, TLS \S+\)`).Match(out) {
		t.Fatalf("send summary lacks the path and phases: %s", out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
	got, _ := os.ReadFile(filepath.Join(inbox, "by-id.bin"))
	if !bytes.Equal(got, data) {
		t.Fatal("file sent by id differs")
	}
}

func TestCLISendByIDNeedsBootstrap(t *testing.T) {
	t.Setenv("DEL_BOOTSTRAP", "")
	alice := newDevice(t, 0)
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, []byte("x"), 0o644)
	out, err := alice.cmd("send", newDevice(t, 1).id.String(), f).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "DEL_BOOTSTRAP") {
		t.Fatalf("send by id without a bootstrap node: err %v, %s", err, out)
	}
}
