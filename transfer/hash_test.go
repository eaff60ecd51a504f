package transfer

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// contentHash computes the documented content hash the plain way.
func contentHash(data []byte) string {
	top := blake3.New()
	top.Write([]byte("del/blocks/v1"))
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(data)))
	top.Write(n[:])
	for off := 0; off < len(data); off += BlockSize {
		d := blake3.Sum256(data[off:min(off+BlockSize, len(data))])
		top.Write(d[:])
	}
	return hex.EncodeToString(top.Sum(nil))
}

func TestContentHashAgrees(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int{0, 1, BlockSize - 1, BlockSize, BlockSize + 1, 3*BlockSize + 77} {
		data := randomBytes(t, size)
		want := contentHash(data)
		// Streaming, in odd pieces.
		h := newBlockHasher()
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 1+len(rest)/3)
			h.Write(rest[:k])
			rest = rest[k:]
		}
		if got := h.Sum(); got != want {
			t.Fatalf("size %d: streaming %s, want %s", size, got, want)
		}
		// Parallel, from a file.
		p := filepath.Join(dir, "f")
		os.WriteFile(p, data, 0o644)
		f, _ := os.Open(p)
		blocks, err := hashBlocks(context.Background(), f, int64(size))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if r := rootOf(blocks, int64(size)); hex.EncodeToString(r[:]) != want {
			t.Fatalf("size %d: parallel %x, want %s", size, r, want)
		}
		// A prefix of whole blocks hashes like a file of that prefix.
		if k := size / BlockSize; k > 0 {
			if got, want := prefixHash(blocks[:k]), contentHash(data[:k*BlockSize]); got != want {
				t.Fatalf("size %d: prefix %s, want %s", size, got, want)
			}
		}
	}
}

// countingCache counts what the scanner asks of it.
type countingCache struct {
	DirCache
	gets, hits, puts int
}

func (c *countingCache) Get(k string) ([][32]byte, bool) {
	c.gets++
	ds, ok := c.DirCache.Get(k)
	if ok {
		c.hits++
	}
	return ds, ok
}

func (c *countingCache) Put(k string, ds [][32]byte) { c.puts++; c.DirCache.Put(k, ds) }

func TestHashCache(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	data := randomBytes(t, 2*BlockSize+5)
	os.WriteFile(f, data, 0o644)
	cache := &countingCache{DirCache: DirCache{Dir: filepath.Join(dir, "cache")}}
	later := func() time.Time { return time.Now().Add(time.Minute) }
	scanWith := func(now func() time.Time) *Source {
		src, err := ScanWith(context.Background(), []string{f}, ScanOptions{Cache: cache, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	// A file modified within the last two seconds is never cached.
	scanWith(time.Now)
	if cache.puts != 0 {
		t.Fatal("a freshly modified file was cached")
	}
	first := scanWith(later)
	if cache.puts != 1 || cache.hits != 0 {
		t.Fatalf("puts %d hits %d after the first scan", cache.puts, cache.hits)
	}
	second := scanWith(later)
	if cache.hits != 1 || second.Entries[0].Hash != first.Entries[0].Hash || second.Entries[0].Hash != contentHash(data) {
		t.Fatalf("hits %d, hashes %s / %s", cache.hits, first.Entries[0].Hash, second.Entries[0].Hash)
	}
	// Changing the content (same size) changes the key: hashed again.
	data[0] ^= 1
	os.WriteFile(f, data, 0o644)
	third := scanWith(later)
	if cache.hits != 1 || third.Entries[0].Hash != contentHash(data) {
		t.Fatalf("after a change: hits %d, hash %s, want %s", cache.hits, third.Entries[0].Hash, contentHash(data))
	}
}
