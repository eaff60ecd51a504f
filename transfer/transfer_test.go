package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func accept(context.Context, *OfferInfo) error { return nil }

func writeFile(t *testing.T, p string, data []byte, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type result struct {
	rep *Report
	err error
}

// run sends src to a receiver with opts over conns made by pipe and returns
// both sides' outcomes.
func run(t *testing.T, src *Source, ropts ReceiveOptions, wrap func(net.Conn) net.Conn) (send, recv result) {
	t.Helper()
	return runWith(t, src, SendOptions{}, ropts, wrap)
}

// runWith is run with the sender's options.
func runWith(t *testing.T, src *Source, sopts SendOptions, ropts ReceiveOptions, wrap func(net.Conn) net.Conn) (send, recv result) {
	t.Helper()
	a, b := net.Pipe()
	if wrap != nil {
		a = wrap(a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		recv.rep, recv.err = Receive(ctx, b, ropts)
		b.Close()
	}()
	send.rep, send.err = Send(ctx, a, src, sopts)
	a.Close()
	wg.Wait()
	return send, recv
}

func scan(t *testing.T, paths ...string) *Source {
	t.Helper()
	src, err := Scan(context.Background(), paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestSendTree(t *testing.T) {
	in := t.TempDir()
	tree := filepath.Join(in, "photos")
	big := randomBytes(t, 3*DataChunk+17)
	writeFile(t, filepath.Join(tree, "a.jpg"), big, 0o640)
	writeFile(t, filepath.Join(tree, "sub", "deep", "b.txt"), []byte("hello"), 0o755)
	writeFile(t, filepath.Join(tree, "empty.bin"), nil, 0o600)
	if err := os.MkdirAll(filepath.Join(tree, "emptydir"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deep/b.txt", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	single := filepath.Join(in, "notes.md")
	writeFile(t, single, []byte("# notes\n"), 0o644)

	out := filepath.Join(t.TempDir(), "dl")
	send, recv := run(t, scan(t, tree, single), ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send: %v, receive: %v", send.err, recv.err)
	}
	if send.rep.Files != 4 || recv.rep.Files != 4 {
		t.Fatalf("confirmed files: sender %d, receiver %d, want 4", send.rep.Files, recv.rep.Files)
	}
	check := func(rel string, want []byte, mode fs.FileMode) {
		t.Helper()
		p := filepath.Join(out, rel)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs", rel)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != mode {
			t.Fatalf("%s: mode %o, want %o", rel, st.Mode().Perm(), mode)
		}
	}
	check("photos/a.jpg", big, 0o640)
	check("photos/sub/deep/b.txt", []byte("hello"), 0o755)
	check("photos/empty.bin", nil, 0o600)
	check("notes.md", []byte("# notes\n"), 0o644)
	if st, err := os.Stat(filepath.Join(out, "photos", "emptydir")); err != nil || !st.IsDir() {
		t.Fatalf("empty directory not kept: %v", err)
	}
	if tgt, err := os.Readlink(filepath.Join(out, "photos", "link")); err != nil || tgt != "sub/deep/b.txt" {
		t.Fatalf("symlink: %q, %v", tgt, err)
	}
	if left := partials(t, out); len(left) > 0 {
		t.Fatalf("partial files left: %v", left)
	}

	// Sending the same tree again moves nothing: every file is already there.
	send, recv = run(t, scan(t, tree, single), ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("second send: %v, %v", send.err, recv.err)
	}
	if recv.rep.Skipped != 4 || send.rep.Bytes != 0 {
		t.Fatalf("second send skipped %d files and moved %d bytes, want 4 and 0", recv.rep.Skipped, send.rep.Bytes)
	}
}

func partials(t *testing.T, dir string) []string {
	var found []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".delpart") {
			found = append(found, p)
		}
		return nil
	})
	return found
}

// evilSender speaks the protocol with a hand-made offer and returns the
// receiver's decision.
func evilSender(t *testing.T, entries []Entry, ropts ReceiveOptions) (Decision, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	done := make(chan error, 1)
	go func() {
		_, err := Receive(context.Background(), b, ropts)
		b.Close()
		done <- err
	}()
	var files int
	var total int64
	for _, e := range entries {
		if e.Kind == KindFile {
			files++
			total += max(e.Size, 0)
		}
	}
	var out []byte
	out = AppendFrame(out, FrameOffer, marshal(Offer{V: Version, Entries: entries}))
	out = AppendFrame(out, FrameOfferEnd, marshal(OfferEnd{Entries: len(entries), Files: files, Bytes: total}))
	go a.Write(out)
	var dec Decision
	typ, payload, err := NewFrameReader(a).Next()
	if err != nil {
		t.Fatal(err)
	}
	if typ != FrameDecision {
		t.Fatalf("got %s, want DECISION", FrameName(typ))
	}
	if err := unmarshal(typ, payload, &dec); err != nil {
		t.Fatal(err)
	}
	a.Close()
	return dec, <-done
}

const someHash = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

func TestUnsafePathsRefused(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]Entry{
		"dot-dot":          {{Path: "../escape.txt", Kind: KindFile, Size: 1, Hash: someHash}},
		"inner dot-dot":    {{Path: "a/../../escape.txt", Kind: KindFile, Size: 1, Hash: someHash}},
		"absolute":         {{Path: filepath.Join(outside, "abs.txt"), Kind: KindFile, Size: 1, Hash: someHash}},
		"symlink out":      {{Path: "link", Kind: KindSymlink, Target: "../../etc"}},
		"symlink absolute": {{Path: "link", Kind: KindSymlink, Target: outside}},
		"file under file":  {{Path: "a", Kind: KindFile, Size: 1, Hash: someHash}, {Path: "a/b", Kind: KindFile, Size: 1, Hash: someHash}},
		"backslash":        {{Path: "..\\x", Kind: KindFile, Size: 1, Hash: someHash}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "in")
			dec, err := evilSender(t, entries, ReceiveOptions{Dir: dir, Decide: accept})
			if dec.Accept || !errors.Is(err, ErrRefused) {
				t.Fatalf("decision %+v, err %v: want refused", dec, err)
			}
			if !strings.Contains(dec.Reason, "unsafe") {
				t.Fatalf("reason %q does not say why", dec.Reason)
			}
			assertEmpty(t, outside)
		})
	}
	// A symlink already in the target folder must not lead a file outside.
	t.Run("existing symlink in target", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Symlink(outside, filepath.Join(dir, "out")); err != nil {
			t.Fatal(err)
		}
		dec, err := evilSender(t, []Entry{{Path: "out/x.txt", Kind: KindFile, Size: 1, Hash: someHash}}, ReceiveOptions{Dir: dir, Decide: accept})
		if dec.Accept || !errors.Is(err, ErrRefused) {
			t.Fatalf("decision %+v, err %v: want refused", dec, err)
		}
		assertEmpty(t, outside)
	})
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("something was written outside the target folder: %v", ents)
	}
}

// flipConn corrupts one byte of the stream after skip bytes.
type flipConn struct {
	net.Conn
	mu   sync.Mutex
	skip int
	done bool
}

func (c *flipConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if !c.done && c.skip < len(p) {
		q := append([]byte(nil), p...)
		q[c.skip] ^= 0x40
		p, c.done = q, true
	} else if !c.done {
		c.skip -= len(p)
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func TestCorruptedChunkNotPromoted(t *testing.T) {
	in := t.TempDir()
	data := randomBytes(t, 2*DataChunk)
	writeFile(t, filepath.Join(in, "f.bin"), data, 0o644)
	src := scan(t, filepath.Join(in, "f.bin"))
	out := t.TempDir()
	// Count the offer's bytes so the flip lands inside file data.
	offerLen := 0
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, func(c net.Conn) net.Conn {
		return &flipConn{Conn: c, skip: offerLen + 4096 + 3*HeaderSize + 600}
	})
	if !errors.Is(send.err, ErrNotConfirmed) {
		t.Fatalf("sender: %v, want ErrNotConfirmed", send.err)
	}
	if !errors.Is(recv.err, ErrNotConfirmed) || !strings.Contains(recv.err.Error(), "hash mismatch") {
		t.Fatalf("receiver: %v, want a hash mismatch", recv.err)
	}
	if _, err := os.Stat(filepath.Join(out, "f.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("corrupted file was promoted: %v", err)
	}
	if p := partials(t, out); len(p) != 0 {
		t.Fatalf("corrupted partial copy kept: %v", p)
	}
}

// cutConn closes the connection after limit bytes were written.
type cutConn struct {
	net.Conn
	limit int
}

func (c *cutConn) Write(p []byte) (int, error) {
	if len(p) >= c.limit {
		n, _ := c.Conn.Write(p[:c.limit])
		c.Conn.Close()
		return n, io.ErrClosedPipe
	}
	c.limit -= len(p)
	return c.Conn.Write(p)
}

func TestResumeAfterCut(t *testing.T) {
	in := t.TempDir()
	data := randomBytes(t, 3*BlockSize+123)
	writeFile(t, filepath.Join(in, "big.iso"), data, 0o644)
	out := t.TempDir()
	send, recv := run(t, scan(t, filepath.Join(in, "big.iso")), ReceiveOptions{Dir: out, Decide: accept}, func(c net.Conn) net.Conn {
		return &cutConn{Conn: c, limit: 2*BlockSize + 5000}
	})
	if send.err == nil || recv.err == nil {
		t.Fatalf("a cut connection must fail both sides: send %v, receive %v", send.err, recv.err)
	}
	if _, err := os.Stat(filepath.Join(out, "big.iso")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("half-written file under the final name")
	}
	left := partials(t, out)
	if len(left) != 1 {
		t.Fatalf("want one resumable partial file, found %v", left)
	}
	st, _ := os.Stat(left[0])
	if st.Size() == 0 || st.Size() >= int64(len(data)) {
		t.Fatalf("partial file has %d bytes", st.Size())
	}

	send, recv = run(t, scan(t, filepath.Join(in, "big.iso")), ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("resume: send %v, receive %v", send.err, recv.err)
	}
	// Whole blocks of the partial copy are kept; a torn last block is not.
	kept := st.Size() / BlockSize * BlockSize
	if kept == 0 || recv.rep.Resumed != kept || send.rep.Bytes != int64(len(data))-kept {
		t.Fatalf("resumed %d and moved %d bytes; partial had %d of %d", recv.rep.Resumed, send.rep.Bytes, st.Size(), len(data))
	}
	got, _ := os.ReadFile(filepath.Join(out, "big.iso"))
	if !bytes.Equal(got, data) {
		t.Fatal("resumed file differs from the original")
	}
	if left := partials(t, out); len(left) != 0 {
		t.Fatalf("partial left after completion: %v", left)
	}
}

func TestResumeWithForeignPartialStartsOver(t *testing.T) {
	in := t.TempDir()
	data := randomBytes(t, 2*BlockSize)
	writeFile(t, filepath.Join(in, "f"), data, 0o644)
	src := scan(t, filepath.Join(in, "f"))
	out := t.TempDir()
	// A partial copy, one whole block long, whose bytes are not the sender's.
	writeFile(t, filepath.Join(out, partialName("f", src.Entries[0].Hash[:16])), randomBytes(t, BlockSize+1000), 0o600)
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	if send.rep.Bytes != int64(len(data)) {
		t.Fatalf("moved %d bytes, want the whole %d", send.rep.Bytes, len(data))
	}
	got, _ := os.ReadFile(filepath.Join(out, "f"))
	if !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

func TestDiskSpaceRefusedUpFront(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "f"), randomBytes(t, 5000), 0o644)
	out := filepath.Join(t.TempDir(), "dl")
	send, recv := run(t, scan(t, filepath.Join(in, "f")), ReceiveOptions{
		Dir: out, Decide: accept,
		FreeSpace: func(string) (int64, error) { return 4999, nil },
	}, nil)
	if !errors.Is(send.err, ErrDeclined) || !errors.Is(recv.err, ErrRefused) {
		t.Fatalf("send %v, receive %v: want declined", send.err, recv.err)
	}
	if !strings.Contains(send.rep.Reason, "disk space") {
		t.Fatalf("reason %q", send.rep.Reason)
	}
	assertEmpty(t, out)
}

func TestExistingFileNotOverwritten(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "f.txt"), []byte("new"), 0o644)
	out := t.TempDir()
	writeFile(t, filepath.Join(out, "f.txt"), []byte("old"), 0o644)
	send, recv := run(t, scan(t, filepath.Join(in, "f.txt")), ReceiveOptions{Dir: out, Decide: accept}, nil)
	if !errors.Is(send.err, ErrDeclined) || !errors.Is(recv.err, ErrRefused) || !strings.Contains(send.rep.Reason, "--overwrite") {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "f.txt")); string(got) != "old" {
		t.Fatalf("existing file changed to %q", got)
	}
	send, recv = run(t, scan(t, filepath.Join(in, "f.txt")), ReceiveOptions{Dir: out, Decide: accept, Overwrite: true}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("with overwrite: send %v, receive %v", send.err, recv.err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "f.txt")); string(got) != "new" {
		t.Fatalf("file is %q after overwrite", got)
	}
}

func TestConsentPolicy(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "f"), []byte("x"), 0o644)
	out := t.TempDir()
	var seen *OfferInfo
	send, recv := run(t, scan(t, filepath.Join(in, "f")), ReceiveOptions{Dir: out, Remote: "abc",
		Decide: func(_ context.Context, o *OfferInfo) error { seen = o; return errors.New("not from strangers") }}, nil)
	if !errors.Is(send.err, ErrDeclined) || !strings.Contains(send.err.Error(), "not from strangers") || !errors.Is(recv.err, ErrRefused) {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	if seen == nil || seen.Files != 1 || seen.Bytes != 1 || seen.Remote != "abc" {
		t.Fatalf("policy saw %+v", seen)
	}
	assertEmpty(t, out)
	// No policy at all declines: nothing is received without consent.
	send, _ = run(t, scan(t, filepath.Join(in, "f")), ReceiveOptions{Dir: out}, nil)
	if !errors.Is(send.err, ErrDeclined) {
		t.Fatalf("without a policy: %v", send.err)
	}
	assertEmpty(t, out)
}

// countingReader yields n pseudo-random bytes without holding them.
type countingReader struct {
	n, off int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if int64(len(p)) > r.n-r.off {
		p = p[:r.n-r.off]
	}
	for i := range p {
		p[i] = byte((r.off + int64(i)) * 7919 >> 3)
	}
	r.off += int64(len(p))
	return len(p), nil
}

func TestStreamToStdout(t *testing.T) {
	const n = 5*DataChunk + 99
	src, err := StreamSource("stdin", &countingReader{n: n})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	out := t.TempDir()
	send, recv := run(t, src, ReceiveOptions{Dir: out, Stdout: &buf, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	want, _ := io.ReadAll(&countingReader{n: n})
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("stdout got %d bytes, want %d identical", buf.Len(), n)
	}
	assertEmpty(t, out)
}

func TestStreamToFile(t *testing.T) {
	src, _ := StreamSource("log.txt", strings.NewReader("streamed\n"))
	out := t.TempDir()
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "log.txt")); string(got) != "streamed\n" {
		t.Fatalf("got %q", got)
	}
}

func TestSpecialFilesLeftOut(t *testing.T) {
	in := filepath.Join(t.TempDir(), "tree")
	writeFile(t, filepath.Join(in, "a.txt"), []byte("a"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(in, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := scan(t, in)
	if len(src.Skipped) != 1 || !strings.HasSuffix(src.Skipped[0], "pipe") {
		t.Fatalf("skipped %v, want the FIFO", src.Skipped)
	}
	out := t.TempDir()
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil || recv.rep.Files != 1 {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
}

// stepRecorder records the largest Advance step a sender reports.
type stepRecorder struct {
	noProgress
	mu      sync.Mutex
	maxStep int64
	total   int64
}

func (p *stepRecorder) Advance(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maxStep = max(p.maxStep, n)
	p.total += n
}

// A rate-limited send moves its data in small steps (about a tenth of a
// second's worth), not in bursts of full-size frames, and is not faster
// than the limit.
func TestRateLimitedSendIsEven(t *testing.T) {
	in, out := t.TempDir(), t.TempDir()
	const rate = 4 << 20
	data := randomBytes(t, 3*DataChunk)
	writeFile(t, filepath.Join(in, "f.bin"), data, 0o644)
	pr := &stepRecorder{}
	start := time.Now()
	send, recv := runWith(t, scan(t, filepath.Join(in, "f.bin")), SendOptions{Progress: pr, RateLimit: rate},
		ReceiveOptions{Dir: out, Decide: accept}, nil)
	elapsed := time.Since(start)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	got, err := os.ReadFile(filepath.Join(out, "f.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("received file differs (%v)", err)
	}
	if pr.total != int64(len(data)) {
		t.Fatalf("progress reported %d bytes, sent %d", pr.total, len(data))
	}
	if limit := int64(rate / 10); pr.maxStep > limit {
		t.Errorf("largest step %d bytes, want at most a tenth of a second's worth (%d)", pr.maxStep, limit)
	}
	// Pacing sleeps after each step until the data sent is due; only the
	// last step is not waited for.
	if min := time.Duration(float64(int64(len(data))-pr.maxStep) / rate * float64(time.Second)); elapsed < min {
		t.Errorf("sent %d bytes in %v at a %d B/s limit; expected at least %v", len(data), elapsed, rate, min)
	}
}

// TestFsync: with Fsync each file's data is flushed before it takes its
// final name and its folder after, all before the sender hears the file
// arrived; a failed flush fails the file (nothing under the final name).
// Without Fsync nothing is flushed.
func TestFsync(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "tree", "a.bin"), randomBytes(t, DataChunk+5), 0o644)
	writeFile(t, filepath.Join(in, "tree", "sub", "b.txt"), []byte("b"), 0o644)
	type call struct {
		name  string
		isDir bool
		// for a folder: the file flushed just before had its final name
		// and its partial copy was gone
		renamed bool
	}
	var calls []call
	fail, lastPartial := "", ""
	orig := syncFile
	t.Cleanup(func() { syncFile = orig })
	for _, fsync := range []bool{true, false} {
		calls, fail, lastPartial = nil, "", ""
		out := t.TempDir()
		syncFile = func(f *os.File) error {
			st, err := f.Stat()
			if err != nil {
				return err
			}
			c := call{name: f.Name(), isDir: st.IsDir()}
			if c.isDir && lastPartial != "" {
				// ".NAME.TAG.delpart" became "NAME"
				base := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(lastPartial), "."), ".delpart")
				final := filepath.Join(filepath.Dir(lastPartial), base[:strings.LastIndex(base, ".")])
				_, perr := os.Stat(lastPartial)
				_, ferr := os.Stat(final)
				c.renamed = errors.Is(perr, fs.ErrNotExist) && ferr == nil
			} else if !c.isDir {
				lastPartial = c.name
			}
			calls = append(calls, c)
			if fail != "" && strings.Contains(f.Name(), fail) {
				return errors.New("disk on fire")
			}
			return orig(f)
		}
		send, recv := run(t, scan(t, filepath.Join(in, "tree")), ReceiveOptions{Dir: out, Decide: accept, Fsync: fsync}, nil)
		if send.err != nil || recv.err != nil || send.rep.Files != 2 {
			t.Fatalf("fsync=%v: send %v, receive %v", fsync, send.err, recv.err)
		}
		if !fsync {
			if len(calls) != 0 {
				t.Fatalf("without Fsync: %d flushes", len(calls))
			}
			continue
		}
		// a file flush (of the partial copy, before its rename), then its folder
		var files, dirs []string
		for _, c := range calls {
			if c.isDir {
				dirs = append(dirs, c.name)
			} else {
				files = append(files, filepath.Base(c.name))
			}
		}
		if len(files) != 2 || len(dirs) != 2 {
			t.Fatalf("flushes: files %v, folders %v", files, dirs)
		}
		for i, c := range calls {
			if c.isDir != (i%2 == 1) {
				t.Fatalf("flush order %+v: want file, folder, file, folder", calls)
			}
			if !c.isDir && !strings.HasSuffix(c.name, ".delpart") {
				t.Errorf("flushed %s, not the partial copy before its rename", c.name)
			}
			if c.isDir && !c.renamed {
				t.Errorf("folder %s flushed before the file flushed just before took its final name", c.name)
			}
		}
	}

	// a failed flush: that file is refused, nothing under its name
	calls, fail = nil, "a.bin"
	out := t.TempDir()
	send, recv := run(t, scan(t, filepath.Join(in, "tree")), ReceiveOptions{Dir: out, Decide: accept, Fsync: true}, nil)
	if send.err == nil || recv.err == nil || send.rep.Files != 1 {
		t.Fatalf("a flush failed: send %v (%d files confirmed), receive %v", send.err, send.rep.Files, recv.err)
	}
	if !strings.Contains(recv.err.Error(), "disk on fire") && !strings.Contains(strings.Join(recv.rep.Failed, ";"), "disk on fire") {
		t.Errorf("the error does not say why: %v %v", recv.err, recv.rep.Failed)
	}
	if _, err := os.Stat(filepath.Join(out, "tree", "a.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a.bin under its final name after its flush failed: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(out, "tree", ".*delpart"))
	if len(left) != 0 {
		t.Errorf("partial copies left: %v", left)
	}
}
