package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLIDaemon: a daemon keeps Bob online; `del receive` works through it,
// contacts are received into the download folder with nobody attached,
// strangers are declined, and SIGTERM stops it cleanly.
func TestCLIDaemon(t *testing.T) {
	onlineEnv(t)
	alice, bob, carol := newDevice(t, 0), newDevice(t, 1), newDevice(t, 2)
	downloads := t.TempDir()
	os.WriteFile(filepath.Join(bob.home, "config.toml"), []byte("download_dir = \""+downloads+"\"\n"), 0o644)
	if out, err := bob.cmd("contacts", "add", "alice", alice.id.String()).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d := bob.cmd("daemon")
	line := startServer(t, d, "daemon online ")
	if line != bob.id.String() {
		t.Fatalf("daemon online %q, want %s", line, bob.id)
	}

	// 1. del receive through the daemon.
	f := filepath.Join(t.TempDir(), "via-daemon.txt")
	os.WriteFile(f, []byte("through the daemon"), 0o644)
	inbox := t.TempDir()
	r := bob.receiveArgs("--dir", inbox, "--yes", "--quiet")
	out, err := carol.cmd("send", "--quiet", bob.id.String(), f).CombinedOutput()
	if err != nil {
		t.Fatalf("send to a device whose daemon has a receive attached: %v\n%s", err, out)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("receive through the daemon: %v\n%s", err, r.stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(inbox, "via-daemon.txt")); string(got) != "through the daemon" {
		t.Fatalf("got %q", got)
	}

	// 2. Nobody attached: a contact lands in the download folder.
	g := filepath.Join(t.TempDir(), "from-alice.txt")
	os.WriteFile(g, []byte("hi"), 0o644)
	if out, err := alice.cmd("send", "--quiet", bob.id.String(), g).CombinedOutput(); err != nil {
		t.Fatalf("send from a contact: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(downloads, "from-alice.txt")); string(got) != "hi" {
		t.Fatalf("contact's file not in the download folder: %q", got)
	}

	// 3. Nobody attached: a stranger is declined.
	out, err = carol.cmd("send", "--quiet", bob.id.String(), g).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "did not consent") {
		t.Fatalf("stranger with nobody attached: err %v\n%s", err, out)
	}

	// 4. SIGTERM: a clean exit, the socket gone.
	d.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(bob.home, daemonSocket)); err == nil {
		t.Fatal("control socket left behind")
	}
}
