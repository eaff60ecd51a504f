package gitp2p

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/del-share/del/internal/testenv"
)

// gitIn runs git in dir with a fixed identity and returns its stdout.
func gitIn(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(cleanEnv(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir,
		"GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.org")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, stderr.Bytes())
	}
	return string(out)
}

// richRepo makes a repository with every kind of object and ref the native
// readers must handle: commits that pack as deltas of one another, tags of
// commits, of a tag and of a blob, a symbolic ref, packed refs overridden
// by loose ones, and objects both packed and loose.
func richRepo(t testing.TB) string {
	testenv.NeedBinary(t, "git")
	dir := filepath.Join(t.TempDir(), "r")
	os.MkdirAll(dir, 0o755)
	gitIn(t, dir, "init", "-q", "-b", "main")
	body := strings.Repeat("a line that stays the same in every version\n", 200)
	for i := 0; i < 40; i++ {
		os.WriteFile(filepath.Join(dir, "f.txt"), []byte(body+strconv.Itoa(i)+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("g%d.txt", i%5)), []byte(strings.Repeat(strconv.Itoa(i), 100)), 0o644)
		gitIn(t, dir, "add", "-A")
		gitIn(t, dir, "commit", "-q", "-m", "commit number "+strconv.Itoa(i)+"\n\n"+body[:400])
		if i == 10 {
			gitIn(t, dir, "branch", "old")
			gitIn(t, dir, "tag", "-a", "v0", "-m", "v0")
		}
	}
	gitIn(t, dir, "tag", "-a", "v1", "-m", "v1")
	gitIn(t, dir, "tag", "-a", "v1-of-tag", "-m", "tag of a tag", "v1")
	blob := strings.TrimSpace(gitIn(t, dir, "rev-parse", "HEAD:f.txt"))
	gitIn(t, dir, "tag", "-a", "blobtag", "-m", "tag of a blob", blob)
	gitIn(t, dir, "tag", "light", "HEAD~3")
	gitIn(t, dir, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/main")
	gitIn(t, dir, "update-ref", "refs/remotes/origin/main", "HEAD~1")
	gitIn(t, dir, "pack-refs", "--all")
	// Loose refs over packed ones, and loose objects next to the pack.
	gitIn(t, dir, "repack", "-adq", "--depth=50", "--window=50")
	for i := 0; i < 3; i++ {
		gitIn(t, dir, "commit", "-q", "--allow-empty", "-m", "loose "+strconv.Itoa(i))
	}
	gitIn(t, dir, "branch", "-f", "old", "HEAD~1")
	gitIn(t, dir, "tag", "-a", "v2", "-m", "v2 loose")
	return dir
}

// allObjects lists every object of the repository with git's type, size
// and content.
func allObjects(t testing.TB, dir string) map[string]string {
	ids := strings.Fields(gitIn(t, dir, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)"))
	cmd := exec.Command("git", "-C", dir, "cat-file", "--batch")
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(strings.Join(ids, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]string{}
	br := bufio.NewReader(bytes.NewReader(out))
	for range ids {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(line)
		size, _ := strconv.Atoi(f[2])
		body := make([]byte, size+1)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatal(err)
		}
		objs[f[0]] = f[1] + " " + string(body[:size])
	}
	return objs
}

// checkStore compares every object the store reads with git's answer.
func checkStore(t *testing.T, dir string) {
	t.Helper()
	want := allObjects(t, dir)
	s, err := openStore(filepath.Join(dir, ".git"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for oid, w := range want {
		typ, err := s.Type(oid)
		if err != nil {
			t.Fatalf("Type(%s): %v", oid, err)
		}
		rt, data, err := s.Read(oid)
		if err != nil {
			t.Fatalf("Read(%s): %v", oid, err)
		}
		if got := rt + " " + string(data); got != w || typ != rt {
			t.Fatalf("object %s: store says %q/%.40q, git says %.60q", oid, typ, got, w)
		}
	}
	if typ, err := s.Type(strings.Repeat("ab", 20)); typ != "" || err != nil {
		t.Fatalf("a missing object: %q %v", typ, err)
	}
}

// checkRefs compares the native listing with what git's own upload-pack
// advertises (ls-remote over file:// with protocol v0) and with the
// for-each-ref fallback.
func checkRefs(t *testing.T, dir string) {
	t.Helper()
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	objs := repo.openObjects(context.Background())
	defer objs.Close()
	native, err := readRefsNative(repo.GitDir, objs)
	if err != nil {
		t.Fatal(err)
	}
	viaGit, err := repo.readRefs(context.Background(), objs)
	if err != nil {
		t.Fatal(err)
	}
	show := func(r *Refs) string {
		var b strings.Builder
		if r.Head != nil {
			fmt.Fprintf(&b, "%s\tHEAD\n", r.Head.OID)
		}
		for _, ref := range r.List {
			fmt.Fprintf(&b, "%s\t%s\n", ref.OID, ref.Name)
			if ref.Peeled != "" {
				fmt.Fprintf(&b, "%s\t%s^{}\n", ref.Peeled, ref.Name)
			}
		}
		return b.String()
	}
	lsRemote := gitIn(t, dir, "-c", "protocol.version=0", "ls-remote", "file://"+dir)
	if g := show(native); g != lsRemote {
		t.Fatalf("native listing:\n%s\ngit upload-pack's:\n%s", g, lsRemote)
	}
	if g := show(viaGit); g != lsRemote {
		t.Fatalf("for-each-ref listing:\n%s\ngit upload-pack's:\n%s", g, lsRemote)
	}
	if target := strings.TrimSpace(gitIn(t, dir, "symbolic-ref", "HEAD")); native.HeadTarget != target {
		t.Fatalf("HEAD -> %q, git says %q", native.HeadTarget, target)
	}
	if len(native.List) < 3 {
		t.Fatalf("listing too short:\n%s", show(native))
	}
}

// TestObjectStore: every object of a repository read from its pack
// (offset deltas, index v2), a pack with reference deltas and index v1, an
// index with 64-bit offsets, loose objects and alternates is the content
// git cat-file gives; the native ref listing equals for-each-ref's.
func TestObjectStore(t *testing.T) {
	dir := richRepo(t)
	t.Run("ofs-delta", func(t *testing.T) {
		checkStore(t, dir)
		checkRefs(t, dir)
	})
	t.Run("ref-delta-idx-v1", func(t *testing.T) {
		gitIn(t, dir, "-c", "repack.useDeltaBaseOffset=false", "-c", "pack.indexVersion=1", "repack", "-adfq", "--depth=50", "--window=50")
		checkStore(t, dir)
		checkRefs(t, dir)
	})
	t.Run("large-offsets", func(t *testing.T) {
		gitIn(t, dir, "repack", "-adfq")
		packs, _ := filepath.Glob(filepath.Join(dir, ".git", "objects", "pack", "*.pack"))
		if len(packs) != 1 {
			t.Fatalf("packs: %v", packs)
		}
		idx := strings.TrimSuffix(packs[0], ".pack") + ".idx"
		os.Remove(idx)
		gitIn(t, dir, "index-pack", "--index-version=2,1000", "-o", idx, packs[0])
		checkStore(t, dir)
	})
	t.Run("alternates", func(t *testing.T) {
		clone := filepath.Join(t.TempDir(), "c")
		gitIn(t, dir, "clone", "-q", "--shared", dir, clone)
		gitIn(t, clone, "commit", "-q", "--allow-empty", "-m", "only in the clone")
		gitIn(t, clone, "tag", "-a", "cv", "-m", "clone tag")
		checkStore(t, clone)
		checkRefs(t, clone)
	})
	t.Run("new-pack-after-open", func(t *testing.T) {
		s, err := openStore(filepath.Join(dir, ".git"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		gitIn(t, dir, "commit", "-q", "--allow-empty", "-m", "after the store opened")
		gitIn(t, dir, "repack", "-adq")
		head := strings.TrimSpace(gitIn(t, dir, "rev-parse", "HEAD"))
		if typ, err := s.Type(head); typ != "commit" || err != nil {
			t.Fatalf("commit packed after the store opened: %q %v", typ, err)
		}
	})
}

// TestObjectStoreUnsupported: a repository with an extension is left to
// git, and its refs are still listed (through for-each-ref).
func TestObjectStoreUnsupported(t *testing.T) {
	dir, head := testRepo(t)
	gitIn(t, dir, "config", "extensions.worktreeConfig", "true")
	if _, err := openStore(filepath.Join(dir, ".git")); err != errUnsupported {
		t.Fatalf("openStore with an extension: %v", err)
	}
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := repo.ReadRefs(context.Background())
	if err != nil || refs.Head == nil || refs.Head.OID != head {
		t.Fatalf("refs %+v, %v", refs, err)
	}
	objs := repo.openObjects(context.Background())
	defer objs.Close()
	if c, err := objs.Commit(head); err != nil || c == nil {
		t.Fatalf("commit through cat-file: %v %v", c, err)
	}
}

// TestBrokenRefs: refs with bad content, a missing object, a dangling
// target or a bad name are left out of the listing (git's upload-pack
// would advertise some of them and make every clone fail).
func TestBrokenRefs(t *testing.T) {
	dir, head := testRepo(t)
	refsDir := filepath.Join(dir, ".git", "refs", "heads")
	os.WriteFile(filepath.Join(refsDir, "garbage"), []byte("not an id\n"), 0o644)
	os.WriteFile(filepath.Join(refsDir, "missing"), []byte(strings.Repeat("ab", 20)+"\n"), 0o644)
	os.WriteFile(filepath.Join(refsDir, "dangling"), []byte("ref: refs/heads/nowhere\n"), 0o644)
	os.WriteFile(filepath.Join(refsDir, "bad.lock"), []byte(head+"\n"), 0o644)
	os.WriteFile(filepath.Join(refsDir, "alias"), []byte("ref: refs/heads/main\n"), 0o644)
	repo, err := OpenRepo(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := repo.ReadRefs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range refs.List {
		names = append(names, r.Name+"="+r.OID[:7])
	}
	want := "refs/heads/alias=" + head[:7] + " refs/heads/main=" + head[:7] + " refs/tags/v1="
	if got := strings.Join(names, " "); !strings.HasPrefix(got, want) || len(names) != 3 {
		t.Fatalf("listing %q, want %q...", got, want)
	}
}

// deltaCopy and deltaInsert encode delta instructions for the tests.
func deltaCopy(off, size int) []byte {
	op := byte(0x80)
	var args []byte
	for i := 0; i < 4; i++ {
		if b := byte(off >> (8 * i)); b != 0 {
			op |= 1 << i
			args = append(args, b)
		}
	}
	for i := 0; i < 3; i++ {
		if b := byte(size >> (8 * i)); b != 0 {
			op |= 1 << (4 + i)
			args = append(args, b)
		}
	}
	return append([]byte{op}, args...)
}

func deltaVarint(v int) []byte {
	var b []byte
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func TestApplyDelta(t *testing.T) {
	base := []byte("0123456789abcdefghij")
	delta := deltaVarint(len(base))
	delta = append(delta, deltaVarint(9)...)
	delta = append(delta, deltaCopy(10, 3)...)
	delta = append(delta, 2, 'X', 'Y')
	delta = append(delta, deltaCopy(0, 4)...)
	got, err := applyDelta(base, delta)
	if err != nil || string(got) != "abcXY0123" {
		t.Fatalf("applyDelta = %q, %v", got, err)
	}
	for _, bad := range [][]byte{
		nil,
		append(deltaVarint(5), 1), // wrong base size
		append(append(deltaVarint(20), 1), deltaCopy(18, 3)...), // copy past the base
		append(append(deltaVarint(20), 2), 3, 'a', 'b', 'c'),    // result longer than said
		append(append(deltaVarint(20), 1), 0),                   // reserved opcode
	} {
		if _, err := applyDelta(base, bad); err == nil {
			t.Errorf("applyDelta accepted % x", bad)
		}
	}
}

// FuzzObjectParsers: the pack index, pack entry header, delta, loose
// header, packed-refs and tag parsers never panic on arbitrary input, and
// what they accept is consistent.
func FuzzObjectParsers(f *testing.F) {
	f.Add([]byte("0123456789"), append(append(deltaVarint(10), 5), deltaCopy(2, 5)...))
	f.Add([]byte{0x95, 0x0a}, []byte("blob 12\x00hello"))
	f.Add([]byte("# pack-refs with: peeled fully-peeled sorted\n"+strings.Repeat("a", 40)+" refs/tags/v1\n^"+strings.Repeat("b", 40)+"\n"), []byte("object "+strings.Repeat("c", 40)+"\ntype commit\n"))
	f.Add([]byte{0x6c, 0x81, 0x05}, []byte("\xfftOc\x00\x00\x00\x02"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if out, err := applyDelta(a, b); err == nil {
			_, n := deltaSize(b)
			want, m := deltaSize(b[n:])
			if uint64(len(out)) != want || m == 0 {
				t.Fatalf("delta result of %d bytes, header says %d", len(out), want)
			}
		}
		if h, n, err := parseEntryHeader(a, 1<<20); err == nil {
			if n > len(a) || h.size < 0 || h.size > maxNativeObject {
				t.Fatalf("entry header %+v length %d of %d bytes", h, n, len(a))
			}
			if h.typ == objOfsDelta && (h.baseOff < 0 || h.baseOff >= 1<<20) {
				t.Fatalf("delta base offset %d", h.baseOff)
			}
		}
		if typ, size, n, err := parseLooseHeader(b); err == nil {
			if typeName(typ) == "" || size < 0 || n > len(b) {
				t.Fatalf("loose header %d %d %d", typ, size, n)
			}
		}
		if idx, err := parseIndex(append([]byte("\xfftOc\x00\x00\x00\x02"), b...)); err == nil {
			for i := 0; i < idx.count(); i++ {
				var oid [20]byte
				copy(oid[:], idx.name(i))
				idx.find(oid)
			}
		}
		if idx, err := parseIndex(b); err == nil && idx.count() > 0 {
			idx.find([20]byte{})
		}
		if refs, err := parsePackedRefs(a); err == nil {
			for _, r := range refs {
				if !isHex40(r.oid) || r.name == "" || r.peeled != "" && !isHex40(r.peeled) {
					t.Fatalf("packed ref %+v", r)
				}
			}
		}
		if oid, ok := parseTagTarget(b); ok && !isHex40(oid) {
			t.Fatalf("tag target %q", oid)
		}
	})
}
