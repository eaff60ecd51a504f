package gitp2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/testenv"
)

// testRepo makes a small repository with one commit and a tag and returns
// its path and the commit id.
func testRepo(t testing.TB) (string, string) {
	testenv.NeedBinary(t, "git")
	dir := filepath.Join(t.TempDir(), "r")
	run := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(cleanEnv(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir,
			"GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.org")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	os.MkdirAll(dir, 0o755)
	run("init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(dir, "f"), []byte("x\n"), 0o644)
	run("add", "f")
	run("commit", "-q", "-m", "one")
	run("tag", "-a", "v1", "-m", "v1")
	return dir, run("rev-parse", "HEAD")
}

type pipeRW struct {
	r   io.Reader
	out bytes.Buffer
}

func (p *pipeRW) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeRW) Write(b []byte) (int, error) { return p.out.Write(b) }
func (p *pipeRW) Bytes() []byte               { return p.out.Bytes() }

// lastPacket returns the payload of the last data packet of a pkt-line stream.
func lastPacket(b []byte) (string, bool) {
	last := ""
	for len(b) > 0 {
		kind, p, n, err := Parse(b)
		if err != nil {
			return "", false
		}
		if kind == Data {
			last = string(p)
		}
		b = b[n:]
	}
	return last, true
}

func TestServeRefusals(t *testing.T) {
	dir, head := testRepo(t)
	var fetcher, pusher identity.ID
	fetcher[0], pusher[0] = 1, 2
	policy := &Shares{Shares: []Share{{Name: "proj", Path: dir, Push: []string{pusher.String()}}}}
	for _, tc := range []struct {
		name   string
		remote identity.ID
		repo   string
		in     string
		want   string // in the last packet
	}{
		{"unknown repo", fetcher, "nope", string(AppendRequest(nil, UploadPackService, "nope")), "ERR repository not shared"},
		{"push without grant", fetcher, "proj", string(AppendRequest(nil, ReceivePackService, "proj")), "ERR push not allowed"},
		{"garbage", fetcher, "proj", "hello world", "ERR pkt-line: bad length"},
		{"not our ref", fetcher, "proj", string(AppendRequest(nil, UploadPackService, "proj")) + string(AppendString(nil, "want "+strings.Repeat("1", 40)+"\n")), "ERR upload-pack: not our ref"},
		{"bad have", fetcher, "proj", string(AppendRequest(nil, UploadPackService, "proj")) + string(AppendString(nil, "want "+head+" multi_ack\n")) + "0000" + string(AppendString(nil, "have zz\n")), "ERR protocol error"},
		{"bad command", pusher, "proj", string(AppendRequest(nil, ReceivePackService, "proj")) + string(AppendString(nil, "abc def refs/heads/x\x00report-status\n")) + "0000", "ERR protocol error: bad command"},
		{"bad pack", pusher, "proj", string(AppendRequest(nil, ReceivePackService, "proj")) + string(AppendString(nil, ZeroID+" "+head+" refs/heads/x\x00report-status\n")) + "0000" + "PACK\x00\x00\x00\x02\x00\x00\x00\x01\xff\xff", "ng refs/heads/x unpacker error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rw := &pipeRW{r: strings.NewReader(tc.in)}
			err := Serve(ctx, rw, tc.remote, tc.repo, policy)
			if err == nil {
				t.Fatal("Serve accepted it")
			}
			last, ok := lastPacket(rw.Bytes())
			if !ok || !strings.HasPrefix(last, tc.want) {
				t.Fatalf("last packet %q (parsed %v), want %q; err %v", last, ok, tc.want, err)
			}
		})
	}
	// Nothing of the bad pack reached the repository.
	if q, _ := filepath.Glob(filepath.Join(dir, ".git", "objects", "tmp_objdir-*")); len(q) > 0 {
		t.Fatalf("quarantine left: %v", q)
	}
}

func TestValidRefName(t *testing.T) {
	for name, ok := range map[string]bool{
		"refs/heads/main": true, "refs/tags/v1.0": true, "refs/heads/a/b-c_d": true,
		"HEAD": false, "refs/heads/": false, "refs/heads/a..b": false, "refs/heads/.x": false,
		"refs/heads/x.lock": false, "refs/heads/a b": false, "refs/heads/a~1": false, "refs/heads/a^": false,
		"refs/heads/a:b": false, "refs/heads/a@{1}": false, "refs//heads": false, "refs/heads/x.": false,
		"refs/heads/\x01": false, "refs/heads/a\\b": false, "refs/heads/*": false,
	} {
		if validRefName(name) != ok {
			t.Errorf("validRefName(%q) = %v", name, !ok)
		}
	}
}

func TestSharesFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "home", "git-shares.json")
	s, err := LoadShares(file)
	if err != nil || len(s.Shares) != 0 {
		t.Fatalf("missing file: %v %v", s, err)
	}
	var a identity.ID
	a[0] = 7
	if err := s.Add(Share{Name: "../x", Path: "/tmp"}); err == nil {
		t.Fatal("bad name accepted")
	}
	if err := s.Add(Share{Name: "p", Path: "/tmp/p", Push: []string{"nothex"}}); err == nil {
		t.Fatal("bad peer id accepted")
	}
	if err := s.Add(Share{Name: "p", Path: "/tmp/p", Push: []string{a.String()}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(file); err != nil {
		t.Fatal(err)
	}
	s2, err := LoadShares(file)
	if err != nil {
		t.Fatal(err)
	}
	acc, err := FilePolicy(file).Lookup(a, "p")
	if err != nil || !acc.Push || acc.Force || acc.Path != "/tmp/p" {
		t.Fatalf("lookup %+v %v", acc, err)
	}
	var b identity.ID
	if acc, err := s2.Lookup(b, "p"); err != nil || acc.Push {
		t.Fatalf("other peer %+v %v", acc, err)
	}
	if _, err := s2.Lookup(a, "q"); !errors.Is(err, ErrNotShared) {
		t.Fatalf("unknown: %v", err)
	}
	if !s2.Remove("p") || s2.Remove("p") {
		t.Fatal("remove")
	}
	if DefaultName("/a/b/proj.git") != "proj" || DefaultName("/a/proj/.git") != "proj" {
		t.Fatal("DefaultName")
	}
}

// FuzzServe feeds arbitrary client bytes to a session: it never panics,
// always returns, and a protocol error is answered with an ERR packet.
func FuzzServe(f *testing.F) {
	dir, head := testRepo(f)
	var remote identity.ID
	remote[0] = 9
	policy := &Shares{Shares: []Share{{Name: "proj", Path: dir, Push: []string{remote.String()}}}}
	up := string(AppendRequest(nil, UploadPackService, "proj"))
	rp := string(AppendRequest(nil, ReceivePackService, "proj"))
	want := string(AppendString(nil, "want "+head+" multi_ack_detailed side-band-64k thin-pack ofs-delta no-done\n"))
	for _, s := range []string{
		"", "0000", up, up + "0000", up + want + "0000" + "0009done\n",
		up + want + string(AppendString(nil, "deepen 1\n")) + "0000" + "0009done\n",
		up + want + string(AppendString(nil, "shallow "+head+"\n")) + "0000",
		up + want + "0000" + string(AppendString(nil, "have "+head+"\n")) + "0000" + "0009done\n",
		up + want + string(AppendString(nil, "deepen -1\n")), up + "0001", up + "fff5",
		rp + string(AppendString(nil, ZeroID+" "+head+" refs/heads/x\x00report-status atomic\n")) + "0000" + "PACK\x00\x00\x00\x02\x00\x00\x00\x00" + strings.Repeat("\x00", 20),
		rp + string(AppendString(nil, head+" "+ZeroID+" refs/heads/main\n")) + "0000",
		rp + string(AppendString(nil, ZeroID+" "+head+" refs/heads/y\n")) + "0000" + "PACK\x00\x00\x00\x02\x00\x00\x00\x01\x95\x0ax\x9c",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rw := &pipeRW{r: bytes.NewReader(in)}
		err := Serve(ctx, rw, remote, "proj", policy)
		if ctx.Err() != nil {
			t.Fatal("Serve did not return in time")
		}
		var pe *ProtocolError
		if errors.As(err, &pe) {
			if last, ok := lastPacket(rw.Bytes()); ok && !strings.HasPrefix(last, "ERR ") {
				t.Fatalf("protocol error %v answered with %q", err, last)
			}
		}
	})
}

// TestNoDone drives upload-pack as a stateless (HTTP-like) client would:
// multi_ack_detailed and no-done, one have that is the want's parent. The
// server says common, ready, NAK, then ACK and sends the pack without
// waiting for "done".
func TestNoDone(t *testing.T) {
	dir, first := testRepo(t)
	cmd := exec.Command("git", "-c", "user.name=T", "-c", "user.email=t@example.org", "commit", "-q", "--allow-empty", "-m", "two")
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out, _ := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	second := strings.TrimSpace(string(out))
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	var in []byte
	in = AppendString(in, "want "+second+" multi_ack_detailed no-done side-band-64k ofs-delta\n")
	in = AppendFlush(in)
	in = AppendString(in, "have "+first+"\n")
	in = AppendFlush(in)
	rw := &pipeRW{r: bytes.NewReader(in)}
	if err := UploadPack(context.Background(), repo, rw, rw); err != nil {
		t.Fatal(err)
	}
	b := rw.Bytes()
	var lines []string
	var pack []byte
	flushes := 0
	for len(b) > 0 {
		kind, p, n, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		b = b[n:]
		if kind == Flush {
			flushes++
			continue
		}
		if flushes == 1 && len(lines) < 4 { // after the advertisement
			lines = append(lines, strings.TrimSpace(string(p)))
			continue
		}
		if flushes == 1 {
			band, d, err := ParseSideband(p)
			if err != nil {
				t.Fatal(err)
			}
			if band == BandData {
				pack = append(pack, d...)
			}
		}
	}
	want := []string{"ACK " + first + " common", "ACK " + first + " ready", "NAK", "ACK " + first}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("negotiation %q, want %q", lines, want)
	}
	if flushes != 2 || len(pack) < 32 || string(pack[:4]) != "PACK" {
		t.Fatalf("pack of %d bytes, %d flushes", len(pack), flushes)
	}
	// The pack holds the new commit only (its tree is the first one's).
	if n := int(pack[11]); n != 1 {
		t.Fatalf("pack has %d objects, want 1", n)
	}
}

// TestStaleOldValue: an update whose old value is not the ref's current
// value is refused ("stale info") and the ref does not move.
func TestStaleOldValue(t *testing.T) {
	dir, head := testRepo(t)
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	stale := strings.Repeat("1", 40)
	var in []byte
	in = AppendString(in, stale+" "+ZeroID+" refs/tags/v1\x00report-status delete-refs\n")
	in = AppendString(in, head+" "+ZeroID+" refs/heads/nope\n")
	in = AppendFlush(in)
	rw := &pipeRW{r: bytes.NewReader(in)}
	if err := ReceivePack(context.Background(), repo, rw, rw, ReceiveOptions{AllowForce: true}); err != nil {
		t.Fatal(err)
	}
	out := string(rw.Bytes())
	for _, want := range []string{"unpack ok", "ng refs/tags/v1 stale info", "ng refs/heads/nope stale info"} {
		if !strings.Contains(out, want) {
			t.Fatalf("report lacks %q:\n%q", want, out)
		}
	}
	if _, err := exec.Command("git", "-C", dir, "rev-parse", "-q", "--verify", "refs/tags/v1").Output(); err != nil {
		t.Fatal("v1 was deleted")
	}
}

func TestListRoundTrip(t *testing.T) {
	var a, b identity.ID
	a[0], b[0] = 1, 2
	s := &Shares{}
	s.Add(Share{Name: "one", Path: "/x"})
	s.Add(Share{Name: "two", Path: "/y", Push: []string{a.String()}, Force: true})
	for _, tc := range []struct {
		who  identity.ID
		want string
	}{{a, "one read,two force"}, {b, "one read,two read"}} {
		var buf bytes.Buffer
		if err := WriteList(&buf, s.List(tc.who)); err != nil {
			t.Fatal(err)
		}
		l, err := ReadList(&buf)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range l {
			got = append(got, e.Name+" "+e.Access)
		}
		if strings.Join(got, ",") != tc.want {
			t.Fatalf("listing %q, want %q", got, tc.want)
		}
	}
	if _, err := ReadList(strings.NewReader("000dbad/name x\n0000")); err == nil {
		t.Fatal("bad listing accepted")
	}
}

// TestReadRefsFollowsChanges: the listing, read from the repository's
// files, follows every kind of ref change.
func TestReadRefsFollowsChanges(t *testing.T) {
	dir, head := testRepo(t)
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	git := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(cleanEnv(), "HOME="+dir, "GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.org", "GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.org")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	list := func() string {
		refs, err := repo.ReadRefs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		if refs.Head != nil {
			fmt.Fprintf(&b, "HEAD=%s>%s ", refs.Head.OID[:7], refs.HeadTarget)
		}
		for _, r := range refs.List {
			fmt.Fprintf(&b, "%s=%s ", r.Name, r.OID[:7])
		}
		return b.String()
	}
	h := head[:7]
	steps := []struct {
		change func()
		want   string
	}{
		{func() {}, "HEAD=" + h + ">refs/heads/main refs/heads/main=" + h + " refs/tags/v1="},
		{func() { git("branch", "b2") }, "refs/heads/b2=" + h},
		{func() { git("pack-refs", "--all") }, "refs/heads/b2=" + h},
		{func() { git("branch", "-D", "b2") }, "!refs/heads/b2"},
		{func() { git("commit", "-q", "--allow-empty", "-m", "2") }, "!refs/heads/main=" + h},
		{func() { git("checkout", "-q", "--detach", head) }, "HEAD=" + h + ">"},
	}
	for i, st := range steps {
		st.change()
		got := list()
		if again := list(); again != got {
			t.Fatalf("step %d: second listing differs: %q vs %q", i, again, got)
		}
		if neg, ok := strings.CutPrefix(st.want, "!"); ok {
			if strings.Contains(got, neg) {
				t.Fatalf("step %d: listing %q still has %q", i, got, neg)
			}
		} else if !strings.Contains(got, st.want) {
			t.Fatalf("step %d: listing %q lacks %q", i, got, st.want)
		}
	}
}

// TestOldSideband: a client that asks for side-band (not -64k) gets the
// pack in packets of at most 1000 bytes, with the progress on band 2.
func TestOldSideband(t *testing.T) {
	dir, _ := testRepo(t)
	random := make([]byte, 64000)
	rand.Read(random)
	os.WriteFile(filepath.Join(dir, "big"), random, 0o644)
	for _, args := range [][]string{{"add", "big"}, {"-c", "user.name=T", "-c", "user.email=t@example.org", "commit", "-q", "-m", "big"}} {
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(cleanEnv(), "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	out, _ := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	tip := strings.TrimSpace(string(out))
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	var in []byte
	in = AppendString(in, "want "+tip+" side-band ofs-delta\n")
	in = AppendFlush(in)
	in = AppendString(in, "done\n")
	rw := &pipeRW{r: bytes.NewReader(in)}
	if err := UploadPack(context.Background(), repo, rw, rw); err != nil {
		t.Fatal(err)
	}
	b := rw.Bytes()
	flushes, progress := 0, 0
	var pack []byte
	for len(b) > 0 {
		kind, p, n, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		b = b[n:]
		if kind == Flush {
			flushes++
			continue
		}
		if flushes == 0 || string(p) == "NAK\n" {
			continue
		}
		if n > 1000 {
			t.Fatalf("side-band packet of %d bytes", n)
		}
		band, d, err := ParseSideband(p)
		if err != nil {
			t.Fatal(err)
		}
		switch band {
		case BandData:
			pack = append(pack, d...)
		case BandProgress:
			progress++
		}
	}
	if len(pack) < 64000 || string(pack[:4]) != "PACK" || flushes != 2 {
		t.Fatalf("pack of %d bytes, %d flushes", len(pack), flushes)
	}
	if progress == 0 {
		t.Fatal("no progress on band 2")
	}
	// The pack is one git accepts.
	cmd := exec.Command("git", "-C", dir, "index-pack", "--stdin", "--fix-thin")
	cmd.Stdin = bytes.NewReader(pack)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("index-pack: %v %s", err, out)
	}
}
