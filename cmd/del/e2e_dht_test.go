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

// TestCLIContacts: a contact is sent to by name, and a receiver accepts its
// contacts without --yes while refusing other devices by policy.
func TestCLIContacts(t *testing.T) {
	boot := startDHT(t)
	t.Setenv("DEL_BOOTSTRAP", boot)
	t.Setenv("DEL_INTERFACES", "lo")
	alice, bob, carol := newDevice(t, 0), newDevice(t, 1), newDevice(t, 2)
	for _, c := range [][]string{{"bob", bob.id.String()}} {
		if out, err := alice.cmd(append([]string{"contacts", "add"}, c...)...).CombinedOutput(); err != nil {
			t.Fatalf("contacts add: %v %s", err, out)
		}
	}
	if out, err := bob.cmd("contacts", "add", "alice", alice.id.String()).CombinedOutput(); err != nil {
		t.Fatalf("contacts add: %v %s", err, out)
	}
	out, _ := bob.cmd("contacts", "list").Output()
	if string(out) != "alice "+alice.id.String()+"\n" {
		t.Fatalf("contacts list: %q", out)
	}
	os.WriteFile(filepath.Join(bob.home, "config.toml"), []byte("[accept]\nothers = \"refuse\"\n"), 0o644)
	f := filepath.Join(t.TempDir(), "hello.txt")
	os.WriteFile(f, []byte("hi bob"), 0o644)

	// A stranger is refused by policy, with no terminal and no --yes.
	inbox := t.TempDir()
	r := bob.receiveArgs("--dir", inbox, "--quiet")
	out, err := carol.cmd("send", "--quiet", bob.id.String(), f).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not accept transfers from this device") {
		t.Fatalf("stranger: err %v, %s", err, out)
	}
	r.wait(t)
	// A contact is accepted without asking, and sent to by name.
	r = bob.receiveArgs("--dir", inbox, "--quiet")
	if out, err := alice.cmd("send", "--quiet", "bob", f).CombinedOutput(); err != nil {
		t.Fatalf("send to contact bob: %v\n%s", err, out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v %s", err, r.stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(inbox, "hello.txt")); string(got) != "hi bob" {
		t.Fatalf("got %q", got)
	}
}
