package main

// End-to-end tests: the real del binary, two processes, two DEL_HOMEs,
// loopback only.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/netlab"
	"github.com/del-share/del/internal/testenv"
	"github.com/del-share/del/internal/testkeys"
)

var (
	buildOnce sync.Once
	delBin    string
	buildErr  error
)

// delBinary builds cmd/del once per test run.
func delBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "del-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		delBin = filepath.Join(dir, "del")
		out, err := exec.Command("go", "build", "-o", delBin, ".").CombinedOutput()
		if err != nil {
			buildErr = err
			delBin = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build del: %v\n%s", buildErr, delBin)
	}
	return delBin
}

// device is one DEL_HOME with a test identity; with ns set, its commands
// run inside that network namespace of a NAT lab, with env added.
type device struct {
	t    *testing.T
	home string
	id   identity.ID
	// wrap, if set, runs del under this command (as its first arguments)
	wrap []string
	ns   *netlab.NS
	env  []string
}

func newDevice(t *testing.T, key int) *device {
	home := filepath.Join(t.TempDir(), "home")
	ident := testkeys.Home(t, home, key)
	return &device{t: t, home: home, id: ident.ID}
}

func (d *device) cmd(args ...string) *exec.Cmd {
	bin := delBinary(d.t)
	if len(d.wrap) > 0 {
		args = append(append(d.wrap[1:len(d.wrap):len(d.wrap)], bin), args...)
		bin = d.wrap[0]
	}
	var c *exec.Cmd
	if d.ns != nil {
		c = d.ns.Command(bin, args...)
	} else {
		c = exec.Command(bin, args...)
	}
	c.Env = append(append(os.Environ(), "DEL_HOME="+d.home), d.env...)
	return c
}

// receiver is a running `del receive --listen`.
type receiver struct {
	cmd    *exec.Cmd
	target string
	stdout *bytes.Buffer
	stderr *bytes.Buffer
	done   chan error
}

var listeningRE = regexp.MustCompile(`^listening ([0-9a-f]{40})(?:@(127\.0\.0\.1:[0-9]+))?$`)

func (d *device) receive(args ...string) *receiver {
	d.t.Helper()
	return d.receiveArgs(append([]string{"--listen", "127.0.0.1:0"}, args...)...)
}

func (d *device) receiveArgs(args ...string) *receiver {
	d.t.Helper()
	c := d.cmd(append([]string{"receive"}, args...)...)
	r := &receiver{cmd: c, stdout: new(bytes.Buffer), stderr: new(bytes.Buffer), done: make(chan error, 1)}
	// The contract line goes to stdout, or to stderr with --stdout.
	pr, pw := io.Pipe()
	toStdout := false
	for _, a := range args {
		toStdout = toStdout || a == "--stdout"
	}
	if toStdout {
		c.Stdout = r.stdout
		c.Stderr = io.MultiWriter(pw, r.stderr)
	} else {
		c.Stdout = io.MultiWriter(pw, r.stdout)
		c.Stderr = r.stderr
	}
	if err := c.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { c.Process.Kill(); <-r.done })
	go func() { r.done <- c.Wait(); pw.Close() }()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				if m[2] == "" {
					lines <- m[1] // online by id
				} else {
					lines <- m[1] + "@" + m[2]
				}
			}
		}
		close(lines)
		io.Copy(io.Discard, pr)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			d.t.Fatalf("receiver exited without a listening line: %s", r.stderr)
		}
		if !strings.HasPrefix(l, d.id.String()) {
			d.t.Fatalf("listening line %q does not carry the receiver's id %s", l, d.id)
		}
		r.target = l
	case <-time.After(20 * time.Second):
		d.t.Fatalf("receiver did not print its listening line: %s", r.stderr)
	}
	return r
}

func (r *receiver) wait(t *testing.T) error {
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("receiver did not finish")
		return nil
	}
}

func writeTree(t *testing.T, root string) {
	files := map[string]string{"a.txt": "alpha\n", "sub/b.txt": "beta\n", "sub/deeper/c.bin": string(randomData(t, 300_000))}
	for p, data := range files {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "empty"), 0o755)
}

func randomData(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	if err := sameTree(a, b); err != nil {
		t.Fatal(err)
	}
}

func TestCLIIdentity(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	c := exec.Command(delBinary(t), "id")
	c.Env = append(os.Environ(), "DEL_HOME="+home)
	out, err := c.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{40}\n$`).Match(out) {
		t.Fatalf("del id printed %q, want 40 hex digits alone on a line", out)
	}
	st, err := os.Stat(filepath.Join(home, identity.KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode())
	}
	// The same id next time.
	again, _ := c2(t, home, "id")
	if again != string(out) {
		t.Fatalf("id changed from %q to %q", out, again)
	}
	// A key readable by others is refused, never replaced.
	os.Chmod(filepath.Join(home, identity.KeyFile), 0o644)
	if msg, err := c2(t, home, "id"); err == nil || !strings.Contains(msg, "chmod 600") {
		t.Fatalf("insecure key: err %v, output %q", err, msg)
	}
	// A corrupted key is an error, never a silently new identity.
	os.Chmod(filepath.Join(home, identity.KeyFile), 0o600)
	os.WriteFile(filepath.Join(home, identity.KeyFile), []byte("garbage"), 0o600)
	if msg, err := c2(t, home, "id"); err == nil || !strings.Contains(msg, "corrupted") {
		t.Fatalf("corrupted key: err %v, output %q", err, msg)
	}
}

func c2(t *testing.T, home string, args ...string) (string, error) {
	c := exec.Command(delBinary(t), args...)
	c.Env = append(os.Environ(), "DEL_HOME="+home)
	out, err := c.CombinedOutput()
	return string(out), err
}

func TestCLISendReceiveTree(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	src := filepath.Join(t.TempDir(), "project")
	writeTree(t, src)
	note := filepath.Join(t.TempDir(), "note.txt")
	os.WriteFile(note, []byte("single file\n"), 0o600)
	inbox := filepath.Join(t.TempDir(), "inbox")

	r := bob.receive("--dir", inbox, "--yes")
	out, err := alice.cmd("send", r.target, src, note).CombinedOutput()
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "sent 4 file(s)") {
		t.Fatalf("send summary: %s", out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
	if !strings.Contains(r.stdout.String(), "received 4 file(s)") || !strings.Contains(r.stdout.String(), alice.id.String()) {
		t.Fatalf("receive summary does not say what came from whom: %s", r.stdout)
	}
	sameFiles(t, src, filepath.Join(inbox, "project"))
	sameFiles(t, note, filepath.Join(inbox, "note.txt"))
}

func TestCLIWrongPeerRefused(t *testing.T) {
	alice, bob, carol := newDevice(t, 0), newDevice(t, 1), newDevice(t, 2)
	inbox := filepath.Join(t.TempDir(), "inbox")
	r := bob.receive("--dir", inbox, "--yes")
	// Alice believes she is talking to Carol, but Bob answers at that address.
	addr := strings.SplitN(r.target, "@", 2)[1]
	f := filepath.Join(t.TempDir(), "secret.txt")
	os.WriteFile(f, []byte("for carol only"), 0o644)
	out, err := alice.cmd("send", carol.id.String()+"@"+addr, f).CombinedOutput()
	if err == nil {
		t.Fatalf("send to the wrong peer succeeded: %s", out)
	}
	if !strings.Contains(string(out), carol.id.String()) || !strings.Contains(string(out), bob.id.String()) {
		t.Fatalf("error does not name both ids: %s", out)
	}
	if ents, _ := os.ReadDir(inbox); len(ents) != 0 {
		t.Fatalf("data reached the wrong peer: %v", ents)
	}
	// Bob is still waiting for a real sender.
	if out, err := alice.cmd("send", r.target, f).CombinedOutput(); err != nil {
		t.Fatalf("send to the right id: %v\n%s", err, out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
}

func TestCLIStdinToStdout(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	data := randomData(t, 3<<20)
	r := bob.receive("--stdout", "--yes")
	send := alice.cmd("send", r.target, "-")
	send.Stdin = bytes.NewReader(data)
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
	if !bytes.Equal(r.stdout.Bytes(), data) {
		t.Fatalf("stdout has %d bytes, want the %d sent", r.stdout.Len(), len(data))
	}
}

func TestCLINoConsentWithoutYes(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	inbox := filepath.Join(t.TempDir(), "inbox")
	r := bob.receive("--dir", inbox) // no --yes, no terminal
	f := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(f, []byte("x"), 0o644)
	out, err := alice.cmd("send", r.target, f).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "consent") {
		t.Fatalf("send without consent: err %v, %s", err, out)
	}
	if err := r.wait(t); err == nil {
		t.Fatal("receiver exited 0 although it received nothing")
	}
	if ents, _ := os.ReadDir(inbox); len(ents) != 0 {
		t.Fatalf("received without consent: %v", ents)
	}
}

func TestCLIExistingFileKept(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	inbox := t.TempDir()
	os.WriteFile(filepath.Join(inbox, "f.txt"), []byte("mine"), 0o644)
	f := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(f, []byte("theirs"), 0o644)
	r := bob.receive("--dir", inbox, "--yes")
	out, err := alice.cmd("send", r.target, f).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--overwrite") {
		t.Fatalf("send over an existing file: err %v, %s", err, out)
	}
	r.wait(t)
	if got, _ := os.ReadFile(filepath.Join(inbox, "f.txt")); string(got) != "mine" {
		t.Fatalf("existing file overwritten: %q", got)
	}
	r = bob.receive("--dir", inbox, "--yes", "--overwrite")
	if out, err := alice.cmd("send", r.target, f).CombinedOutput(); err != nil {
		t.Fatalf("send with --overwrite: %v\n%s", err, out)
	}
	r.wait(t)
	if got, _ := os.ReadFile(filepath.Join(inbox, "f.txt")); string(got) != "theirs" {
		t.Fatalf("file not replaced with --overwrite: %q", got)
	}
}

// TestCLIResumeAfterReceiverKilled kills the receiving process mid-transfer:
// the partial copy stays, nothing sits under the final name, and the next
// run completes the file from where it stopped with an identical hash.
func TestCLIResumeAfterReceiverKilled(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	data := randomData(t, 24<<20)
	src := filepath.Join(t.TempDir(), "big.bin")
	os.WriteFile(src, data, 0o644)
	inbox := t.TempDir()

	r := bob.receive("--dir", inbox, "--yes", "--quiet")
	send := alice.cmd("send", "--quiet", "--limit-rate", "8M", r.target, src)
	var sendOut bytes.Buffer
	send.Stdout, send.Stderr = &sendOut, &sendOut
	if err := send.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until a few MiB have arrived, then kill the receiver.
	partial := ""
	deadline := time.Now().Add(30 * time.Second)
	for partial == "" {
		if time.Now().After(deadline) {
			t.Fatal("no partial file appeared")
		}
		filepath.WalkDir(inbox, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".delpart") {
				if fi, err := d.Info(); err == nil && fi.Size() >= 6<<20 {
					partial = p
				}
			}
			return nil
		})
		time.Sleep(10 * time.Millisecond)
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.wait(t)
	if err := send.Wait(); err == nil {
		t.Fatalf("sender exited 0 although the receiver died: %s", sendOut.String())
	}
	if _, err := os.Stat(filepath.Join(inbox, "big.bin")); err == nil {
		t.Fatal("a half-written file sits under the final name")
	}
	kept, err := os.Stat(partial)
	if err != nil || kept.Size() == 0 {
		t.Fatalf("partial copy not kept: %v", err)
	}

	r = bob.receive("--dir", inbox, "--yes", "--quiet")
	out, err := alice.cmd("send", "--quiet", r.target, src).CombinedOutput()
	if err != nil {
		t.Fatalf("resumed send: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "resumed") {
		t.Fatalf("second send did not resume: %s", out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive: %v\n%s", err, r.stderr)
	}
	got, _ := os.ReadFile(filepath.Join(inbox, "big.bin"))
	if !bytes.Equal(got, data) {
		t.Fatal("resumed file differs from the original")
	}
	if _, err := os.Stat(partial); err == nil {
		t.Fatal("partial copy left after completion")
	}
}

func TestCLIDemo(t *testing.T) {
	// The demo caches its two devices' identities; give it test ones rather
	// than spend seconds generating RSA-4096 keys.
	cache := t.TempDir()
	testkeys.Home(t, filepath.Join(cache, "del", "demo", "alice"), 3)
	testkeys.Home(t, filepath.Join(cache, "del", "demo", "bob"), 4)
	c := exec.Command(delBinary(t), "demo", "--size", "4000000")
	c.Env = append(os.Environ(), "XDG_CACHE_HOME="+cache)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"verified: the received tree is identical", "throughput:", "listening ",
		"over ICE (host-", "verified: identical through the relay", "over a relayed link (TURN"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestCLIFsync: `del receive --fsync` flushes every received file and its
// folder to disk before confirming it (seen by strace: two more fsync calls
// per file than the same transfer without the flag).
func TestCLIFsync(t *testing.T) {
	strace := testenv.NeedBinary(t, "strace")
	src := filepath.Join(t.TempDir(), "project")
	writeTree(t, src)
	fsyncs := func(flags ...string) (calls, files int) {
		t.Helper()
		alice, bob := newDevice(t, 0), newDevice(t, 1)
		log := filepath.Join(t.TempDir(), "strace.log")
		bob.wrap = []string{strace, "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", log}
		inbox := filepath.Join(t.TempDir(), "inbox")
		r := bob.receive(append([]string{"--dir", inbox, "--yes"}, flags...)...)
		if out, err := alice.cmd("send", r.target, src).CombinedOutput(); err != nil {
			t.Fatalf("send: %v\n%s", err, out)
		}
		if err := r.wait(t); err != nil {
			t.Fatalf("receive: %v\n%s", err, r.stderr)
		}
		sameFiles(t, src, filepath.Join(inbox, "project"))
		m := regexp.MustCompile(`received (\d+) file`).FindStringSubmatch(r.stdout.String())
		if m == nil {
			t.Fatalf("no summary: %s", r.stdout)
		}
		files, _ = strconv.Atoi(m[1])
		b, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "fsync("), files
	}
	base, n := fsyncs()
	with, _ := fsyncs("--fsync")
	if n == 0 || with < base+2*n {
		t.Fatalf("%d files: %d fsync calls with --fsync, %d without; want at least %d more", n, with, base, 2*n)
	}
	t.Logf("%d files: %d fsync calls with --fsync, %d without", n, with, base)
}
