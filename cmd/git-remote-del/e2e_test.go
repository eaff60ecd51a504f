package main

// End-to-end tests with the real git: the del and git-remote-del binaries
// are built, `del git serve` runs as a process with its own DEL_HOME, and git
// runs with the helper on PATH and another DEL_HOME. Loopback only.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/del-share/del/gitp2p"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/testenv"
	"github.com/del-share/del/internal/testkeys"
	"github.com/del-share/del/peer"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds del and git-remote-del once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	testenv.NeedBinary(t, "git")
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "del-git-e2e-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"../del", "."} {
			name := "del"
			if pkg == "." {
				name = "git-remote-del"
			}
			args := []string{"build", "-o", filepath.Join(binDir, name)}
			if os.Getenv("DEL_TEST_RACE") != "" { // race-detector builds of both binaries
				args = append(args, "-race")
			}
			out, err := exec.Command("go", append(args, pkg)...).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// device is one DEL_HOME with a test identity, and a HOME for git.
type device struct {
	extraEnv []string // appended to the environment of every command
	t        *testing.T
	home     string
	ident    *identity.Identity
	gitHome  string
}

func newDevice(t *testing.T, key int) *device {
	dir := t.TempDir()
	d := &device{t: t, home: filepath.Join(dir, "del"), gitHome: filepath.Join(dir, "home")}
	d.ident = testkeys.Home(t, d.home, key)
	os.MkdirAll(d.gitHome, 0o755)
	return d
}

func (d *device) env() []string {
	env := []string{
		"PATH=" + binaries(d.t) + string(os.PathListSeparator) + os.Getenv("PATH"),
		"DEL_HOME=" + d.home,
		"HOME=" + d.gitHome,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.org",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.org",
		"LANG=C", "LC_ALL=C",
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TMPDIR=") || strings.HasPrefix(kv, "GOCOVERDIR=") {
			env = append(env, kv)
		}
	}
	return append(env, d.extraEnv...)
}

// run runs a command in dir as this device and returns its combined output.
func (d *device) run(dir string, name string, args ...string) (string, error) {
	if name == "del" {
		name = filepath.Join(binaries(d.t), "del")
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = d.env()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if strings.Contains(out.String(), "WARNING: DATA RACE") {
			d.t.Errorf("data race in %s %v:\n%s", name, args, out.String())
		}
		return out.String(), err
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("%s %v timed out", name, args)
	}
}

func (d *device) git(dir string, args ...string) string {
	d.t.Helper()
	out, err := d.run(dir, "git", args...)
	if err != nil {
		d.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

func (d *device) gitEnv(env []string, dir string, args ...string) string {
	d.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(d.env(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// gitIn runs git with stdin.
func (d *device) gitIn(dir, stdin string, args ...string) string {
	d.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = d.env()
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		d.t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

func (d *device) gitFails(dir string, args ...string) string {
	d.t.Helper()
	out, err := d.run(dir, "git", args...)
	if err == nil {
		d.t.Fatalf("git %s succeeded, want a failure\n%s", strings.Join(args, " "), out)
	}
	return out
}

func (d *device) fsck(dir string) {
	d.t.Helper()
	d.git(dir, "fsck", "--full", "--strict", "--no-dangling")
}

// server is a running `del git serve`.
type server struct {
	dev    *device
	target string // <peer-id>@127.0.0.1:<port>
	stderr *bytes.Buffer
}

func startServer(t *testing.T, d *device) *server {
	return startProcess(t, d, `^listening ([0-9a-f]{40}@127\.0\.0\.1:\d+)\n$`, "git", "serve", "--listen", "127.0.0.1:0")
}

// startProcess runs del with args as device d and waits for its first
// stdout line to match re; target is the first group.
func startProcess(t *testing.T, d *device, re string, args ...string) *server {
	cmd := exec.Command(filepath.Join(binaries(t), "del"), args...)
	cmd.Env = d.env()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{dev: d, stderr: &bytes.Buffer{}}
	cmd.Stderr = &lockedWriter{w: s.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-waited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-waited
		}
		if strings.Contains(s.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("data race in del git serve:\n%s", s.stderr)
		} else if t.Failed() {
			t.Logf("server stderr:\n%s", s.stderr)
		}
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		m := regexp.MustCompile(re).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("server said %q", l)
		}
		s.target = m[1]
	case <-time.After(60 * time.Second):
		t.Fatalf("del %v did not print its first line; stderr:\n%s", args, s.stderr)
	}
	return s
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (s *server) url(repo string) string { return "del://" + s.target + "/" + repo }

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// makeRepo creates a repository with two branches, a merge, annotated and
// lightweight tags and binary files; HEAD is main.
func makeRepo(t *testing.T, d *device) string {
	dir := filepath.Join(t.TempDir(), "project")
	d.git("", "init", "-q", "-b", "main", dir)
	writeFile(t, filepath.Join(dir, "README"), []byte("hello\n"))
	writeFile(t, filepath.Join(dir, "bin", "blob.bin"), randomBytes(64<<10))
	d.git(dir, "add", ".")
	d.git(dir, "commit", "-q", "-m", "first")
	d.git(dir, "tag", "-a", "v1", "-m", "version 1")
	d.git(dir, "checkout", "-q", "-b", "dev")
	for i := 0; i < 3; i++ {
		writeFile(t, filepath.Join(dir, "dev.txt"), []byte(strings.Repeat(fmt.Sprintf("dev %d\n", i), 100)))
		d.git(dir, "add", ".")
		d.git(dir, "commit", "-q", "-m", fmt.Sprintf("dev %d", i))
	}
	d.git(dir, "checkout", "-q", "main")
	writeFile(t, filepath.Join(dir, "main.txt"), []byte("main\n"))
	writeFile(t, filepath.Join(dir, "bin", "other.bin"), randomBytes(10<<10))
	d.git(dir, "add", ".")
	d.git(dir, "commit", "-q", "-m", "main work")
	d.git(dir, "merge", "-q", "--no-ff", "-m", "merge dev", "dev")
	d.git(dir, "tag", "light")
	d.git(dir, "tag", "-a", "v2", "-m", "version 2")
	d.git(dir, "branch", "topic", "dev~1")
	return dir
}

// refsOf lists name=oid for the refs under prefix (remote-tracking names
// mapped back to the server's names).
func refsOf(d *device, dir string, patterns ...string) string {
	return d.git(dir, append([]string{"for-each-ref", "--format=%(objectname) %(refname)"}, patterns...)...)
}

type setup struct {
	srv      *server
	owner    *device // the serving device
	client   *device // granted push
	stranger *device // may fetch only
	src      string
}

func newSetup(t *testing.T, force bool) *setup {
	binaries(t)
	s := &setup{owner: newDevice(t, 0), client: newDevice(t, 1), stranger: newDevice(t, 2)}
	s.src = makeRepo(t, s.owner)
	args := []string{"git", "share", s.src, "--name", "proj", "--allow-push", s.client.ident.ID.String()}
	if force {
		args = append(args, "--allow-force")
	}
	if out, err := s.owner.run("", "del", args...); err != nil {
		t.Fatalf("del git share: %v\n%s", err, out)
	}
	s.srv = startServer(t, s.owner)
	return s
}

func TestCloneFetchPush(t *testing.T) {
	s := newSetup(t, false)
	c := s.client
	work := t.TempDir()
	clone := filepath.Join(work, "clone")
	out := c.git(work, "clone", "--progress", s.srv.url("proj"), clone)
	t.Logf("clone: %s", out)
	// pack-objects' progress reached git on side-band 2.
	if !strings.Contains(out, "remote: Enumerating objects") && !strings.Contains(out, "remote: Counting objects") {
		t.Errorf("no remote progress in the clone's output:\n%s", out)
	}
	// Every branch and tag arrived with the same ids, HEAD is main.
	want := strings.ReplaceAll(refsOf(s.owner, s.src, "refs/heads"), "refs/heads/", "refs/remotes/origin/")
	got := refsOf(c, clone, "refs/remotes/origin/main", "refs/remotes/origin/dev", "refs/remotes/origin/topic")
	if got != want {
		t.Fatalf("branches:\n%s\nwant:\n%s", got, want)
	}
	if got, want := refsOf(c, clone, "refs/tags"), refsOf(s.owner, s.src, "refs/tags"); got != want {
		t.Fatalf("tags:\n%s\nwant:\n%s", got, want)
	}
	if b := c.git(clone, "symbolic-ref", "HEAD"); b != "refs/heads/main" {
		t.Fatalf("HEAD is %s", b)
	}
	if c.git(clone, "cat-file", "-t", "v1") != "tag" || c.git(clone, "cat-file", "-t", "light") != "commit" {
		t.Fatal("annotated/light tags lost their kind")
	}
	if got, want := c.git(clone, "rev-parse", "HEAD^{tree}"), s.owner.git(s.src, "rev-parse", "HEAD^{tree}"); got != want {
		t.Fatalf("tree %s, want %s", got, want)
	}
	c.fsck(clone)
	s.owner.fsck(s.src)

	// ls-remote lists HEAD, the branches, the tags and the peeled tags,
	// whatever protocol version git asks for (the server answers v0).
	ls := c.git(work, "ls-remote", s.srv.url("proj"))
	for _, v := range []string{"0", "1", "2"} {
		if got := c.git(work, "-c", "protocol.version="+v, "ls-remote", s.srv.url("proj")); got != ls {
			t.Fatalf("ls-remote with protocol.version=%s:\n%s\nwant:\n%s", v, got, ls)
		}
	}
	for _, ref := range []string{"HEAD", "refs/heads/dev", "refs/tags/v1", "refs/tags/v1^{}", "refs/tags/light"} {
		if !regexp.MustCompile(`(?m)^[0-9a-f]{40}\t` + regexp.QuoteMeta(ref) + `$`).MatchString(ls) {
			t.Fatalf("ls-remote lacks %s:\n%s", ref, ls)
		}
	}

	// Incremental fetch: one new commit with a 300 KB incompressible blob
	// arrives as a pack of exactly its 3 new objects.
	writeFile(t, filepath.Join(s.src, "bin", "new.bin"), randomBytes(300<<10))
	s.owner.git(s.src, "add", ".")
	s.owner.git(s.src, "commit", "-q", "-m", "new blob")
	// The pack exactly as received (git's GIT_TRACE_PACKFILE) holds only
	// the 4 new objects: commit, root tree, bin/ tree, blob.
	trace := filepath.Join(work, "received.pack")
	c.gitEnv([]string{"GIT_TRACE_PACKFILE=" + trace}, clone, "fetch", "origin")
	pack, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	if len(pack) < 32 || string(pack[:4]) != "PACK" {
		t.Fatalf("received %d bytes, not a pack", len(pack))
	}
	objs := binary.BigEndian.Uint32(pack[8:12])
	t.Logf("incremental fetch: pack of %d bytes, %d objects", len(pack), objs)
	if objs != 4 {
		t.Fatalf("incremental pack has %d objects, want 4 (commit, 2 trees, blob)", objs)
	}
	if len(pack) < 300<<10 || len(pack) > 300<<10+2048 {
		t.Fatalf("incremental pack is %d bytes, want 300 KiB + a little", len(pack))
	}
	if got, want := c.git(clone, "rev-parse", "origin/main"), s.owner.git(s.src, "rev-parse", "main"); got != want {
		t.Fatalf("origin/main %s, want %s", got, want)
	}
	c.fsck(clone)

	// A tag made on the server is followed by a fetch of one branch
	// (include-tag puts the tag object in the same pack).
	s.owner.git(s.src, "commit", "-q", "--allow-empty", "-m", "tagged")
	s.owner.git(s.src, "tag", "-a", "v3", "-m", "version 3", "main")
	c.git(clone, "fetch", "origin")
	if got, want := c.git(clone, "rev-parse", "v3"), s.owner.git(s.src, "rev-parse", "v3"); got != want {
		t.Fatalf("followed tag v3 is %s, want %s", got, want)
	}

	// pull works too.
	c.git(clone, "pull", "-q", "--ff-only")
	if _, err := os.Stat(filepath.Join(clone, "bin", "new.bin")); err != nil {
		t.Fatal(err)
	}

	// Fast-forward push to a branch that is not checked out on the server.
	c.git(clone, "checkout", "-q", "-b", "dev", "origin/dev")
	writeFile(t, filepath.Join(clone, "pushed.txt"), randomBytes(5000))
	c.git(clone, "add", ".")
	c.git(clone, "commit", "-q", "-m", "pushed")
	c.git(clone, "push", "origin", "dev")
	if got, want := s.owner.git(s.src, "rev-parse", "dev"), c.git(clone, "rev-parse", "dev"); got != want {
		t.Fatalf("server dev %s, want %s", got, want)
	}
	s.owner.fsck(s.src)
	c.fsck(clone)
	// New branch (a creation).
	c.git(clone, "push", "origin", "dev:refs/heads/feature")
	if got, want := s.owner.git(s.src, "rev-parse", "feature"), c.git(clone, "rev-parse", "dev"); got != want {
		t.Fatalf("server feature %s, want %s", got, want)
	}

	// Non-fast-forward push refused, even forced; the ref does not move.
	devBefore := s.owner.git(s.src, "rev-parse", "dev")
	out = c.gitFails(clone, "push", "--force", "origin", "dev~2:dev")
	if !strings.Contains(out, "non-fast-forward") {
		t.Fatalf("forced push refused without the reason:\n%s", out)
	}
	if s.owner.git(s.src, "rev-parse", "dev") != devBefore {
		t.Fatal("server dev moved")
	}
	// Deleting needs force as well.
	out = c.gitFails(clone, "push", "origin", ":feature")
	if !strings.Contains(out, "deletion not allowed") {
		t.Fatalf("delete refused without the reason:\n%s", out)
	}
	// The checked-out branch of a work tree is not pushed to.
	c.git(clone, "checkout", "-q", "main")
	c.git(clone, "merge", "-q", "--ff-only", "origin/main")
	writeFile(t, filepath.Join(clone, "x.txt"), []byte("x\n"))
	c.git(clone, "add", ".")
	c.git(clone, "commit", "-q", "-m", "x")
	out = c.gitFails(clone, "push", "origin", "main")
	if !strings.Contains(out, "checked out") {
		t.Fatalf("push to the checked-out branch:\n%s", out)
	}
	// An atomic push with one bad update changes nothing.
	topicBefore := s.owner.git(s.src, "rev-parse", "topic")
	out = c.gitFails(clone, "push", "--atomic", "--force", "origin", "main:refs/heads/topic2", "dev~3:refs/heads/topic")
	if !strings.Contains(out, "atomic") {
		t.Fatalf("atomic push:\n%s", out)
	}
	if s.owner.git(s.src, "rev-parse", "topic") != topicBefore {
		t.Fatal("topic moved")
	}
	if o, err := s.owner.run(s.src, "git", "rev-parse", "-q", "--verify", "refs/heads/topic2"); err == nil {
		t.Fatalf("atomic push created topic2: %s", o)
	}
	// With receive.fsckObjects, a commit without an author is refused and
	// its objects never reach the repository.
	s.owner.git(s.src, "config", "receive.fsckObjects", "true")
	tree := c.git(clone, "rev-parse", "HEAD^{tree}")
	raw := fmt.Sprintf("tree %s\nparent %s\ncommitter T <t@example.org> 1700000000 +0000\n\nno author\n", tree, c.git(clone, "rev-parse", "HEAD"))
	bad := c.gitIn(clone, raw, "hash-object", "-t", "commit", "-w", "--literally", "--stdin")
	out = c.gitFails(clone, "push", "origin", bad+":refs/heads/bad")
	if !strings.Contains(out, "unpack") {
		t.Fatalf("push of a broken commit:\n%s", out)
	}
	if _, err := s.owner.run(s.src, "git", "cat-file", "-e", bad); err == nil {
		t.Fatal("the broken commit reached the server's objects")
	}
	s.owner.git(s.src, "config", "--unset", "receive.fsckObjects")
	c.git(clone, "prune", "--expire=now") // the broken commit, unreachable here too
	// Nothing was left in quarantine.
	if q, _ := filepath.Glob(filepath.Join(s.src, ".git", "objects", "tmp_objdir-incoming-*")); len(q) > 0 {
		t.Fatalf("quarantine left behind: %v", q)
	}
	s.owner.fsck(s.src)
	c.fsck(clone)
}

func TestForceGrant(t *testing.T) {
	s := newSetup(t, true)
	c := s.client
	work := t.TempDir()
	clone := filepath.Join(work, "clone")
	c.git(work, "clone", "-q", s.srv.url("proj"), clone)
	want := c.git(clone, "rev-parse", "origin/dev~2")
	c.git(clone, "push", "--force", "origin", "origin/dev~2:refs/heads/dev")
	if got := s.owner.git(s.src, "rev-parse", "dev"); got != want {
		t.Fatalf("forced dev %s, want %s", got, want)
	}
	c.git(clone, "push", "origin", ":topic")
	if o, err := s.owner.run(s.src, "git", "rev-parse", "-q", "--verify", "refs/heads/topic"); err == nil {
		t.Fatalf("topic not deleted: %s", o)
	}
	s.owner.fsck(s.src)
	// Every push lands as a pack; git gc --auto after each keeps their
	// number under gc.autoPackLimit.
	s.owner.git(s.src, "config", "gc.autoPackLimit", "3")
	for i := 0; i < 6; i++ {
		writeFile(t, filepath.Join(clone, "n.txt"), randomBytes(100))
		c.git(clone, "add", ".")
		c.git(clone, "commit", "-q", "-m", fmt.Sprint("push ", i))
		c.git(clone, "push", "-q", "origin", "HEAD:refs/heads/many")
	}
	if packs, _ := filepath.Glob(filepath.Join(s.src, ".git", "objects", "pack", "*.pack")); len(packs) > 4 {
		t.Fatalf("%d packs after 6 pushes with gc.autoPackLimit=3", len(packs))
	}
	s.owner.fsck(s.src)
}

// TestShallowClone runs the same shallow operations over DEL and against
// git's own upload-pack (file://) and compares the results.
func TestShallowClone(t *testing.T) {
	s := newSetup(t, false)
	c := s.client
	work := t.TempDir()
	clone := filepath.Join(work, "clone")
	ref := filepath.Join(work, "reference")
	shallowOf := func(dir string) string {
		b, _ := os.ReadFile(filepath.Join(dir, ".git", "shallow"))
		l := strings.Fields(string(b))
		sort.Strings(l)
		return strings.Join(l, " ")
	}
	same := func(step string) {
		t.Helper()
		for _, args := range [][]string{{"rev-list", "--count", "HEAD"}, {"rev-list", "--count", "--all"}} {
			if got, want := c.git(clone, args...), c.git(ref, args...); got != want {
				t.Fatalf("%s: %v = %s over DEL, %s with git upload-pack", step, args, got, want)
			}
		}
		if got, want := shallowOf(clone), shallowOf(ref); got != want {
			t.Fatalf("%s: shallow %q over DEL, %q with git upload-pack", step, got, want)
		}
		c.fsck(clone)
	}
	c.git(work, "clone", "-q", "--depth", "1", s.srv.url("proj"), clone)
	c.git(work, "clone", "-q", "--depth", "1", "file://"+s.src, ref)
	if n := c.git(clone, "rev-list", "--count", "HEAD"); n != "1" {
		t.Fatalf("depth 1 clone has %s commits", n)
	}
	same("clone --depth 1")
	for _, args := range [][]string{
		{"fetch", "-q", "--depth", "2", "origin", "+refs/heads/*:refs/remotes/origin/*"},
		{"fetch", "-q", "--deepen", "1"},
		{"fetch", "-q", "--unshallow"},
	} {
		c.git(clone, args...)
		c.git(ref, args...)
		same(strings.Join(args, " "))
	}
	if _, err := os.Stat(filepath.Join(clone, ".git", "shallow")); err == nil {
		t.Fatal("shallow file still there after --unshallow")
	}
	if got, want := c.git(clone, "rev-list", "--count", "--all"), s.owner.git(s.src, "rev-list", "--count", "--all"); got != want {
		t.Fatalf("after --unshallow: %s commits, want %s", got, want)
	}
}

func TestRefusals(t *testing.T) {
	s := newSetup(t, false)
	work := t.TempDir()
	// A device without the grant may fetch but not push.
	st := s.stranger
	clone := filepath.Join(work, "clone")
	st.git(work, "clone", "-q", s.srv.url("proj"), clone)
	writeFile(t, filepath.Join(clone, "s.txt"), []byte("s\n"))
	st.git(clone, "add", ".")
	st.git(clone, "commit", "-q", "-m", "stranger")
	before := refsOf(s.owner, s.src)
	out := st.gitFails(clone, "push", "origin", "HEAD:refs/heads/stranger")
	if !strings.Contains(out, "remote error") || !strings.Contains(out, "may not push") {
		t.Fatalf("push without grant:\n%s", out)
	}
	if refsOf(s.owner, s.src) != before {
		t.Fatal("refs changed")
	}
	// Each device sees what it may do.
	for _, tc := range []struct {
		d    *device
		want string
	}{{s.client, "proj\tpush"}, {st, "proj\tread"}} {
		if out, err := tc.d.run("", "del", "git", "list", s.srv.target); err != nil || strings.TrimSpace(out) != tc.want {
			t.Fatalf("del git list %s: %v %q, want %q", s.srv.target, err, out, tc.want)
		}
	}
	if out, err := s.owner.run("", "del", "git", "list"); err != nil || !strings.HasPrefix(out, "proj\t"+s.src+"\tpush:"+s.client.ident.ID.String()) {
		t.Fatalf("del git list: %v %q", err, out)
	}
	// An unknown repository.
	out = s.client.gitFails(work, "ls-remote", s.srv.url("nope"))
	if !strings.Contains(out, "not shared") {
		t.Fatalf("unknown repository:\n%s", out)
	}
	// After unshare the repository is gone for everyone.
	if out, err := s.owner.run("", "del", "git", "unshare", "proj"); err != nil {
		t.Fatalf("unshare: %v %s", err, out)
	}
	out = s.client.gitFails(work, "ls-remote", s.srv.url("proj"))
	if !strings.Contains(out, "not shared") {
		t.Fatalf("after unshare:\n%s", out)
	}
	// The wrong peer id at the right address is refused by TLS pinning.
	wrong := strings.Replace(s.srv.url("proj"), s.owner.ident.ID.String(), s.client.ident.ID.String(), 1)
	out = s.client.gitFails(work, "ls-remote", wrong)
	if !strings.Contains(out, "expected") {
		t.Fatalf("wrong peer id:\n%s", out)
	}
	// An id-only URL with no DHT bootstrap node configured says what to do.
	out = s.client.gitFails(work, "ls-remote", "del://"+s.owner.ident.ID.String()+"/proj")
	if !strings.Contains(out, "no DHT bootstrap node is configured") {
		t.Fatalf("id-only URL:\n%s", out)
	}
	// ... and works once the address is configured.
	addr := strings.SplitN(s.srv.target, "@", 2)[1]
	s.client.git(work, "config", "--global", "del."+s.owner.ident.ID.String()+".address", addr)
	s.owner.run("", "del", "git", "share", s.src, "--name", "proj")
	if out := s.client.git(work, "ls-remote", "del://"+s.owner.ident.ID.String()+"/proj"); !strings.Contains(out, "refs/heads/main") {
		t.Fatalf("id-only URL with configured address:\n%s", out)
	}
}

// TestMalformedSession sends broken sessions straight over a DEL channel:
// each is answered with an ERR packet and a closed channel, and the server
// keeps serving.
func TestMalformedSession(t *testing.T) {
	s := newSetup(t, false)
	host, port, _ := strings.Cut(strings.SplitN(s.srv.target, "@", 2)[1], ":")
	addr := net.JoinHostPort(host, port)
	client := testkeys.Identity(t, 1)
	adv := func() []byte { // a valid upload-pack request, so the advertisement comes first
		return gitp2p.AppendRequest(nil, gitp2p.UploadPackService, "proj")
	}
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"bad length", []byte("zzzzgarbage")},
		{"flush as request", []byte("0000")},
		{"unknown service", gitp2p.AppendString(nil, "git-frobnicate proj\n")},
		{"other repo in request", gitp2p.AppendRequest(nil, gitp2p.UploadPackService, "other")},
		{"bad want", append(adv(), "000fwant nothing"...)},
		{"not our ref", append(adv(), gitp2p.AppendString(nil, "want "+strings.Repeat("ab", 20)+"\n")...)},
		{"0003 in needs", append(adv(), "0003"...)},
		{"too long", append(adv(), "fff5"...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			link, err := peer.Client(ctx, conn, peer.Config{Identity: client, Expect: s.owner.ident.ID})
			if err != nil {
				t.Fatal(err)
			}
			defer link.Close()
			ch, err := link.Open(ctx, "git/proj")
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			ch.Write(tc.send)
			ch.SetReadDeadline(time.Now().Add(15 * time.Second))
			r := gitp2p.NewReader(ch)
			var last string
			for {
				kind, p, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("reading the answer: %v (last %q)", err, last)
				}
				if kind == gitp2p.Data {
					last = string(p)
				}
			}
			if !strings.HasPrefix(last, "ERR ") {
				t.Fatalf("last packet %q, want ERR", last)
			}
			t.Logf("answer: %q", strings.TrimSpace(last))
		})
	}
	// Still serving.
	if out := s.client.git(t.TempDir(), "ls-remote", s.srv.url("proj")); !strings.Contains(out, "refs/heads/main") {
		t.Fatalf("server stopped serving:\n%s", out)
	}
}

// commitTime dates the commits addCommits makes, one second apart.
var commitTime = time.Now().Unix() - 100000

// addCommits appends n commits to branch with git fast-import, each
// changing one small file.
func addCommits(t *testing.T, d *device, dir, branch, tag string, n int) {
	t.Helper()
	var b strings.Builder
	parent := ""
	if out, err := d.run(dir, "git", "rev-parse", "-q", "--verify", "refs/heads/"+branch); err == nil {
		parent = strings.TrimSpace(out)
	}
	for i := 0; i < n; i++ {
		commitTime++
		fmt.Fprintf(&b, "commit refs/heads/%s\ncommitter T <t@example.org> %d +0000\ndata <<EOM\n%s %d\nEOM\n", branch, commitTime, tag, i)
		if i == 0 && parent != "" {
			fmt.Fprintf(&b, "from %s\n", parent)
		}
		content := fmt.Sprintf("%s %d\n%s", tag, i, strings.Repeat("line\n", i%50))
		fmt.Fprintf(&b, "M 644 inline %s/file%d.txt\ndata %d\n%s\n", tag, i%20, len(content), content)
	}
	cmd := exec.Command("git", "fast-import", "--quiet")
	cmd.Dir = dir
	cmd.Env = d.env()
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fast-import: %v\n%s", err, out)
	}
}

// TestNegotiation: a client with local commits the server lacks fetches
// new server commits; the pack it receives is the one git's own
// upload-pack sends from the same state.
func TestNegotiation(t *testing.T) {
	s := newSetup(t, false)
	c := s.client
	addCommits(t, s.owner, s.src, "long", "base", 300)
	work := t.TempDir()
	clone := filepath.Join(work, "clone")
	c.git(work, "clone", "-q", s.srv.url("proj"), clone)
	addCommits(t, c, clone, "long", "local", 120) // unknown to the server
	c.git(clone, "branch", "-q", "long2", "origin/long")
	addCommits(t, c, clone, "long2", "local2", 40)
	addCommits(t, s.owner, s.src, "long", "server", 5)
	ref := filepath.Join(work, "reference")
	if out, err := exec.Command("cp", "-a", clone, ref).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	c.git(ref, "remote", "set-url", "origin", "file://"+s.src)
	received := func(dir string, env ...string) (int, uint32) {
		trace := filepath.Join(work, filepath.Base(dir)+".pack")
		c.gitEnv(append(env, "GIT_TRACE_PACKFILE="+trace), dir, "fetch", "-q", "origin")
		pack, err := os.ReadFile(trace)
		if err != nil || len(pack) < 12 {
			t.Fatalf("no pack received: %v", err)
		}
		return len(pack), binary.BigEndian.Uint32(pack[8:12])
	}
	packets := filepath.Join(work, "packets.trace")
	size, objs := received(clone, "GIT_TRACE_PACKET="+packets)
	tr, _ := os.ReadFile(packets)
	// multi_ack_detailed: the server said "ready" once every want reached
	// a commit the client has, which ends the client's have walk early. (git
	// uses no-done only over stateless HTTP; TestNoDone covers it.)
	if !regexp.MustCompile(`fetch< ACK [0-9a-f]{40} ready`).Match(tr) {
		t.Errorf("the server never said ready:\n%s", tr)
	}
	refPackets := filepath.Join(work, "ref-packets.trace")
	refSize, refObjs := received(ref, "GIT_TRACE_PACKET="+refPackets, "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=protocol.version", "GIT_CONFIG_VALUE_0=0")
	refTr, _ := os.ReadFile(refPackets)
	haves, refHaves := bytes.Count(tr, []byte("fetch> have ")), bytes.Count(refTr, []byte("fetch> have "))
	t.Logf("haves sent: %d over DEL, %d to git upload-pack (protocol v0)", haves, refHaves)
	if haves > refHaves {
		t.Errorf("the client sent %d haves over DEL, %d to git's upload-pack", haves, refHaves)
	}
	acks := regexp.MustCompile(`fetch< (ACK|NAK).*`)
	if got, want := acks.FindAllString(string(tr), -1), acks.FindAllString(string(refTr), -1); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("server answers differ from git upload-pack's:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	t.Logf("over DEL: %d objects, %d bytes; git upload-pack: %d objects, %d bytes", objs, size, refObjs, refSize)
	if objs != refObjs {
		t.Fatalf("received %d objects, git's upload-pack sends %d", objs, refObjs)
	}
	if objs != 5*4 {
		t.Fatalf("received %d objects, want 20 (5 x commit, root tree, server/ tree, blob)", objs)
	}
	if got, want := c.git(clone, "rev-parse", "origin/long"), s.owner.git(s.src, "rev-parse", "long"); got != want {
		t.Fatalf("origin/long %s, want %s", got, want)
	}
	c.fsck(clone)
}

// TestEmptyBareRepository: a device shares a new bare repository, another
// pushes the first commits into it, a third clones them.
func TestEmptyBareRepository(t *testing.T) {
	binaries(t)
	owner, c, other := newDevice(t, 0), newDevice(t, 1), newDevice(t, 2)
	bare := filepath.Join(t.TempDir(), "shared.git")
	owner.git("", "init", "-q", "--bare", "-b", "main", bare)
	if out, err := owner.run("", "del", "git", "share", bare, "--allow-push", c.ident.ID.String()); err != nil {
		t.Fatalf("share: %v %s", err, out)
	}
	srv := startServer(t, owner)
	work := t.TempDir()
	// Cloning the empty repository works (git warns that it is empty).
	empty := filepath.Join(work, "empty")
	if out := c.git(work, "clone", srv.url("shared"), empty); !strings.Contains(out, "empty repository") {
		t.Fatalf("clone of an empty repository: %s", out)
	}
	src := makeRepo(t, c)
	c.git(src, "remote", "add", "del", srv.url("shared"))
	c.git(src, "push", "del", "main", "dev", "--tags")
	if got, want := owner.git(bare, "rev-parse", "main", "dev", "v2"), c.git(src, "rev-parse", "main", "dev", "v2"); got != want {
		t.Fatalf("pushed refs %s, want %s", got, want)
	}
	owner.fsck(bare)
	clone := filepath.Join(work, "clone")
	other.git(work, "clone", "-q", srv.url("shared"), clone)
	if got, want := other.git(clone, "rev-parse", "HEAD"), c.git(src, "rev-parse", "main"); got != want {
		t.Fatalf("clone HEAD %s, want %s", got, want)
	}
	other.fsck(clone)
	if q, _ := filepath.Glob(filepath.Join(bare, "objects", "tmp_objdir-incoming-*")); len(q) > 0 {
		t.Fatalf("quarantine left behind: %v", q)
	}
}

// TestCloneByID: the serving device goes online through a DHT node on
// loopback and prints only its id; the others clone, fetch and push with
// del://<peer-id>/<repo>, found through the DHT and connected with ICE.
func TestCloneByID(t *testing.T) {
	binaries(t)
	owner, c, st := newDevice(t, 0), newDevice(t, 1), newDevice(t, 2)
	dht := startProcess(t, owner, `^dht listening (\S+) `, "dht", "run", "--listen", "127.0.0.1:0")
	for _, d := range []*device{owner, c, st} {
		d.extraEnv = []string{"DEL_BOOTSTRAP=" + dht.target, "DEL_INTERFACES=lo"}
	}
	src := makeRepo(t, owner)
	if out, err := owner.run("", "del", "git", "share", src, "--name", "proj", "--allow-push", c.ident.ID.String()); err != nil {
		t.Fatalf("share: %v %s", err, out)
	}
	srv := startProcess(t, owner, `^listening ([0-9a-f]{40})\n$`, "git", "serve")
	if srv.target != owner.ident.ID.String() {
		t.Fatalf("serve printed %q, want the bare id %s", srv.target, owner.ident.ID)
	}
	url := "del://" + srv.target + "/proj"
	if out, err := c.run("", "del", "git", "list", srv.target); err != nil || strings.TrimSpace(out) != "proj\tpush" {
		t.Fatalf("del git list by id: %v %q", err, out)
	}
	work := t.TempDir()
	clone := filepath.Join(work, "clone")
	c.git(work, "clone", "-q", url, clone)
	if got, want := c.git(clone, "rev-parse", "HEAD", "origin/dev", "v2"), owner.git(src, "rev-parse", "main", "dev", "v2"); got != want {
		t.Fatalf("cloned %s, want %s", got, want)
	}
	c.fsck(clone)
	c.git(clone, "checkout", "-q", "-b", "dev", "origin/dev")
	writeFile(t, filepath.Join(clone, "by-id.txt"), []byte("pushed by id\n"))
	c.git(clone, "add", ".")
	c.git(clone, "commit", "-q", "-m", "by id")
	c.git(clone, "push", "-q", "origin", "dev")
	if got, want := owner.git(src, "rev-parse", "dev"), c.git(clone, "rev-parse", "dev"); got != want {
		t.Fatalf("server dev %s, want %s", got, want)
	}
	owner.fsck(src)
	// The grant still applies by id.
	other := filepath.Join(work, "other")
	st.git(work, "clone", "-q", url, other)
	writeFile(t, filepath.Join(other, "s.txt"), []byte("s\n"))
	st.git(other, "add", ".")
	st.git(other, "commit", "-q", "-m", "stranger")
	if out := st.gitFails(other, "push", "origin", "HEAD:refs/heads/stranger"); !strings.Contains(out, "may not push") {
		t.Fatalf("push without grant by id:\n%s", out)
	}
}
