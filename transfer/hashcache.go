package transfer

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// DirCache is a HashCache kept in a folder (the device's state folder):
// one small file per source file, named by the SHA-1 of its key, holding
// the key and the block digests. Entries unused for MaxAge are removed now
// and then. Errors are ignored: a cache miss only costs hashing.
type DirCache struct {
	Dir    string
	MaxAge time.Duration // default 30 days
}

func (c *DirCache) path(key string) string {
	sum := sha1.Sum([]byte(key))
	return filepath.Join(c.Dir, hex.EncodeToString(sum[:]))
}

// Get returns the digests stored for key.
func (c *DirCache) Get(key string) ([][32]byte, bool) {
	b, err := os.ReadFile(c.path(key))
	if err != nil {
		return nil, false
	}
	k, rest, ok := bytes.Cut(b, []byte{'\n'})
	if !ok || string(k) != hex.EncodeToString([]byte(key)) || len(rest)%32 != 0 {
		return nil, false
	}
	ds := make([][32]byte, len(rest)/32)
	for i := range ds {
		copy(ds[i][:], rest[32*i:])
	}
	now := time.Now()
	os.Chtimes(c.path(key), now, now) // recently used
	return ds, true
}

// Put stores the digests for key.
func (c *DirCache) Put(key string, blocks [][32]byte) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return
	}
	b := append([]byte(hex.EncodeToString([]byte(key))), '\n')
	for i := range blocks {
		b = append(b, blocks[i][:]...)
	}
	f, err := os.CreateTemp(c.Dir, ".tmp*")
	if err != nil {
		return
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if werr != nil || cerr != nil || os.Rename(f.Name(), c.path(key)) != nil {
		os.Remove(f.Name())
		return
	}
	if rand.IntN(32) == 0 { // now and then
		c.prune()
	}
}

func (c *DirCache) prune() {
	age := c.MaxAge
	if age == 0 {
		age = 30 * 24 * time.Hour
	}
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > age {
			os.Remove(filepath.Join(c.Dir, e.Name()))
		}
	}
}
