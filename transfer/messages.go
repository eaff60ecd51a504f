package transfer

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// Version is the protocol version carried in every OFFER. Version 4 (session
// 3) changed only the transit sum: the XXH3-128 of per-payload XXH3-128
// digests instead of the XXH3-128 of the bytes; a version 3 peer would see
// every file as corrupted, so the versions do not talk to each other.
const Version = 4

// Kind is what an entry of an offer is.
type Kind string

// Entry kinds.
const (
	KindFile    Kind = "file"
	KindDir     Kind = "dir"
	KindSymlink Kind = "symlink"
)

// Entry is one item of an offer.
type Entry struct {
	// Path is relative, slash-separated, with no ".", ".." or empty
	// components; the receiver places it under its target folder.
	Path string `json:"path"`
	Kind Kind   `json:"kind"`
	// Size in bytes; -1 for a stream whose size is unknown until FILE_END.
	Size int64 `json:"size"`
	// Mode holds permission bits only (0..0777); setuid and friends are
	// never sent.
	Mode uint32 `json:"mode"`
	// MTime is the modification time in Unix nanoseconds, 0 if unknown.
	MTime int64 `json:"mtime,omitempty"`
	// Hash is the content hash in hex (see hash.go); empty for a stream,
	// and for a file the sender has not hashed (it comes in HASHES if the
	// receiver needs it to decide).
	Hash string `json:"hash,omitempty"`
	// Target is a symlink's target, relative and inside the offered tree.
	Target string `json:"target,omitempty"`
}

// IsStream reports whether e is a stream of unknown size (stdin).
func (e *Entry) IsStream() bool { return e.Kind == KindFile && e.Size < 0 }

// lateHash reports whether e is a file of known size whose hash comes later.
func (e *Entry) lateHash() bool { return e.Kind == KindFile && e.Size >= 0 && e.Hash == "" }

// HashRequest asks the sender for the hashes of files offered without one.
type HashRequest struct {
	I []int `json:"i"`
}

// Hashes answers a HashRequest, in its order.
type Hashes struct {
	Hashes []string `json:"hashes"`
}

// Offer is the payload of an OFFER frame: a batch of entries.
type Offer struct {
	V       int     `json:"v"`
	Entries []Entry `json:"entries"`
}

// OfferEnd closes an offer and states its totals, which the receiver checks.
type OfferEnd struct {
	Entries int   `json:"entries"`
	Files   int   `json:"files"`
	Bytes   int64 `json:"bytes"`
}

// Want asks the sender for one file, from Offset, whose first Offset bytes
// the receiver already holds with BLAKE3-256 Prefix.
type Want struct {
	I      int    `json:"i"`
	Offset int64  `json:"offset,omitempty"`
	Prefix string `json:"prefix,omitempty"`
}

// Decision is the receiver's answer to an offer. Files of the offer that are
// not in Want are already present with the same content.
type Decision struct {
	Accept bool   `json:"accept"`
	Reason string `json:"reason,omitempty"`
	Want   []Want `json:"want,omitempty"`
}

// FileStart announces the data of file I from Offset on.
type FileStart struct {
	I      int   `json:"i"`
	Offset int64 `json:"offset"`
}

// FileEnd closes file I: its total size, the transit sum (hex) of the DATA
// sent for it from FILE_START's offset (XXH3-128 over the XXH3-128 of each
// DATA payload; see transitSum), and its content hash when the sender knows
// it.
type FileEnd struct {
	I    int    `json:"i"`
	Size int64  `json:"size"`
	Hash string `json:"hash,omitempty"`
	Sum  string `json:"sum"`
}

// Result is the receiver's verdict on file I.
type Result struct {
	I   int    `json:"i"`
	OK  bool   `json:"ok"`
	Err string `json:"err,omitempty"`
}

// Summary is the receiver's last word.
type Summary struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
}

// ErrorMsg aborts a transfer.
type ErrorMsg struct {
	Msg string `json:"msg"`
}

// Limits of an offer.
const (
	MaxPathLen      = 4096
	MaxComponentLen = 255
	MaxEntries      = 1 << 20
)

// ErrBadPath is returned (wrapped) for a path that could leave the target
// folder or is not portable.
var ErrBadPath = errors.New("unsafe path")

// CheckPath verifies that p is a safe relative path: not absolute, no ".",
// ".." or empty components, no backslash or NUL, valid UTF-8, within length
// limits.
func CheckPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty", ErrBadPath)
	case len(p) > MaxPathLen:
		return fmt.Errorf("%w: %d bytes long", ErrBadPath, len(p))
	case !utf8.ValidString(p):
		return fmt.Errorf("%w: %q is not UTF-8", ErrBadPath, p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%w: %q is absolute", ErrBadPath, p)
	case strings.ContainsAny(p, "\\\x00"):
		return fmt.Errorf("%w: %q contains a backslash or NUL", ErrBadPath, p)
	case len(p) >= 2 && p[1] == ':':
		return fmt.Errorf("%w: %q looks like a drive path", ErrBadPath, p)
	}
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "" || c == ".":
			return fmt.Errorf("%w: %q has an empty or \".\" component", ErrBadPath, p)
		case c == "..":
			return fmt.Errorf("%w: %q has a \"..\" component", ErrBadPath, p)
		case len(c) > MaxComponentLen:
			return fmt.Errorf("%w: %q has a component over %d bytes", ErrBadPath, p, MaxComponentLen)
		}
	}
	return nil
}

// CheckSymlink verifies that a symlink at p pointing to target stays inside
// the tree it is received into.
func CheckSymlink(p, target string) error {
	if target == "" || strings.HasPrefix(target, "/") || strings.ContainsRune(target, 0) {
		return fmt.Errorf("%w: symlink %q -> %q: target must be relative", ErrBadPath, p, target)
	}
	joined := path.Join(path.Dir(p), target)
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return fmt.Errorf("%w: symlink %q -> %q leads outside the target folder", ErrBadPath, p, target)
	}
	return nil
}

func checkHash(h string) error {
	if len(h) != 64 {
		return fmt.Errorf("hash %q is not 64 hex digits", h)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return fmt.Errorf("hash %q is not hex", h)
	}
	return nil
}

// ValidateEntries checks a whole offer: every path and symlink is safe, no
// path appears twice, sizes, modes and hashes are well-formed, and a stream
// is the only entry.
func ValidateEntries(entries []Entry) error {
	if len(entries) == 0 {
		return errors.New("empty offer")
	}
	if len(entries) > MaxEntries {
		return fmt.Errorf("offer has %d entries, max %d", len(entries), MaxEntries)
	}
	seen := make(map[string]Kind, len(entries))
	for i := range entries {
		e := &entries[i]
		if err := CheckPath(e.Path); err != nil {
			return err
		}
		if _, dup := seen[e.Path]; dup {
			return fmt.Errorf("path %q offered twice", e.Path)
		}
		seen[e.Path] = e.Kind
		if e.Mode > 0o777 {
			return fmt.Errorf("%q: mode %o has bits beyond 0777", e.Path, e.Mode)
		}
		switch e.Kind {
		case KindFile:
			if e.IsStream() {
				if len(entries) != 1 || e.Size != -1 || e.Hash != "" {
					return fmt.Errorf("%q: a stream must be the only entry, size -1, no hash", e.Path)
				}
				continue
			}
			if e.Hash == "" {
				continue // comes in FILE_END
			}
			if err := checkHash(e.Hash); err != nil {
				return fmt.Errorf("%q: %v", e.Path, err)
			}
		case KindDir:
			if e.Size != 0 || e.Hash != "" {
				return fmt.Errorf("%q: a directory has no size or hash", e.Path)
			}
		case KindSymlink:
			if err := CheckSymlink(e.Path, e.Target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%q: unknown kind %q", e.Path, e.Kind)
		}
	}
	// A parent named in the offer must be a directory.
	for p := range seen {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if k, ok := seen[d]; ok && k != KindDir {
				return fmt.Errorf("%q is offered inside %q, which is a %s", p, d, k)
			}
		}
	}
	return nil
}

// marshal encodes a control message; the types above always encode.
func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("transfer: marshal %T: %v", v, err))
	}
	return b
}

// unmarshal decodes a control message of frame type typ, refusing unknown
// fields' absence quietly but not trailing garbage.
func unmarshal(typ byte, payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("transfer: bad %s: %w", FrameName(typ), err)
	}
	return nil
}
