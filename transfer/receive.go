package transfer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// ErrRefused is returned (wrapped) by Receive when it declined the offer,
// by policy or because the offer could not be received safely.
var ErrRefused = errors.New("offer refused")

// OfferInfo is what a consent policy sees.
type OfferInfo struct {
	Remote  string  // sender's peer id, when known
	Entries []Entry // the whole offer
	Files   int     // files (and streams) offered
	Bytes   int64   // their total size
	Move    int64   // bytes that will actually move (after skips and resumes)
	Skip    int     // files already present with identical content
	Resume  int64   // bytes reused from partial copies
	Dir     string  // where they will land ("-" for stdout)
}

// ReceiveOptions configures Receive. Dir is required unless Stdout is set.
type ReceiveOptions struct {
	// Dir is the target folder; it is created if missing. Nothing is ever
	// written outside it: paths are resolved through an os.Root.
	Dir string
	// Overwrite allows replacing existing files with different content.
	Overwrite bool
	// Stdout, if set, receives the content of a single-file offer instead
	// of a file in Dir.
	Stdout io.Writer
	// Decide is the consent policy: a nil error accepts the offer, an error
	// declines it with that message. A nil Decide declines everything.
	Decide func(ctx context.Context, o *OfferInfo) error
	// Progress reports progress; nil for none.
	Progress Progress
	// Remote is the sender's peer id, shown to Decide and in the report.
	Remote string
	// FreeSpace returns the bytes available in a folder; nil uses statfs.
	FreeSpace func(dir string) (int64, error)
	// Fsync makes each file durable before it is confirmed to the sender:
	// its data is flushed to the disk before the rename, and its folder
	// after, so a confirmed file survives a power cut, not only a crash of
	// the process. It costs the time to write the data out.
	Fsync bool
}

// Receive answers one offer arriving on conn. It returns nil only when every
// file it asked for arrived with the offered hash and was moved into place.
func Receive(ctx context.Context, conn io.ReadWriter, opts ReceiveOptions) (*Report, error) {
	stop := context.AfterFunc(ctx, func() { abort(conn) })
	defer stop()
	pr := opts.Progress
	if pr == nil {
		pr = noProgress{}
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = freeSpace
	}
	r := &receiver{conn: conn, fr: NewFrameReader(conn), opts: opts, pr: pr, start: time.Now()}
	rep, err := r.run(ctx)
	if r.root != nil {
		r.root.Close()
	}
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return rep, err
}

type fileState struct {
	want     bool
	offset   int64  // bytes already held in the partial file
	partial  string // partial file, relative to the root
	h        *blockHasher
	prefix   string // content hash of the first offset bytes
	started  bool
	finished bool
}

type receiver struct {
	conn  io.ReadWriter
	fr    *FrameReader
	opts  ReceiveOptions
	pr    Progress
	start time.Time
	root  *os.Root
	wbuf  []byte

	entries []Entry
	state   []fileState
}

func (r *receiver) writeMsg(typ byte, v any) error {
	var payload []byte
	if v != nil {
		payload = marshal(v)
	}
	r.wbuf = AppendFrame(r.wbuf[:0], typ, payload)
	_, err := r.conn.Write(r.wbuf)
	return err
}

// fail tells the sender why we stop, then returns err.
func (r *receiver) fail(err error) error {
	r.writeMsg(FrameError, ErrorMsg{Msg: err.Error()})
	return err
}

func (r *receiver) refuse(rep *Report, reason string) error {
	rep.Reason = reason
	r.writeMsg(FrameDecision, Decision{Accept: false, Reason: reason})
	return fmt.Errorf("%w: %s", ErrRefused, reason)
}

func (r *receiver) readOffer() (OfferEnd, error) {
	var end OfferEnd
	for {
		typ, payload, err := r.fr.Next()
		if err != nil {
			return end, fmt.Errorf("read offer: %w", err)
		}
		switch typ {
		case FrameOffer:
			var o Offer
			if err := unmarshal(typ, payload, &o); err != nil {
				return end, err
			}
			if o.V != Version {
				return end, fmt.Errorf("sender speaks transfer protocol version %d, we speak %d", o.V, Version)
			}
			if len(r.entries)+len(o.Entries) > MaxEntries {
				return end, fmt.Errorf("offer has more than %d entries", MaxEntries)
			}
			r.entries = append(r.entries, o.Entries...)
		case FrameOfferEnd:
			if err := unmarshal(typ, payload, &end); err != nil {
				return end, err
			}
			return end, nil
		default:
			return end, fmt.Errorf("transfer: unexpected %s during the offer", FrameName(typ))
		}
	}
}

func (r *receiver) run(ctx context.Context) (*Report, error) {
	rep := &Report{Remote: r.opts.Remote}
	defer func() { rep.Duration = time.Since(r.start) }()
	end, err := r.readOffer()
	if err != nil {
		return rep, r.fail(err)
	}
	if err := ValidateEntries(r.entries); err != nil {
		return rep, r.refuse(rep, fmt.Sprintf("unsafe offer: %v", err))
	}
	info := &OfferInfo{Remote: r.opts.Remote, Entries: r.entries, Dir: r.opts.Dir}
	for i := range r.entries {
		if e := &r.entries[i]; e.Kind == KindFile {
			info.Files++
			info.Bytes += max(e.Size, 0)
		}
	}
	rep.Entries, rep.Total = len(r.entries), info.Bytes
	if end.Entries != len(r.entries) || end.Files != info.Files || end.Bytes != info.Bytes {
		return rep, r.refuse(rep, "offer totals do not match its entries")
	}
	r.state = make([]fileState, len(r.entries))
	if r.opts.Stdout == nil {
		if reason, err := r.askHashes(); err != nil {
			return rep, err
		} else if reason != "" {
			return rep, r.refuse(rep, reason)
		}
	}
	if r.opts.Stdout != nil {
		if len(r.entries) != 1 || r.entries[0].Kind != KindFile {
			return rep, r.refuse(rep, "receiving to stdout takes exactly one file")
		}
		info.Dir = "-"
		info.Move = info.Bytes
		r.state[0].want = true
	} else if reason := r.plan(info); reason != "" {
		return rep, r.refuse(rep, reason)
	}
	if r.opts.Decide == nil {
		return rep, r.refuse(rep, "receiver has no consent policy")
	}
	if err := r.opts.Decide(ctx, info); err != nil {
		return rep, r.refuse(rep, err.Error())
	}
	dec := Decision{Accept: true}
	for i := range r.state {
		if s := &r.state[i]; s.want {
			w := Want{I: i, Offset: s.offset}
			if s.offset > 0 {
				w.Prefix = s.prefix
			}
			dec.Want = append(dec.Want, w)
		}
	}
	rep.Skipped = info.Skip
	if r.opts.Stdout == nil {
		if err := r.makeTree(); err != nil {
			return rep, r.refuse(rep, err.Error())
		}
	}
	if err := r.writeMsg(FrameDecision, dec); err != nil {
		return rep, err
	}
	r.pr.Begin(len(dec.Want), info.Move)
	defer r.pr.End()
	err = r.receiveFiles(ctx, rep)
	if err != nil {
		return rep, err
	}
	if r.opts.Stdout == nil {
		if err := r.finishDirs(); err != nil {
			return rep, r.fail(err)
		}
	}
	if err := r.writeMsg(FrameSummary, Summary{Files: rep.Files, Bytes: rep.Bytes}); err != nil {
		return rep, err
	}
	if len(rep.Failed) > 0 {
		return rep, fmt.Errorf("%w: %v", ErrNotConfirmed, rep.Failed)
	}
	return rep, nil
}

// askHashes asks the sender for the hashes it left out of its offer where
// the receiver needs them to decide: files already present with the same
// size, which are skipped when their content is the same. It returns a
// reason to refuse, or an error if the link failed.
func (r *receiver) askHashes() (string, error) {
	if err := os.MkdirAll(r.opts.Dir, 0o755); err != nil {
		return fmt.Sprintf("cannot create %s: %v", r.opts.Dir, err), nil
	}
	root, err := os.OpenRoot(r.opts.Dir)
	if err != nil {
		return fmt.Sprintf("cannot open %s: %v", r.opts.Dir, err), nil
	}
	r.root = root
	var need []int
	for i := range r.entries {
		e := &r.entries[i]
		if !e.lateHash() {
			continue
		}
		if fi, err := root.Lstat(filepath.FromSlash(e.Path)); err == nil && fi.Mode().IsRegular() && fi.Size() == e.Size {
			need = append(need, i)
		}
	}
	if len(need) == 0 {
		return "", nil
	}
	if err := r.writeMsg(FrameHashReq, HashRequest{I: need}); err != nil {
		return "", err
	}
	typ, payload, err := r.fr.Next()
	if err != nil {
		return "", fmt.Errorf("waiting for the sender's hashes: %w", err)
	}
	var hs Hashes
	switch typ {
	case FrameHashes:
		if err := unmarshal(typ, payload, &hs); err != nil {
			return "", r.fail(err)
		}
	case FrameError:
		var m ErrorMsg
		unmarshal(typ, payload, &m)
		return "", &RemoteError{Msg: m.Msg}
	default:
		return "", r.fail(fmt.Errorf("transfer: got %s, want HASHES", FrameName(typ)))
	}
	if len(hs.Hashes) != len(need) {
		return "", r.fail(fmt.Errorf("transfer: asked for %d hashes, got %d", len(need), len(hs.Hashes)))
	}
	for n, i := range need {
		if err := checkHash(hs.Hashes[n]); err != nil {
			return "", r.fail(fmt.Errorf("transfer: HASHES: %v", err))
		}
		r.entries[i].Hash = hs.Hashes[n]
	}
	return "", nil
}

// plan inspects the target folder: which files are already there, which have
// partial copies to resume, what conflicts, and whether the disk has room.
// It returns a reason to refuse, or "".
func (r *receiver) plan(info *OfferInfo) string {
	root := r.root
	var conflicts []string
	for i := range r.entries {
		e := &r.entries[i]
		st := &r.state[i]
		name := filepath.FromSlash(e.Path)
		fi, err := root.Lstat(name)
		exists := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			// os.Root refuses paths that escape through a symlink.
			return fmt.Sprintf("cannot place %q safely: %v", e.Path, err)
		}
		switch e.Kind {
		case KindDir:
			if exists && !fi.IsDir() {
				conflicts = append(conflicts, e.Path+" exists and is not a directory")
			}
		case KindSymlink:
			if exists {
				if t, _ := root.Readlink(name); fi.Mode()&fs.ModeSymlink != 0 && t == e.Target {
					continue
				}
				if !r.opts.Overwrite || fi.IsDir() {
					conflicts = append(conflicts, e.Path+" exists")
				}
			}
		case KindFile:
			if exists {
				if fi.IsDir() || !fi.Mode().IsRegular() {
					conflicts = append(conflicts, e.Path+" exists and is not a regular file")
					continue
				}
				if !e.IsStream() && fi.Size() == e.Size && r.sameContent(name, e.Size, e.Hash) {
					info.Skip++
					continue
				}
				if !r.opts.Overwrite {
					conflicts = append(conflicts, e.Path+" exists with other content")
					continue
				}
			}
			st.want = true
			info.Move += max(e.Size, 0)
			if e.IsStream() {
				st.partial = partialName(e.Path, "stream-"+randomHex(8))
				continue
			}
			// A partial copy is named after the content hash when the
			// offer has it, else after size and time; both are looked for
			// (the sender may have hashed the file since), and the
			// sender checks the prefix either way.
			st.h = newBlockHasher()
			names := []string{partialName(e.Path, lateTag(e))}
			if e.Hash != "" {
				names = append([]string{partialName(e.Path, e.Hash[:16])}, names...)
			}
			st.partial = names[0]
			for _, name := range names {
				pf, err := root.Open(filepath.FromSlash(name))
				if err != nil {
					continue
				}
				st.offset, st.prefix = resumePoint(st.h, pf, e)
				pf.Close()
				if st.offset > 0 {
					st.partial = name
					info.Move -= st.offset
					info.Resume += st.offset
					break
				}
			}
		}
	}
	if len(conflicts) > 0 {
		sort.Strings(conflicts)
		if len(conflicts) > 5 {
			conflicts = append(conflicts[:5], fmt.Sprintf("and %d more", len(conflicts)-5))
		}
		return "would overwrite existing files (receive with --overwrite to allow): " + strings.Join(conflicts, "; ")
	}
	free, err := r.opts.FreeSpace(r.opts.Dir)
	if err == nil && info.Move > free {
		return fmt.Sprintf("not enough disk space in %s: the offer needs %s, %s free", r.opts.Dir, FormatBytes(info.Move), FormatBytes(free))
	}
	return ""
}

func (r *receiver) sameContent(name string, size int64, hash string) bool {
	f, err := r.root.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	blocks, err := hashBlocks(context.Background(), f, size)
	if err != nil {
		return false
	}
	root := rootOf(blocks, size)
	return hex.EncodeToString(root[:]) == hash
}

// resumePoint reads a partial copy into h and returns how much of it can be
// kept and the content hash of that prefix: the whole file if it is all
// there, else its whole blocks (a torn last block is dropped).
func resumePoint(h *blockHasher, f io.Reader, e *Entry) (int64, string) {
	n, err := io.Copy(h, io.LimitReader(f, e.Size))
	if err != nil {
		h.Reset()
		return 0, ""
	}
	if n == e.Size {
		return n, h.Sum()
	}
	h.blocks = h.blocks[:n/BlockSize]
	h.cur.Reset()
	h.inCur, h.size = 0, int64(len(h.blocks))*BlockSize
	if len(h.blocks) == 0 {
		return 0, ""
	}
	return h.size, prefixHash(h.blocks)
}

// makeTree creates the offered directories and symlinks.
func (r *receiver) makeTree() error {
	for i := range r.entries {
		e := &r.entries[i]
		name := filepath.FromSlash(e.Path)
		switch e.Kind {
		case KindDir:
			if err := r.root.MkdirAll(name, 0o700); err != nil {
				return fmt.Errorf("create %s: %w", e.Path, err)
			}
		case KindFile:
			if d := path.Dir(e.Path); d != "." {
				if err := r.root.MkdirAll(filepath.FromSlash(d), 0o755); err != nil {
					return fmt.Errorf("create %s: %w", d, err)
				}
			}
		}
	}
	for i := range r.entries {
		e := &r.entries[i]
		if e.Kind != KindSymlink {
			continue
		}
		name := filepath.FromSlash(e.Path)
		if t, err := r.root.Readlink(name); err == nil && t == e.Target {
			continue
		}
		if d := path.Dir(e.Path); d != "." {
			if err := r.root.MkdirAll(filepath.FromSlash(d), 0o755); err != nil {
				return fmt.Errorf("create %s: %w", d, err)
			}
		}
		if r.opts.Overwrite {
			r.root.Remove(name)
		}
		if err := r.root.Symlink(e.Target, name); err != nil {
			return fmt.Errorf("create symlink %s: %w", e.Path, err)
		}
	}
	return nil
}

// finishDirs applies directory modes and times, deepest first, once their
// files are in place (a read-only directory must be filled before it is made
// read-only).
func (r *receiver) finishDirs() error {
	var dirs []int
	for i := range r.entries {
		if r.entries[i].Kind == KindDir {
			dirs = append(dirs, i)
		}
	}
	sort.Slice(dirs, func(a, b int) bool {
		return strings.Count(r.entries[dirs[a]].Path, "/") > strings.Count(r.entries[dirs[b]].Path, "/")
	})
	for _, i := range dirs {
		e := &r.entries[i]
		name := filepath.FromSlash(e.Path)
		if err := r.root.Chmod(name, fs.FileMode(e.Mode)|0o700); err != nil {
			return fmt.Errorf("chmod %s: %w", e.Path, err)
		}
		if e.MTime != 0 {
			t := time.Unix(0, e.MTime)
			r.root.Chtimes(name, t, t)
		}
	}
	return nil
}

func (r *receiver) receiveFiles(ctx context.Context, rep *Report) error {
	cur := -1
	var f *os.File
	var written int64
	var sum transitSum
	// block gathers consecutive DATA payloads (read straight into it) and
	// goes to the disk when full or when the file ends.
	block := make([]byte, 0, writeBlock)
	var dst io.Writer
	var werr error
	write := func(b []byte) {
		for len(b) > 0 && werr == nil {
			k := min(len(b), writePiece)
			if _, err := dst.Write(b[:k]); err != nil {
				werr = fmt.Errorf("write %s: %w", r.entries[cur].Path, err)
			}
			b = b[k:]
		}
	}
	flush := func() {
		write(block)
		block = block[:0]
	}
	defer func() {
		if cur >= 0 && dst != nil {
			// What arrived before an error is kept for a resume.
			flush()
		}
		if f != nil {
			f.Close()
			if cur >= 0 && r.entries[cur].IsStream() {
				r.root.Remove(filepath.FromSlash(r.state[cur].partial))
			}
		}
	}()
	for {
		typ, payload, err := r.fr.NextInto(block)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if cur >= 0 && !r.entries[cur].IsStream() {
				return fmt.Errorf("connection lost in %s after %s; the partial copy is kept and the next transfer resumes it: %w",
					r.entries[cur].Path, FormatBytes(written), err)
			}
			return fmt.Errorf("connection lost: %w", err)
		}
		switch typ {
		case FrameData:
			if cur < 0 {
				return r.fail(errors.New("transfer: DATA outside a file"))
			}
			e := &r.entries[cur]
			if e.Size >= 0 && written+int64(len(payload)) > e.Size {
				return r.fail(fmt.Errorf("transfer: sender sent more than %d bytes for %s", e.Size, e.Path))
			}
			if werr != nil {
				return r.fail(werr)
			}
			sum.Write(payload)
			if len(payload) <= cap(block)-len(block) {
				block = block[:len(block)+len(payload)] // read in place
			} else {
				// It did not fit and was read into the frame reader's
				// buffer: write what is gathered, then it.
				flush()
				write(payload)
			}
			if len(block) >= writePiece {
				flush()
			}
			written += int64(len(payload))
			rep.Bytes += int64(len(payload))
			if rep.FirstData == 0 {
				rep.FirstData = time.Since(r.start)
			}
			r.pr.Advance(int64(len(payload)))
		case FrameFileStart:
			var fs FileStart
			if err := unmarshal(typ, payload, &fs); err != nil {
				return r.fail(err)
			}
			if cur >= 0 {
				return r.fail(errors.New("transfer: FILE_START inside a file"))
			}
			if fs.I < 0 || fs.I >= len(r.state) || !r.state[fs.I].want || r.state[fs.I].started {
				return r.fail(fmt.Errorf("transfer: FILE_START for entry %d, which was not asked for", fs.I))
			}
			st := &r.state[fs.I]
			if fs.Offset != 0 && fs.Offset != st.offset {
				return r.fail(fmt.Errorf("transfer: FILE_START at offset %d, asked for %d", fs.Offset, st.offset))
			}
			cur, st.started, written = fs.I, true, fs.Offset
			e := &r.entries[cur]
			sum = newTransitSum()
			dst, werr = r.opts.Stdout, nil
			if r.opts.Stdout == nil {
				if f, err = r.openPartial(st, fs.Offset); err != nil {
					return r.fail(err)
				}
				dst = f
			}
			rep.Resumed += fs.Offset
			r.pr.FileBegin(e.Path, e.Size, fs.Offset)
		case FrameFileEnd:
			var fe FileEnd
			if err := unmarshal(typ, payload, &fe); err != nil {
				return r.fail(err)
			}
			if cur < 0 || fe.I != cur {
				return r.fail(fmt.Errorf("transfer: FILE_END for entry %d outside it", fe.I))
			}
			e := &r.entries[cur]
			st := &r.state[cur]
			flush()
			dst = nil
			if werr != nil {
				return r.fail(werr)
			}
			var ferr error
			switch {
			case fe.Size != written || (e.Size >= 0 && written != e.Size):
				ferr = fmt.Errorf("size %d, expected %d", written, max(e.Size, fe.Size))
			case fe.Sum != sum.hex():
				ferr = errors.New("transit hash mismatch (XXH3-128): the data was corrupted on the way")
			case fe.Hash != "" && e.Hash != "" && fe.Hash != e.Hash:
				ferr = errors.New("the sender ended the file with another content hash than it offered")
			}
			if f != nil {
				ferr = r.promote(f, e, st, ferr)
				f = nil
			}
			st.finished = true
			res := Result{I: cur, OK: ferr == nil}
			if ferr != nil {
				res.Err = ferr.Error()
				rep.Failed = append(rep.Failed, e.Path+": "+ferr.Error())
			} else {
				rep.Files++
				if r.opts.Stdout != nil {
					rep.Saved = append(rep.Saved, "-")
				} else {
					rep.Saved = append(rep.Saved, filepath.Join(r.opts.Dir, filepath.FromSlash(e.Path)))
				}
			}
			r.pr.FileEnd(e.Path, ferr)
			if err := r.writeMsg(FrameResult, res); err != nil {
				return err
			}
			cur = -1
		case FrameDone:
			if cur >= 0 {
				return r.fail(errors.New("transfer: DONE inside a file"))
			}
			for i := range r.state {
				if r.state[i].want && !r.state[i].finished {
					return r.fail(fmt.Errorf("transfer: sender finished without sending %s", r.entries[i].Path))
				}
			}
			return nil
		case FrameError:
			var m ErrorMsg
			unmarshal(typ, payload, &m)
			return &RemoteError{Msg: m.Msg}
		default:
			return r.fail(fmt.Errorf("transfer: unexpected %s", FrameName(typ)))
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func (r *receiver) openPartial(st *fileState, offset int64) (*os.File, error) {
	name := filepath.FromSlash(st.partial)
	if offset == 0 {
		if st.offset > 0 {
			// The sender's file differs from our partial copy: start over.
			st.h.Reset()
		}
		// A new file, never an old one truncated to zero: ext4 takes a
		// truncation to size 0 for the "rewrite in place" pattern and, to
		// protect it, writes the whole file back synchronously when it is
		// closed (auto_da_alloc), which stalled the end of every large
		// received file for a second or more per GiB.
		if err := r.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale partial file: %w", err)
		}
		f, err := r.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create partial file: %w", err)
		}
		return f, nil
	}
	f, err := r.root.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open partial file: %w", err)
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case fi.Size() < offset:
		err = fmt.Errorf("it shrank to %d bytes since its first %d were checked", fi.Size(), offset)
	case fi.Size() > offset:
		err = f.Truncate(offset) // to a size > 0: no writeback at close
	}
	if err == nil {
		_, err = f.Seek(offset, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("resume partial file: %w", err)
	}
	return f, nil
}

// promote closes f and, if the file verified, moves it into place; otherwise
// it removes the partial copy, which cannot be trusted.
func (r *receiver) promote(f *os.File, e *Entry, st *fileState, verr error) error {
	if verr == nil && r.opts.Fsync {
		if err := syncFile(f); err != nil {
			verr = fmt.Errorf("flush to disk: %w", err)
		}
	}
	cerr := f.Close()
	partial := filepath.FromSlash(st.partial)
	if verr == nil {
		verr = cerr
	}
	if verr != nil {
		r.root.Remove(partial)
		return verr
	}
	name := filepath.FromSlash(e.Path)
	if !r.opts.Overwrite {
		if _, err := r.root.Lstat(name); err == nil {
			return fmt.Errorf("%s appeared while it was being received; kept the existing one", e.Path)
		}
	}
	if err := r.root.Chmod(partial, fs.FileMode(e.Mode)); err != nil {
		return err
	}
	if e.MTime != 0 {
		t := time.Unix(0, e.MTime)
		r.root.Chtimes(partial, t, t)
	}
	if err := r.root.Rename(partial, name); err != nil {
		return fmt.Errorf("move %s into place: %w", e.Path, err)
	}
	if r.opts.Fsync {
		// the rename itself is durable once the folder is
		d, err := r.root.Open(filepath.Dir(name))
		if err == nil {
			err = syncFile(d)
			d.Close()
		}
		if err != nil {
			return fmt.Errorf("flush the folder of %s to disk: %w", e.Path, err)
		}
	}
	return nil
}

// syncFile is (*os.File).Sync; tests count its calls.
var syncFile = (*os.File).Sync

// partialName is where a file's partial copy lives while it arrives: beside
// the final name (same filesystem, so the final rename is atomic), hidden,
// and tagged with the content it is for so another file's partial copy is
// never resumed.
func partialName(p, tag string) string {
	dir, base := path.Split(p)
	if len(base) > 200 {
		base = base[:200]
	}
	return dir + "." + base + "." + tag + ".delpart"
}

// lateTag names the partial copy of a file offered without its hash: by
// size and modification time, which change when the content does.
func lateTag(e *Entry) string {
	return fmt.Sprintf("s%x-%x", e.Size, e.MTime)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// FormatBytes prints a byte count with a binary unit.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeBlock holds one full DATA frame, or several smaller ones (a rate-
// limited sender's) until writePiece bytes are gathered. It goes to the disk
// in writes of at most writePiece: fewer, larger writes cost the kernel less
// per byte, up to a point (256 KiB measured a little cheaper than 512 KiB,
// 1 MiB clearly slower).
const (
	writeBlock = DataChunk
	writePiece = 256 << 10
)
