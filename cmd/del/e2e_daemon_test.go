package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/del-share/del/internal/testenv"
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

// TestCLIDaemonServesGit: a repository shared with del git share is cloned
// by id with the real git while only the daemon keeps its device online.
func TestCLIDaemonServesGit(t *testing.T) {
	gitBin := testenv.NeedBinary(t, "git")
	onlineEnv(t)
	owner, cloner := newDevice(t, 0), newDevice(t, 1)
	helperDir := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", helperDir, "../git-remote-del").CombinedOutput(); err != nil {
		t.Fatalf("build git-remote-del: %v\n%s", err, out)
	}
	// git-remote-del runs `del`: both on PATH.
	if err := os.Symlink(delBinary(t), filepath.Join(helperDir, "del")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", helperDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	gitEnv := []string{"GIT_CONFIG_NOSYSTEM=1", "HOME=" + t.TempDir(), "GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@x",
		"GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@x"}
	git := func(d *device, dir string, args ...string) string {
		t.Helper()
		c := exec.Command(gitBin, args...)
		c.Dir = dir
		c.Env = append(append(os.Environ(), "DEL_HOME="+d.home), gitEnv...)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	repo := t.TempDir()
	git(owner, repo, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "README"), []byte("shared through the daemon\n"), 0o644)
	git(owner, repo, "add", ".")
	git(owner, repo, "commit", "-q", "-m", "first")
	if out, err := owner.cmd("git", "share", repo, "--name", "proj").CombinedOutput(); err != nil {
		t.Fatalf("git share: %v\n%s", err, out)
	}
	startServer(t, owner.cmd("daemon"), "daemon online ")
	work := t.TempDir()
	git(cloner, work, "clone", "-q", "del://"+owner.id.String()+"/proj", "clone")
	if got, want := git(cloner, filepath.Join(work, "clone"), "rev-parse", "HEAD"), git(owner, repo, "rev-parse", "HEAD"); got != want {
		t.Fatalf("cloned %s, want %s", got, want)
	}
	git(cloner, filepath.Join(work, "clone"), "fsck", "--full")

	// With its own daemon running, the cloner's git commands go through
	// it: they work even with no bootstrap node in their environment.
	startServer(t, cloner.cmd("daemon"), "daemon online ")
	t.Setenv("DEL_BOOTSTRAP", "")
	if got, want := git(cloner, filepath.Join(work, "clone"), "ls-remote", "origin", "refs/heads/main"), git(owner, repo, "rev-parse", "HEAD"); !strings.HasPrefix(got, want) {
		t.Fatalf("ls-remote through the daemon: %q, want %s", got, want)
	}
}
