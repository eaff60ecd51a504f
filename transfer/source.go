package transfer

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Source is what a sender offers: the entries, and where each one's content
// comes from.
type Source struct {
	Entries []Entry
	// local[i] is the file behind Entries[i] ("" for dirs and symlinks).
	local []string
	// blocks[i] are the block digests of Entries[i]'s content hash.
	blocks [][][32]byte
	// stream is the reader behind a stream entry.
	stream io.Reader
	// opts are the scan's options: the cache that learns the hashes of
	// files hashed while being sent.
	opts ScanOptions
	// Skipped lists special files (sockets, FIFOs, devices) found inside
	// the directories and left out of the offer.
	Skipped []string
}

// Files returns the number of regular files and streams in the offer.
func (s *Source) Files() int {
	n := 0
	for i := range s.Entries {
		if s.Entries[i].Kind == KindFile {
			n++
		}
	}
	return n
}

// Bytes returns the total size of the offered files (streams count 0).
func (s *Source) Bytes() int64 {
	var n int64
	for i := range s.Entries {
		if s.Entries[i].Kind == KindFile && s.Entries[i].Size > 0 {
			n += s.Entries[i].Size
		}
	}
	return n
}

// StreamSource offers a single stream (stdin) under the given name.
func StreamSource(name string, r io.Reader) (*Source, error) {
	if err := CheckPath(name); err != nil {
		return nil, err
	}
	return &Source{
		Entries: []Entry{{Path: name, Kind: KindFile, Size: -1, Mode: 0o644}},
		local:   []string{""},
		blocks:  [][][32]byte{nil},
		stream:  r,
	}, nil
}

// Scan builds a Source from local paths, as `del send` does. A directory is
// offered recursively under its own name, empty directories included;
// symlinks inside a directory are offered as symlinks when their target stays
// inside the offered tree, and are an error otherwise. Named paths
// that are symlinks are followed. hashed is called with each file's size as
// it is hashed, for progress; it may be nil.
func Scan(ctx context.Context, paths []string, hashed func(n int64)) (*Source, error) {
	return ScanWith(ctx, paths, ScanOptions{Hashed: hashed})
}

// HashCache remembers files' block digests between runs, so that sending a
// file again (or resuming) does not hash it again. Keys come from
// FileKey: a change of content changes the key.
type HashCache interface {
	Get(key string) ([][32]byte, bool)
	Put(key string, blocks [][32]byte)
}

// ScanOptions tunes ScanWith. The zero value hashes everything.
type ScanOptions struct {
	// Hashed is called with each file's size once its hash is known.
	Hashed func(n int64)
	// Cache, if set, is asked before hashing and told afterwards.
	Cache HashCache
	// Now is the clock for the racy-file rule (default time.Now).
	Now func() time.Time
	// Late leaves out of the offer the hashes of files the cache does not
	// know: they are computed while the files are sent (FILE_END carries
	// them), so data starts flowing at once. Hashed is not called for them.
	Late bool
}

// FileKey identifies a file's content by what stat says about it: path,
// device, inode, size, and modification and change times in nanoseconds.
// It is "" for a file modified within the last two seconds, whose content
// may still change within the same timestamp (git's racy-file rule): such
// files are always hashed.
func FileKey(path string, st fs.FileInfo, now time.Time) string {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || now.Sub(st.ModTime()) < 2*time.Second {
		return ""
	}
	ctime := time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec)
	if now.Sub(ctime) < 2*time.Second {
		return ""
	}
	return fmt.Sprintf("%s\x00%d\x00%d\x00%d\x00%d\x00%d", path, sys.Dev, sys.Ino, st.Size(), st.ModTime().UnixNano(), ctime.UnixNano())
}

// ScanWith is Scan with options.
func ScanWith(ctx context.Context, paths []string, opts ScanOptions) (*Source, error) {
	hashed := opts.Hashed
	src := &Source{}
	tops := map[string]string{}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		name := filepath.Base(filepath.Clean(p))
		if name == "/" || name == "." || name == ".." {
			abs, err := filepath.Abs(p)
			if err != nil {
				return nil, err
			}
			name = filepath.Base(abs)
		}
		if prev, dup := tops[name]; dup {
			return nil, fmt.Errorf("%s and %s would both arrive as %q", prev, p, name)
		}
		tops[name] = p
		if !st.IsDir() {
			if !st.Mode().IsRegular() {
				return nil, fmt.Errorf("%s is not a regular file or directory", p)
			}
			src.addFile(p, name, st)
			continue
		}
		root := p
		err = filepath.WalkDir(root, func(fp string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, fp)
			if err != nil {
				return err
			}
			rp := name
			if rel != "." {
				rp = path.Join(name, filepath.ToSlash(rel))
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			switch {
			case d.IsDir():
				src.add(Entry{Path: rp, Kind: KindDir, Mode: uint32(info.Mode().Perm()), MTime: info.ModTime().UnixNano()}, "", nil)
			case info.Mode().IsRegular():
				src.addFile(fp, rp, info)
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(fp)
				if err != nil {
					return err
				}
				t := filepath.ToSlash(target)
				if j := path.Join(path.Dir(rp), t); CheckSymlink(rp, t) != nil || (j != name && !strings.HasPrefix(j, name+"/")) {
					return fmt.Errorf("%s is a symlink to %s, outside the tree being sent", fp, target)
				}
				src.add(Entry{Path: rp, Kind: KindSymlink, Mode: 0o777, Target: t}, "", nil)
			default:
				// Sockets, FIFOs and devices have no content to send.
				src.Skipped = append(src.Skipped, fp)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if err := ValidateEntries(src.Entries); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	src.opts = opts
	if err := src.hashAll(ctx, hashed, opts); err != nil {
		return nil, err
	}
	return src, nil
}

func (s *Source) add(e Entry, local string, blocks [][32]byte) {
	s.Entries = append(s.Entries, e)
	s.local = append(s.local, local)
	s.blocks = append(s.blocks, blocks)
}

func (s *Source) addFile(local, rel string, st fs.FileInfo) {
	s.add(Entry{Path: rel, Kind: KindFile, Size: st.Size(), Mode: uint32(st.Mode().Perm()),
		MTime: st.ModTime().UnixNano()}, local, nil)
}

// hashAll computes every file's content hash, several files at once (a
// large file's blocks are spread over the cores by hashBlocks itself).
// hashed, if set, is called with each file's size once it is hashed.
func (s *Source) hashAll(ctx context.Context, hashed func(int64), opts ScanOptions) error {
	var files []int
	for i := range s.Entries {
		if s.Entries[i].Kind == KindFile && s.local[i] != "" {
			files = append(files, i)
		}
	}
	var (
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(files)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				err := s.hashOne(ctx, i, opts)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				if err == nil && hashed != nil && s.Entries[i].Hash != "" {
					hashed(s.Entries[i].Size)
				}
				mu.Unlock()
			}
		}()
	}
	for _, i := range files {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

func (s *Source) hashOne(ctx context.Context, i int, opts ScanOptions) error {
	blocks, err := s.fileBlocks(ctx, i, opts.Late)
	if err != nil || blocks == nil {
		return err
	}
	e := &s.Entries[i]
	root := rootOf(blocks, e.Size)
	e.Hash = hex.EncodeToString(root[:])
	s.blocks[i] = blocks
	return nil
}

// fileBlocks returns the block digests of file i: from the cache, else by
// hashing it (unless cacheOnly, then nil). A file whose size or time changed
// since the scan is an error.
func (s *Source) fileBlocks(ctx context.Context, i int, cacheOnly bool) ([][32]byte, error) {
	e := &s.Entries[i]
	if cacheOnly {
		// A look in the cache needs no open file (large trees: one stat
		// per file, and none at all without a cache).
		if s.opts.Cache == nil {
			return nil, nil
		}
		st, err := os.Stat(s.local[i])
		if err != nil {
			return nil, err
		}
		if key := s.cacheKey(i, st); key != "" && st.Size() == e.Size && st.ModTime().UnixNano() == e.MTime {
			if blocks, ok := s.opts.Cache.Get(key); ok && len(blocks) == int((e.Size+BlockSize-1)/BlockSize) {
				return blocks, nil
			}
		}
		return nil, nil
	}
	f, err := os.Open(s.local[i])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != e.Size || st.ModTime().UnixNano() != e.MTime {
		return nil, fmt.Errorf("%s changed since it was offered", s.local[i])
	}
	key := s.cacheKey(i, st)
	var blocks [][32]byte
	if key != "" {
		if blocks, ok := s.opts.Cache.Get(key); ok && len(blocks) == int((e.Size+BlockSize-1)/BlockSize) {
			return blocks, nil
		}
	}
	if blocks, err = hashBlocks(ctx, f, e.Size); err != nil {
		return nil, err
	}
	after, err := os.Stat(s.local[i])
	if err != nil {
		return nil, err
	}
	if after.Size() != e.Size || after.ModTime().UnixNano() != e.MTime {
		return nil, fmt.Errorf("%s changed while being hashed", s.local[i])
	}
	if key != "" {
		s.opts.Cache.Put(key, blocks)
	}
	return blocks, nil
}

// cacheKey is file i's key in the hash cache, "" when there is no cache or
// the file is too recent to be cached (see FileKey).
func (s *Source) cacheKey(i int, st fs.FileInfo) string {
	if s.opts.Cache == nil {
		return ""
	}
	abs, err := filepath.Abs(s.local[i])
	if err != nil {
		return ""
	}
	now := time.Now
	if s.opts.Now != nil {
		now = s.opts.Now
	}
	return FileKey(abs, st, now())
}

// lateHashes computes the hashes of the offered files listed in idx, which
// were offered without one (a receiver asked, see HashRequest).
func (s *Source) lateHashes(ctx context.Context, idx []int) ([]string, error) {
	out := make([]string, len(idx))
	for n, i := range idx {
		if i < 0 || i >= len(s.Entries) || !s.Entries[i].lateHash() || s.local[i] == "" {
			return nil, fmt.Errorf("receiver asked for the hash of entry %d, which was offered with one or is not a file", i)
		}
		blocks, err := s.fileBlocks(ctx, i, false)
		if err != nil {
			return nil, err
		}
		root := rootOf(blocks, s.Entries[i].Size)
		out[n] = hex.EncodeToString(root[:])
		// From now on the file is sent as one whose hash was known: the
		// receiver checks what arrives against this hash.
		s.Entries[i].Hash, s.blocks[i] = out[n], blocks
	}
	return out, nil
}
