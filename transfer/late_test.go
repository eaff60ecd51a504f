package transfer

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// scanLate scans as `del send` does: hashes the cache does not know are left
// for FILE_END.
func scanLate(t *testing.T, cache HashCache, paths ...string) *Source {
	t.Helper()
	src, err := ScanWith(context.Background(), paths, ScanOptions{Late: true, Cache: cache,
		Now: func() time.Time { return time.Now().Add(time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestLateHashTree(t *testing.T) {
	in := t.TempDir()
	tree := filepath.Join(in, "photos")
	big := randomBytes(t, BlockSize+3*DataChunk+17)
	writeFile(t, filepath.Join(tree, "a.jpg"), big, 0o640)
	writeFile(t, filepath.Join(tree, "sub", "b.txt"), []byte("hello"), 0o755)
	writeFile(t, filepath.Join(tree, "empty.bin"), nil, 0o600)
	cache := &countingCache{DirCache: DirCache{Dir: filepath.Join(t.TempDir(), "cache")}}

	src := scanLate(t, cache, tree)
	for _, e := range src.Entries {
		if e.Kind == KindFile && e.Hash != "" {
			t.Fatalf("%s offered with a hash: the scan hashed it", e.Path)
		}
	}
	out := filepath.Join(t.TempDir(), "dl")
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send: %v, receive: %v", send.err, recv.err)
	}
	if send.rep.Files != 3 || recv.rep.Files != 3 {
		t.Fatalf("confirmed files: sender %d, receiver %d, want 3", send.rep.Files, recv.rep.Files)
	}
	for rel, want := range map[string][]byte{"photos/a.jpg": big, "photos/sub/b.txt": []byte("hello"), "photos/empty.bin": nil} {
		if got, err := os.ReadFile(filepath.Join(out, rel)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs (%v)", rel, err)
		}
	}
	if left := partials(t, out); len(left) > 0 {
		t.Fatalf("partial files left: %v", left)
	}
	// Moving files computes no content hash (the transit sum checks the
	// bytes): nothing entered the cache.
	if cache.puts != 0 {
		t.Fatalf("%d files cached by a plain send", cache.puts)
	}

	// Sending again: the receiver asks for the hashes of the files it
	// already has (same sizes), the sender hashes them (and caches them),
	// and nothing moves.
	send, recv = run(t, scanLate(t, cache, tree), ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("second send: %v, %v", send.err, recv.err)
	}
	if recv.rep.Skipped != 3 || send.rep.Bytes != 0 || cache.puts != 3 {
		t.Fatalf("second send skipped %d files, moved %d bytes, cached %d; want 3, 0, 3", recv.rep.Skipped, send.rep.Bytes, cache.puts)
	}
	// The next offer carries the cached hashes, which are the content
	// hashes of what the receiver holds.
	again := scanLate(t, cache, tree)
	for _, e := range again.Entries {
		if e.Kind != KindFile {
			continue
		}
		data, _ := os.ReadFile(filepath.Join(out, filepath.FromSlash(e.Path)))
		if e.Hash != contentHash(data) {
			t.Fatalf("%s: cached hash %q, content hash %q", e.Path, e.Hash, contentHash(data))
		}
	}
	send, recv = run(t, again, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil || recv.rep.Skipped != 3 || send.rep.Bytes != 0 {
		t.Fatalf("third send: %v, %v, skipped %d, moved %d", send.err, recv.err, recv.rep.Skipped, send.rep.Bytes)
	}
}

func TestLateHashExistingFileNotOverwritten(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "f.txt"), []byte("new"), 0o644)
	out := t.TempDir()
	writeFile(t, filepath.Join(out, "f.txt"), []byte("old"), 0o644) // same size
	send, recv := run(t, scanLate(t, nil, filepath.Join(in, "f.txt")), ReceiveOptions{Dir: out, Decide: accept}, nil)
	if !errors.Is(send.err, ErrDeclined) || !errors.Is(recv.err, ErrRefused) || !strings.Contains(send.rep.Reason, "--overwrite") {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "f.txt")); string(got) != "old" {
		t.Fatalf("existing file changed to %q", got)
	}
	send, recv = run(t, scanLate(t, nil, filepath.Join(in, "f.txt")), ReceiveOptions{Dir: out, Decide: accept, Overwrite: true}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("with overwrite: send %v, receive %v", send.err, recv.err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "f.txt")); string(got) != "new" {
		t.Fatalf("file is %q after overwrite", got)
	}
}

// A cut transfer of a file offered without its hash resumes, whether the
// next offer still lacks the hash or has it (from the cache).
func TestLateHashResume(t *testing.T) {
	for _, next := range []string{"late", "hashed"} {
		t.Run(next, func(t *testing.T) {
			in := t.TempDir()
			data := randomBytes(t, 3*BlockSize+123)
			f := filepath.Join(in, "big.iso")
			writeFile(t, f, data, 0o644)
			out := t.TempDir()
			send, recv := run(t, scanLate(t, nil, f), ReceiveOptions{Dir: out, Decide: accept}, func(c net.Conn) net.Conn {
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
			kept := st.Size() / BlockSize * BlockSize
			if kept == 0 {
				t.Fatalf("partial file has only %d bytes", st.Size())
			}
			src := scanLate(t, nil, f)
			if next == "hashed" {
				src = scan(t, f)
			}
			send, recv = run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
			if send.err != nil || recv.err != nil {
				t.Fatalf("resume: send %v, receive %v", send.err, recv.err)
			}
			if recv.rep.Resumed != kept || send.rep.Bytes != int64(len(data))-kept {
				t.Fatalf("resumed %d and moved %d bytes; partial had %d of %d", recv.rep.Resumed, send.rep.Bytes, st.Size(), len(data))
			}
			if got, _ := os.ReadFile(filepath.Join(out, "big.iso")); !bytes.Equal(got, data) {
				t.Fatal("resumed file differs from the original")
			}
			if left := partials(t, out); len(left) != 0 {
				t.Fatalf("partial left after completion: %v", left)
			}
		})
	}
}

// A partial copy whose bytes are not the sender's is not resumed, though
// its name (size and time) matches.
func TestLateHashForeignPartialStartsOver(t *testing.T) {
	in := t.TempDir()
	data := randomBytes(t, 2*BlockSize)
	writeFile(t, filepath.Join(in, "f"), data, 0o644)
	src := scanLate(t, nil, filepath.Join(in, "f"))
	out := t.TempDir()
	writeFile(t, filepath.Join(out, partialName("f", lateTag(&src.Entries[0]))), randomBytes(t, BlockSize+1000), 0o600)
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err != nil || recv.err != nil {
		t.Fatalf("send %v, receive %v", send.err, recv.err)
	}
	if recv.rep.Resumed != 0 || send.rep.Bytes != int64(len(data)) {
		t.Fatalf("resumed %d, moved %d bytes, want 0 and the whole %d", recv.rep.Resumed, send.rep.Bytes, len(data))
	}
	if got, _ := os.ReadFile(filepath.Join(out, "f")); !bytes.Equal(got, data) {
		t.Fatal("file differs")
	}
}

func TestLateHashCorruptedChunkNotPromoted(t *testing.T) {
	in := t.TempDir()
	writeFile(t, filepath.Join(in, "f.bin"), randomBytes(t, 2*DataChunk), 0o644)
	out := t.TempDir()
	send, recv := run(t, scanLate(t, nil, filepath.Join(in, "f.bin")), ReceiveOptions{Dir: out, Decide: accept}, func(c net.Conn) net.Conn {
		return &flipConn{Conn: c, skip: 4096 + 3*HeaderSize + 600}
	})
	if !errors.Is(send.err, ErrNotConfirmed) || !errors.Is(recv.err, ErrNotConfirmed) || !strings.Contains(recv.err.Error(), "hash mismatch") {
		t.Fatalf("sender %v, receiver %v: want a hash mismatch", send.err, recv.err)
	}
	if _, err := os.Stat(filepath.Join(out, "f.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("corrupted file was promoted: %v", err)
	}
}

// A file rewritten between the offer and its sending is not delivered: the
// hash computed while reading it would describe neither version.
func TestLateHashFileChangedWhileSent(t *testing.T) {
	in := t.TempDir()
	f := filepath.Join(in, "f.bin")
	writeFile(t, f, randomBytes(t, 3*DataChunk), 0o644)
	src := scanLate(t, nil, f)
	writeFile(t, f, randomBytes(t, 3*DataChunk), 0o644)
	future := time.Now().Add(time.Hour)
	os.Chtimes(f, future, future)
	out := t.TempDir()
	send, recv := run(t, src, ReceiveOptions{Dir: out, Decide: accept}, nil)
	if send.err == nil || !strings.Contains(send.err.Error(), "changed while being sent") {
		t.Fatalf("sender: %v, want 'changed while being sent'", send.err)
	}
	if recv.err == nil {
		t.Fatal("receiver succeeded")
	}
	if _, err := os.Stat(filepath.Join(out, "f.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("changed file was promoted: %v", err)
	}
}
