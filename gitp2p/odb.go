package gitp2p

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// The object store reads the repository's objects straight from its files
// (gitformat-pack(5), gitrepository-layout(5)): the packs through their
// .idx files, loose objects, and the alternates. It answers what
// negotiation and the ref advertisement need — "is this object here, of
// which type", a commit's parents, a tag's target — in the server's own
// process, where a `git cat-file` process took 10-30 ms to start and answer
// its first question. Building packs stays git's job (pack-objects).

// Object types as numbered in pack entries.
const (
	objCommit   = 1
	objTree     = 2
	objBlob     = 3
	objTag      = 4
	objOfsDelta = 6
	objRefDelta = 7
)

var typeNames = [...]string{objCommit: "commit", objTree: "tree", objBlob: "blob", objTag: "tag"}

func typeName(t int) string {
	if t > 0 && t < len(typeNames) {
		return typeNames[t]
	}
	return ""
}

func typeNumber(name string) int {
	for i, n := range typeNames {
		if n != "" && n == name {
			return i
		}
	}
	return 0
}

// errUnsupported means the repository uses a layout the store does not read
// (another object format, a linked work tree's common directory, quoted
// alternates); the caller falls back to git.
var errUnsupported = errors.New("object store: layout not read natively")

// maxNativeObject bounds what the store inflates: commits and tags are
// small; anything bigger is left to git.
const maxNativeObject = 64 << 20

// maxDeltaChain bounds the delta chains followed (git's own limit is far
// below; a malformed pack could loop).
const maxDeltaChain = 10000

// objectStore reads one repository's objects. Not safe for concurrent use;
// objects (repo.go) guards it with its mutex.
type objectStore struct {
	dirs []*objectDir // the repository's objects directory, then its alternates
	// base caches inflated delta bases by pack and offset (commits are
	// often deltas of one another); it is emptied when it grows too big.
	base     map[packPos][]byte
	baseSize int
	// One inflater, reset for every object: a new zlib reader allocates
	// and clears a 32 KiB window, which cost more than the reads.
	br *bufio.Reader
	zr io.ReadCloser
}

// inflater returns the store's zlib reader, reset to read from r.
func (s *objectStore) inflater(r io.Reader) (io.Reader, error) {
	if s.br == nil {
		s.br = bufio.NewReaderSize(r, 4096)
	} else {
		s.br.Reset(r)
	}
	if s.zr == nil {
		zr, err := zlib.NewReader(s.br)
		if err != nil {
			return nil, err
		}
		s.zr = zr
		return zr, nil
	}
	if err := s.zr.(zlib.Resetter).Reset(s.br, nil); err != nil {
		return nil, err
	}
	return s.zr, nil
}

type packPos struct {
	p   *packFile
	off int64
}

// objectDir is one objects directory and the packs found in it.
type objectDir struct {
	path  string
	packs []*packFile
	names map[string]bool // .idx names of the packs, to notice new ones
}

// packFile is a pack and its index.
type packFile struct {
	f    *os.File
	size int64
	idx  *packIndex
}

// openStore opens the object store of gitDir, or returns errUnsupported.
func openStore(gitDir string) (*objectStore, error) {
	if _, err := os.Stat(filepath.Join(gitDir, "commondir")); err == nil {
		return nil, errUnsupported
	}
	if cfg, err := os.ReadFile(filepath.Join(gitDir, "config")); err == nil {
		// Any extension (objectformat=sha256, refstorage, ...) may change
		// what is on disk: leave such repositories to git.
		if bytes.Contains(bytes.ToLower(cfg), []byte("[extensions")) {
			return nil, errUnsupported
		}
	}
	s := &objectStore{base: map[packPos][]byte{}}
	if err := s.addDir(filepath.Join(gitDir, "objects"), 0); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// addDir adds an objects directory and, recursively, its alternates.
func (s *objectStore) addDir(path string, depth int) error {
	if depth > 5 {
		return nil // git's limit on nested alternates
	}
	for _, d := range s.dirs {
		if d.path == path {
			return nil
		}
	}
	d := &objectDir{path: path, names: map[string]bool{}}
	s.dirs = append(s.dirs, d)
	if err := d.scan(); err != nil {
		return err
	}
	alt, err := os.ReadFile(filepath.Join(path, "info", "alternates"))
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(alt), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '"' {
			return errUnsupported
		}
		if !filepath.IsAbs(line) {
			line = filepath.Join(path, line)
		}
		if err := s.addDir(filepath.Clean(line), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// scan opens the packs of the directory not opened yet. It reports whether
// it found a new one.
func (d *objectDir) scan() error {
	_, err := d.rescan()
	return err
}

func (d *objectDir) rescan() (bool, error) {
	entries, err := os.ReadDir(filepath.Join(d.path, "pack"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	found := false
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".idx") || d.names[name] {
			continue
		}
		p, err := openPack(filepath.Join(d.path, "pack", name))
		if err != nil {
			// A pack being removed by gc, or damaged: git would skip it too.
			continue
		}
		d.names[name] = true
		d.packs = append(d.packs, p)
		found = true
	}
	return found, nil
}

func openPack(idxPath string) (*packFile, error) {
	idx, err := loadIndex(idxPath)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(strings.TrimSuffix(idxPath, ".idx") + ".pack")
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	// The pack's trailing checksum must be the one its index names.
	var hdr [12]byte
	var sum [20]byte
	if fi.Size() < 32 {
		f.Close()
		return nil, fmt.Errorf("%s: pack too short", f.Name())
	}
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.ReadAt(sum[:], fi.Size()-20); err != nil {
		f.Close()
		return nil, err
	}
	v := binary.BigEndian.Uint32(hdr[4:])
	if string(hdr[:4]) != "PACK" || v != 2 && v != 3 || sum != idx.packSum {
		f.Close()
		return nil, fmt.Errorf("%s: pack does not match its index", f.Name())
	}
	return &packFile{f: f, size: fi.Size(), idx: idx}, nil
}

// Close closes the pack files.
func (s *objectStore) Close() {
	for _, d := range s.dirs {
		for _, p := range d.packs {
			p.f.Close()
		}
	}
	s.dirs = nil
}

// location is where an object lives: a pack entry, or a loose file (open;
// whoever reads it closes it).
type location struct {
	p     *packFile
	off   int64
	loose *os.File
}

func (s *objectStore) find(oid [20]byte) (location, bool) {
	for pass := 0; pass < 2; pass++ {
		for _, d := range s.dirs {
			for _, p := range d.packs {
				if off, ok := p.idx.find(oid); ok {
					return location{p: p, off: off}, true
				}
			}
			hexID := fmt.Sprintf("%x", oid)
			path := filepath.Join(d.path, hexID[:2], hexID[2:])
			if f, err := os.Open(path); err == nil {
				return location{loose: f}, true
			}
		}
		// Not found: a pack may have appeared since the scan (git does
		// the same "reprepare" before it calls an object missing).
		again := false
		for _, d := range s.dirs {
			if found, _ := d.rescan(); found {
				again = true
			}
		}
		if !again {
			break
		}
	}
	return location{}, false
}

// parseOID decodes a 40-digit lowercase hex object id.
func parseOID(s string) ([20]byte, bool) {
	var oid [20]byte
	if !isHex40(s) {
		return oid, false
	}
	for i := 0; i < 20; i++ {
		hi, _ := unhex(s[2*i])
		lo, _ := unhex(s[2*i+1])
		oid[i] = byte(hi<<4 | lo)
	}
	return oid, true
}

// Type returns the type of an object ("commit", "tree", "blob", "tag"), or
// "" when the store does not have it. Only headers are read.
func (s *objectStore) Type(oidHex string) (string, error) {
	oid, ok := parseOID(oidHex)
	if !ok {
		return "", fmt.Errorf("object store: bad object id %q", oidHex)
	}
	loc, ok := s.find(oid)
	if !ok {
		return "", nil
	}
	for hops := 0; hops < maxDeltaChain; hops++ {
		if loc.loose != nil {
			t, _, err := s.readLoose(loc.loose, "")
			return typeName(t), err
		}
		h, err := loc.p.entryHeader(loc.off)
		if err != nil {
			return "", err
		}
		switch h.typ {
		case objOfsDelta:
			loc.off = h.baseOff
		case objRefDelta:
			if loc, ok = s.find(h.baseID); !ok {
				return "", fmt.Errorf("object store: delta base %x of %s missing", h.baseID, oidHex)
			}
		default:
			return typeName(h.typ), nil
		}
	}
	return "", fmt.Errorf("object store: delta chain of %s too long", oidHex)
}

// Read returns an object's type and content; type "" when the store does
// not have it.
func (s *objectStore) Read(oidHex string) (string, []byte, error) {
	return s.ReadIf(oidHex, "*")
}

// ReadIf returns an object's type and, when it is want (or want is "*"),
// its content: a commit is read whole, a blob only as far as its header.
func (s *objectStore) ReadIf(oidHex, want string) (string, []byte, error) {
	oid, ok := parseOID(oidHex)
	if !ok {
		return "", nil, fmt.Errorf("object store: bad object id %q", oidHex)
	}
	loc, ok := s.find(oid)
	if !ok {
		return "", nil, nil
	}
	if loc.loose != nil {
		t, data, err := s.readLoose(loc.loose, want)
		if err != nil {
			return "", nil, fmt.Errorf("object %s: %w", oidHex, err)
		}
		return typeName(t), data, nil
	}
	if want != "*" {
		typ, err := s.Type(oidHex)
		if err != nil || typ != want {
			return typ, nil, err
		}
	}
	t, data, err := s.readAt(loc, 0)
	if err != nil {
		return "", nil, fmt.Errorf("object %s: %w", oidHex, err)
	}
	return typeName(t), data, nil
}

func (s *objectStore) readAt(loc location, depth int) (int, []byte, error) {
	if loc.loose != nil {
		return s.readLoose(loc.loose, "*")
	}
	// Walk down to the base, then apply the deltas on the way back up.
	type step struct {
		pos   packPos
		delta []byte
	}
	var chain []step
	p, off := loc.p, loc.off
	var baseType int
	var data []byte
	for {
		if len(chain) > maxDeltaChain {
			return 0, nil, errors.New("delta chain too long")
		}
		pos := packPos{p, off}
		if b, ok := s.base[pos]; ok {
			baseType, data = int(b[0]), b[1:]
			break
		}
		h, err := p.entryHeader(off)
		if err != nil {
			return 0, nil, err
		}
		body, err := s.inflate(p, h)
		if err != nil {
			return 0, nil, err
		}
		switch h.typ {
		case objOfsDelta:
			chain = append(chain, step{pos, body})
			off = h.baseOff
			continue
		case objRefDelta:
			chain = append(chain, step{pos, body})
			bl, ok := s.find(h.baseID)
			if !ok {
				return 0, nil, fmt.Errorf("delta base %x missing", h.baseID)
			}
			if bl.loose != nil {
				baseType, data, err = s.readAt(bl, depth+1)
				if err != nil {
					return 0, nil, err
				}
				break
			}
			p, off = bl.p, bl.off
			continue
		default:
			baseType, data = h.typ, body
			s.remember(pos, h.typ, body)
		}
		break
	}
	for i := len(chain) - 1; i >= 0; i-- {
		out, err := applyDelta(data, chain[i].delta)
		if err != nil {
			return 0, nil, err
		}
		data = out
		if i > 0 {
			s.remember(chain[i].pos, baseType, data)
		}
	}
	return baseType, data, nil
}

// remember keeps an inflated object as a possible delta base.
func (s *objectStore) remember(pos packPos, typ int, data []byte) {
	const maxCache = 16 << 20
	if len(data) > maxCache/4 {
		return
	}
	if s.baseSize+len(data) > maxCache {
		clear(s.base)
		s.baseSize = 0
	}
	b := make([]byte, 1+len(data))
	b[0] = byte(typ)
	copy(b[1:], data)
	s.base[pos] = b
	s.baseSize += len(b)
}

// entryHeader is the header of one pack entry.
type entryHeader struct {
	typ     int
	size    int64 // inflated size (of the delta data for deltas)
	dataOff int64 // where the zlib stream starts
	baseOff int64 // objOfsDelta: the base's offset
	baseID  [20]byte
}

func (p *packFile) entryHeader(off int64) (entryHeader, error) {
	var buf [64]byte
	if off < 12 || off >= p.size-20 {
		return entryHeader{}, fmt.Errorf("pack entry offset %d out of range", off)
	}
	n, err := p.f.ReadAt(buf[:], off)
	if n == 0 && err != nil {
		return entryHeader{}, err
	}
	h, hl, err := parseEntryHeader(buf[:n], off)
	if err != nil {
		return h, err
	}
	h.dataOff = off + int64(hl)
	return h, nil
}

// parseEntryHeader decodes a pack entry header found at offset off: type
// and size (a varint of 4 then 7-bit groups), then the base of a delta (a
// negative offset in git's "offset encoding", or a 20-byte id). It returns
// the header's length.
func parseEntryHeader(b []byte, off int64) (entryHeader, int, error) {
	var h entryHeader
	if len(b) == 0 {
		return h, 0, errors.New("truncated pack entry")
	}
	c := b[0]
	h.typ = int(c>>4) & 7
	h.size = int64(c & 15)
	i, shift := 1, 4
	for c&0x80 != 0 {
		if i >= len(b) || shift > 56 {
			return h, 0, errors.New("bad pack entry size")
		}
		c = b[i]
		i++
		h.size |= int64(c&0x7f) << shift
		shift += 7
	}
	switch h.typ {
	case objCommit, objTree, objBlob, objTag:
	case objOfsDelta:
		if i >= len(b) {
			return h, 0, errors.New("truncated delta offset")
		}
		c = b[i]
		i++
		rel := int64(c & 0x7f)
		for c&0x80 != 0 {
			if i >= len(b) || rel >= 1<<49 {
				return h, 0, errors.New("bad delta offset")
			}
			c = b[i]
			i++
			rel = (rel+1)<<7 | int64(c&0x7f)
		}
		if rel <= 0 || rel > off {
			return h, 0, errors.New("delta offset out of range")
		}
		h.baseOff = off - rel
	case objRefDelta:
		if i+20 > len(b) {
			return h, 0, errors.New("truncated delta base")
		}
		copy(h.baseID[:], b[i:i+20])
		i += 20
	default:
		return h, 0, fmt.Errorf("bad pack entry type %d", h.typ)
	}
	if h.size < 0 || h.size > maxNativeObject {
		return h, 0, fmt.Errorf("pack entry of %d bytes", h.size)
	}
	return h, i, nil
}

// inflate reads a pack entry's zlib stream.
func (s *objectStore) inflate(p *packFile, h entryHeader) ([]byte, error) {
	zr, err := s.inflater(io.NewSectionReader(p.f, h.dataOff, p.size-h.dataOff))
	if err != nil {
		return nil, fmt.Errorf("inflate pack entry: %w", err)
	}
	out := make([]byte, h.size)
	if _, err := io.ReadFull(zr, out); err != nil {
		return nil, fmt.Errorf("inflate pack entry: %w", err)
	}
	return out, nil
}

// applyDelta rebuilds an object from its base and a delta (gitformat-pack(5),
// "Deltified representation"): the base and result sizes as varints, then
// copy instructions (offset and size bytes selected by the low 7 bits of
// the opcode) and inserts (opcode 1-127: that many literal bytes).
func applyDelta(base, delta []byte) ([]byte, error) {
	src, n := deltaSize(delta)
	if n == 0 || src != uint64(len(base)) {
		return nil, errors.New("delta: base size mismatch")
	}
	delta = delta[n:]
	dst, n := deltaSize(delta)
	if n == 0 || dst > maxNativeObject {
		return nil, errors.New("delta: bad result size")
	}
	delta = delta[n:]
	out := make([]byte, 0, dst)
	for len(delta) > 0 {
		op := delta[0]
		delta = delta[1:]
		switch {
		case op&0x80 != 0:
			var off, size uint64
			for bit := 0; bit < 7; bit++ {
				if op&(1<<bit) == 0 {
					continue
				}
				if len(delta) == 0 {
					return nil, errors.New("delta: truncated copy")
				}
				if bit < 4 {
					off |= uint64(delta[0]) << (8 * bit)
				} else {
					size |= uint64(delta[0]) << (8 * (bit - 4))
				}
				delta = delta[1:]
			}
			if size == 0 {
				size = 0x10000
			}
			if off+size > uint64(len(base)) || uint64(len(out))+size > dst {
				return nil, errors.New("delta: copy out of range")
			}
			out = append(out, base[off:off+size]...)
		case op != 0:
			if int(op) > len(delta) || uint64(len(out))+uint64(op) > dst {
				return nil, errors.New("delta: insert out of range")
			}
			out = append(out, delta[:op]...)
			delta = delta[op:]
		default:
			return nil, errors.New("delta: reserved opcode 0")
		}
	}
	if uint64(len(out)) != dst {
		return nil, errors.New("delta: result size mismatch")
	}
	return out, nil
}

// deltaSize reads a delta's little-endian base-128 size; n 0 means bad.
func deltaSize(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, i + 1
		}
	}
	return 0, 0
}

// readLoose reads a loose object, zlib of "<type> <size>\0<content>": its
// type, and its content when the type is want or want is "*".
func (s *objectStore) readLoose(f *os.File, want string) (int, []byte, error) {
	defer f.Close()
	path := f.Name()
	zr, err := s.inflater(f)
	if err != nil {
		return 0, nil, fmt.Errorf("loose object %s: %w", path, err)
	}
	var head [64]byte
	n, err := io.ReadFull(zr, head[:])
	if err != nil && err != io.ErrUnexpectedEOF {
		return 0, nil, fmt.Errorf("loose object %s: %w", path, err)
	}
	t, size, hl, err := parseLooseHeader(head[:n])
	if err != nil {
		return 0, nil, fmt.Errorf("loose object %s: %w", path, err)
	}
	if want != "*" && want != typeName(t) {
		return t, nil, nil
	}
	out := make([]byte, size)
	got := copy(out, head[hl:n])
	if int64(got) < size {
		if _, err := io.ReadFull(zr, out[got:]); err != nil {
			return 0, nil, fmt.Errorf("loose object %s: %w", path, err)
		}
	}
	return t, out, nil
}

// parseLooseHeader decodes "<type> <size>\0" and returns its length.
func parseLooseHeader(b []byte) (typ int, size int64, n int, err error) {
	end := bytes.IndexByte(b, 0)
	if end < 0 {
		return 0, 0, 0, errors.New("bad loose object header")
	}
	name, sz, ok := strings.Cut(string(b[:end]), " ")
	typ = typeNumber(name)
	size, perr := strconv.ParseInt(sz, 10, 64)
	if !ok || typ == 0 || perr != nil || size < 0 || size > maxNativeObject {
		return 0, 0, 0, fmt.Errorf("bad loose object header %q", b[:end])
	}
	return typ, size, end + 1, nil
}

// packIndex is a parsed .idx file, version 1 or 2.
type packIndex struct {
	fanout  [256]uint32
	names   []byte // count * 20, sorted
	offsets []byte // v2: count * 4, MSB set = index into large
	large   []byte // v2: 8-byte offsets
	v1      []byte // v1: count * 24 (offset, name)
	packSum [20]byte
}

// indexCache keeps parsed indexes across sessions, keyed by path and
// checked against size and modification time.
var indexCache struct {
	mu sync.Mutex
	m  map[string]*cachedIndex
}

type cachedIndex struct {
	size, mtime int64
	idx         *packIndex
}

func loadIndex(path string) (*packIndex, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	indexCache.mu.Lock()
	c := indexCache.m[path]
	indexCache.mu.Unlock()
	if c != nil && c.size == fi.Size() && c.mtime == fi.ModTime().UnixNano() {
		return c.idx, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	idx, err := parseIndex(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	indexCache.mu.Lock()
	if indexCache.m == nil {
		indexCache.m = map[string]*cachedIndex{}
	}
	if len(indexCache.m) > 256 {
		clear(indexCache.m) // packs come and go with gc; start over
	}
	indexCache.m[path] = &cachedIndex{size: fi.Size(), mtime: fi.ModTime().UnixNano(), idx: idx}
	indexCache.mu.Unlock()
	return idx, nil
}

// parseIndex decodes a pack index (gitformat-pack(5), "pack-*.idx files"):
// v2 is "\377tOc", version 2, 256 fan-out counts, the sorted names, their
// CRCs, 4-byte offsets (MSB: index into the 8-byte offsets that follow),
// then the pack's and the index's checksums; v1 has the fan-out then
// (offset, name) pairs.
func parseIndex(b []byte) (*packIndex, error) {
	idx := &packIndex{}
	body := b
	v2 := len(b) >= 8 && string(b[:4]) == "\xfftOc"
	if v2 {
		if binary.BigEndian.Uint32(b[4:]) != 2 {
			return nil, errors.New("unknown index version")
		}
		body = b[8:]
	}
	if len(body) < 256*4+40 {
		return nil, errors.New("index too short")
	}
	prev := uint32(0)
	for i := range idx.fanout {
		idx.fanout[i] = binary.BigEndian.Uint32(body[4*i:])
		if idx.fanout[i] < prev {
			return nil, errors.New("index fan-out not sorted")
		}
		prev = idx.fanout[i]
	}
	n := uint64(idx.fanout[255])
	rest := body[256*4:]
	if !v2 {
		if uint64(len(rest)) != n*24+40 {
			return nil, errors.New("index size mismatch")
		}
		idx.v1 = rest[:n*24]
		copy(idx.packSum[:], rest[n*24:])
		return idx, nil
	}
	if uint64(len(rest)) < n*28+40 {
		return nil, errors.New("index too short")
	}
	idx.names = rest[:n*20]
	idx.offsets = rest[n*24 : n*28]
	large := rest[n*28 : uint64(len(rest))-40]
	if len(large)%8 != 0 {
		return nil, errors.New("index size mismatch")
	}
	idx.large = large
	copy(idx.packSum[:], rest[len(rest)-40:])
	return idx, nil
}

func (idx *packIndex) count() int { return int(idx.fanout[255]) }

func (idx *packIndex) name(i int) []byte {
	if idx.v1 != nil {
		return idx.v1[24*i+4 : 24*i+24]
	}
	return idx.names[20*i : 20*i+20]
}

// find returns the pack offset of oid.
func (idx *packIndex) find(oid [20]byte) (int64, bool) {
	lo := 0
	if oid[0] > 0 {
		lo = int(idx.fanout[oid[0]-1])
	}
	hi := int(idx.fanout[oid[0]])
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		switch c := bytes.Compare(idx.name(mid), oid[:]); {
		case c == 0:
			return idx.offset(mid)
		case c < 0:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return 0, false
}

func (idx *packIndex) offset(i int) (int64, bool) {
	if idx.v1 != nil {
		return int64(binary.BigEndian.Uint32(idx.v1[24*i:])), true
	}
	o := binary.BigEndian.Uint32(idx.offsets[4*i:])
	if o&0x80000000 == 0 {
		return int64(o), true
	}
	j := int(o & 0x7fffffff)
	if 8*j+8 > len(idx.large) {
		return 0, false
	}
	v := binary.BigEndian.Uint64(idx.large[8*j:])
	if v > 1<<62 {
		return 0, false
	}
	return int64(v), true
}
