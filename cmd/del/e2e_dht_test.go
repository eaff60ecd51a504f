package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// onlineEnv starts a DHT bootstrap node on loopback and points this test's
// del processes at it, gathering ICE candidates on loopback only.
func onlineEnv(t *testing.T) {
	t.Helper()
	t.Setenv("DEL_BOOTSTRAP", startDHT(t))
	t.Setenv("DEL_INTERFACES", "lo")
}

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
	onlineEnv(t)
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
	onlineEnv(t)
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

// codeSender starts `del send PATH` (no peer) and returns its process and
// the printed code phrase.
func codeSender(t *testing.T, d *device, path string) (<-chan error, *bytes.Buffer, *bytes.Buffer, string) {
	t.Helper()
	c := d.cmd("send", "--quiet", path)
	var out, errOut bytes.Buffer // apart: two writers on one Buffer race
	pr, pw := io.Pipe()
	c.Stdout = io.MultiWriter(&out, pw)
	c.Stderr = &errOut
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill() })
	codes := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "code "); ok {
				codes <- v
			}
		}
	}()
	select {
	case code := <-codes:
		if !regexp.MustCompile(`^\d{1,4}(-[a-z]+){3}$`).MatchString(code) {
			t.Fatalf("code %q is not <number>-<word>-<word>-<word>", code)
		}
		done := make(chan error, 1)
		go func() { err := c.Wait(); pw.Close(); done <- err }()
		return done, &out, &errOut, code
	case <-time.After(20 * time.Second):
		t.Fatalf("no code printed: %s", errOut.String())
		return nil, nil, nil, ""
	}
}

func TestCLICodePhrase(t *testing.T) {
	onlineEnv(t)
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	f := filepath.Join(t.TempDir(), "one-off.txt")
	os.WriteFile(f, []byte("no ids exchanged"), 0o644)

	send, sendOut, sendErr, code := codeSender(t, alice, f)
	inbox := t.TempDir()
	out, err := bob.cmd("receive", "--quiet", "--dir", inbox, code).CombinedOutput()
	if err != nil {
		t.Fatalf("receive with the code: %v\n%s", err, out)
	}
	if err := waitDone(send); err != nil {
		t.Fatalf("send: %v\n%s%s", err, sendOut, sendErr)
	}
	if got, _ := os.ReadFile(filepath.Join(inbox, "one-off.txt")); string(got) != "no ids exchanged" {
		t.Fatalf("got %q", got)
	}
	if !strings.Contains(sendOut.String(), "to "+bob.id.String()) || !strings.Contains(string(out), "from "+alice.id.String()) {
		t.Fatalf("summaries do not name the authenticated peers:\n%s\n%s", sendOut, out)
	}
}

func TestCLIWrongCodeFailsBothSides(t *testing.T) {
	onlineEnv(t)
	alice, mallory := newDevice(t, 0), newDevice(t, 2)
	f := filepath.Join(t.TempDir(), "secret.txt")
	os.WriteFile(f, []byte("not for guessers"), 0o644)
	send, sendOut, sendErr, code := codeSender(t, alice, f)
	// Same number (so the same DHT key), wrong words.
	parts := strings.SplitN(code, "-", 2)
	wrong := parts[0] + "-zebra-zebra-zebra"
	inbox := t.TempDir()
	out, err := mallory.cmd("receive", "--dir", inbox, wrong).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "wrong code") {
		t.Fatalf("receive with a wrong code: err %v\n%s", err, out)
	}
	if err := waitDone(send); err == nil || !strings.Contains(sendErr.String(), "wrong code") {
		t.Fatalf("sender after a wrong code: err %v\n%s%s", err, sendOut, sendErr)
	}
	if ents, _ := os.ReadDir(inbox); len(ents) != 0 {
		t.Fatalf("a wrong code received %v", ents)
	}
}

func waitDone(done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		return errors.New("did not finish")
	}
}

// TestCLIByIDReceiverComesBack: the receiver vanishes mid-transfer (killed),
// comes back online under the same id, and the next send by id moves only
// the rest, with an identical result.
func TestCLIByIDReceiverComesBack(t *testing.T) {
	onlineEnv(t)
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	data := randomData(t, 24<<20)
	src := filepath.Join(t.TempDir(), "big.bin")
	os.WriteFile(src, data, 0o644)
	inbox := t.TempDir()

	r := bob.receiveArgs("--dir", inbox, "--yes", "--quiet")
	send := alice.cmd("send", "--quiet", "--limit-rate", "8M", bob.id.String(), src)
	if err := send.Start(); err != nil {
		t.Fatal(err)
	}
	waitPartial(t, inbox, 6<<20)
	r.cmd.Process.Kill()
	r.wait(t)
	if err := send.Wait(); err == nil {
		t.Fatal("sender exited 0 although the receiver vanished")
	}

	r = bob.receiveArgs("--dir", inbox, "--yes", "--quiet")
	out, err := alice.cmd("send", "--quiet", bob.id.String(), src).CombinedOutput()
	if err != nil {
		t.Fatalf("send after the receiver came back: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "resumed") {
		t.Fatalf("not resumed: %s", out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
	got, _ := os.ReadFile(filepath.Join(inbox, "big.bin"))
	if !bytes.Equal(got, data) {
		t.Fatal("resumed file differs")
	}
}

// waitPartial waits until a partial file of at least n bytes exists in dir.
func waitPartial(t *testing.T, dir string, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".delpart") && fi.Size() >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no partial file of %d bytes appeared", n)
		}
	}
}
