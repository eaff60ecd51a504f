package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/zeebo/blake3"
)

// Source is what a sender offers: the entries, and where each one's content
// comes from.
type Source struct {
	Entries []Entry
	// local[i] is the file behind Entries[i] ("" for dirs and symlinks).
	local []string
	// stream is the reader behind a stream entry.
	stream io.Reader
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
			if err := src.addFile(ctx, p, name, st, hashed); err != nil {
				return nil, err
			}
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
				src.Entries = append(src.Entries, Entry{Path: rp, Kind: KindDir, Mode: uint32(info.Mode().Perm()), MTime: info.ModTime().UnixNano()})
				src.local = append(src.local, "")
			case info.Mode().IsRegular():
				return src.addFile(ctx, fp, rp, info, hashed)
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(fp)
				if err != nil {
					return err
				}
				t := filepath.ToSlash(target)
				if j := path.Join(path.Dir(rp), t); CheckSymlink(rp, t) != nil || (j != name && !strings.HasPrefix(j, name+"/")) {
					return fmt.Errorf("%s is a symlink to %s, outside the tree being sent", fp, target)
				}
				src.Entries = append(src.Entries, Entry{Path: rp, Kind: KindSymlink, Mode: 0o777, Target: t})
				src.local = append(src.local, "")
			default:
				return fmt.Errorf("%s: cannot send a %s", fp, info.Mode().Type())
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
	return src, nil
}

func (s *Source) addFile(ctx context.Context, local, rel string, st fs.FileInfo, hashed func(int64)) error {
	sum, n, err := hashFile(ctx, local, -1)
	if err != nil {
		return err
	}
	if n != st.Size() {
		return fmt.Errorf("%s changed size while being hashed", local)
	}
	if hashed != nil {
		hashed(n)
	}
	s.Entries = append(s.Entries, Entry{
		Path: rel, Kind: KindFile, Size: n, Mode: uint32(st.Mode().Perm()),
		MTime: st.ModTime().UnixNano(), Hash: sum,
	})
	s.local = append(s.local, local)
	return nil
}

// hashFile returns the hex BLAKE3-256 of the first limit bytes of a file (the
// whole file if limit < 0) and how many bytes were hashed.
func hashFile(ctx context.Context, name string, limit int64) (string, int64, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := blake3.New()
	n, err := hashReader(ctx, h, f, limit)
	if err != nil {
		return "", n, fmt.Errorf("hash %s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// hashReader feeds up to limit bytes of r (all if limit < 0) into h,
// checking ctx between blocks.
func hashReader(ctx context.Context, h io.Writer, r io.Reader, limit int64) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for limit < 0 || total < limit {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		b := buf
		if limit >= 0 && int64(len(b)) > limit-total {
			b = b[:limit-total]
		}
		n, err := r.Read(b)
		h.Write(b[:n])
		total += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
