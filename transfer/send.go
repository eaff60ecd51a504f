package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// ErrDeclined is returned (wrapped) when the receiver refuses the offer.
var ErrDeclined = errors.New("receiver declined")

// ErrNotConfirmed is returned (wrapped) when the receiver could not confirm
// every file's hash.
var ErrNotConfirmed = errors.New("not every file was confirmed by the receiver")

// RemoteError is an ERROR frame from the other side.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return "peer: " + e.Msg }

// Progress receives transfer progress. Calls come from one goroutine.
type Progress interface {
	// Begin is called once the receiver's decision is known: the number of
	// files and bytes that will actually flow.
	Begin(files int, bytes int64)
	// FileBegin starts a file; offset bytes were already there (resumed).
	FileBegin(path string, size, offset int64)
	// Advance reports n more bytes moved.
	Advance(n int64)
	// FileEnd finishes a file; err is nil when its hash was confirmed.
	FileEnd(path string, err error)
	// End is called once, last.
	End()
}

type noProgress struct{}

func (noProgress) Begin(int, int64)               {}
func (noProgress) FileBegin(string, int64, int64) {}
func (noProgress) Advance(int64)                  {}
func (noProgress) FileEnd(string, error)          {}
func (noProgress) End()                           {}

// Report says what a transfer did.
type Report struct {
	Entries   int           // entries in the offer
	Files     int           // files moved and confirmed
	Skipped   int           // files the receiver already had
	Failed    []string      // files that could not be confirmed
	Bytes     int64         // bytes moved over the link (excludes resumed and skipped)
	Resumed   int64         // bytes not moved because a partial copy was reused
	Total     int64         // size of every file in the offer
	Duration  time.Duration // from the first byte of the offer to the end
	Saved     []string      // receiver: final paths written (or "-" for stdout)
	Remote    string        // the other side's peer id, when known
	Reason    string        // receiver's reason when it declined
	FirstData time.Duration // time from start to the first data byte
}

// SendOptions tunes Send. The zero value is valid.
type SendOptions struct {
	Progress Progress
	// RateLimit caps the data rate in bytes per second; 0 means no cap.
	RateLimit int64
}

// Send offers src over conn and moves what the receiver asks for. It returns
// nil only when the receiver confirmed every file's hash.
func Send(ctx context.Context, conn io.ReadWriter, src *Source, opts SendOptions) (*Report, error) {
	stop := context.AfterFunc(ctx, func() { abort(conn) })
	defer stop()
	pr := opts.Progress
	if pr == nil {
		pr = noProgress{}
	}
	s := &sender{conn: conn, src: src, fr: NewFrameReader(conn), pr: pr, start: time.Now(), rate: opts.RateLimit}
	rep, err := s.run(ctx)
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return rep, err
}

type sender struct {
	conn  io.ReadWriter
	src   *Source
	fr    *FrameReader
	pr    Progress
	start time.Time
	wbuf  []byte
	rbuf  []byte // a file's chunks, read in the sending goroutine

	rate      int64 // bytes per second, 0 for no limit
	paced     int64 // bytes sent since pacing began
	paceStart time.Time
}

// pace sleeps as long as the data sent so far is ahead of the rate limit.
func (s *sender) pace(ctx context.Context, n int) error {
	if s.rate <= 0 {
		return nil
	}
	if s.paceStart.IsZero() {
		s.paceStart = time.Now()
	}
	s.paced += int64(n)
	due := s.paceStart.Add(time.Duration(float64(s.paced) / float64(s.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *sender) writeMsg(typ byte, v any) error {
	var payload []byte
	if v != nil {
		payload = marshal(v)
	}
	s.wbuf = AppendFrame(s.wbuf[:0], typ, payload)
	_, err := s.conn.Write(s.wbuf)
	return err
}

func (s *sender) run(ctx context.Context) (*Report, error) {
	rep := &Report{Entries: len(s.src.Entries), Total: s.src.Bytes()}
	defer func() { rep.Duration = time.Since(s.start) }()

	// Offer, in batches that keep each frame well under MaxPayload.
	batch := Offer{V: Version}
	size := 0
	for _, e := range s.src.Entries {
		batch.Entries = append(batch.Entries, e)
		size += len(e.Path) + len(e.Target) + 160
		if size > MaxPayload/2 {
			if err := s.writeMsg(FrameOffer, batch); err != nil {
				return rep, fmt.Errorf("send offer: %w", err)
			}
			batch.Entries, size = batch.Entries[:0], 0
		}
	}
	if len(batch.Entries) > 0 {
		if err := s.writeMsg(FrameOffer, batch); err != nil {
			return rep, fmt.Errorf("send offer: %w", err)
		}
	}
	end := OfferEnd{Entries: len(s.src.Entries), Files: s.src.Files(), Bytes: s.src.Bytes()}
	if err := s.writeMsg(FrameOfferEnd, end); err != nil {
		return rep, fmt.Errorf("send offer: %w", err)
	}

	dec, err := s.decision(ctx)
	if err != nil {
		return rep, err
	}
	if !dec.Accept {
		rep.Reason = dec.Reason
		return rep, fmt.Errorf("%w: %s", ErrDeclined, dec.Reason)
	}
	wanted := make(map[int]bool, len(dec.Want))
	var toSend int64
	for _, w := range dec.Want {
		if w.I < 0 || w.I >= len(s.src.Entries) || s.src.Entries[w.I].Kind != KindFile || wanted[w.I] {
			return rep, fmt.Errorf("receiver asked for entry %d, which is not a file of the offer", w.I)
		}
		wanted[w.I] = true
		if sz := s.src.Entries[w.I].Size; sz > 0 {
			toSend += sz - min(max(w.Offset, 0), sz)
		}
	}
	rep.Skipped = s.src.Files() - len(dec.Want)
	s.pr.Begin(len(dec.Want), toSend)
	defer s.pr.End()

	// Results come back while data flows: read them in a goroutine that
	// this function waits for.
	results := make(chan Result, len(dec.Want))
	readErr := make(chan error, 1)
	var summary Summary
	go func() {
		readErr <- s.readResults(results, &summary, len(dec.Want))
	}()

	var sendErr error
	for _, w := range dec.Want {
		if sendErr = s.sendFile(ctx, w, rep); sendErr != nil {
			break
		}
	}
	if sendErr == nil {
		sendErr = s.writeMsg(FrameDone, nil)
	}
	if sendErr != nil {
		abort(s.conn)
		<-readErr
		return rep, sendErr
	}
	if err := <-readErr; err != nil {
		return rep, err
	}
	close(results)
	for r := range results {
		e := &s.src.Entries[r.I]
		if r.OK {
			rep.Files++
			s.pr.FileEnd(e.Path, nil)
		} else {
			rep.Failed = append(rep.Failed, fmt.Sprintf("%s: %s", e.Path, r.Err))
			s.pr.FileEnd(e.Path, errors.New(r.Err))
		}
	}
	if len(rep.Failed) > 0 {
		return rep, fmt.Errorf("%w: %v", ErrNotConfirmed, rep.Failed)
	}
	return rep, nil
}

// decision waits for the receiver's DECISION, answering its HASH_REQUEST
// first if it makes one.
func (s *sender) decision(ctx context.Context) (Decision, error) {
	var dec Decision
	t, payload, err := s.fr.Next()
	if err == nil && t == FrameHashReq {
		var req HashRequest
		if err := unmarshal(t, payload, &req); err != nil {
			return dec, err
		}
		if len(req.I) > len(s.src.Entries) {
			return dec, fmt.Errorf("receiver asked for %d hashes, the offer has %d entries", len(req.I), len(s.src.Entries))
		}
		hs, err := s.src.lateHashes(ctx, req.I)
		if err != nil {
			s.writeMsg(FrameError, ErrorMsg{Msg: err.Error()})
			return dec, err
		}
		if err := s.writeMsg(FrameHashes, Hashes{Hashes: hs}); err != nil {
			return dec, err
		}
		t, payload, err = s.fr.Next()
	}
	if err == nil {
		err = s.check(t, payload, FrameDecision, &dec)
	}
	if err != nil {
		return dec, fmt.Errorf("waiting for the receiver's decision: %w", err)
	}
	return dec, nil
}

// readResults collects one RESULT per wanted file, then the SUMMARY.
func (s *sender) readResults(results chan<- Result, sum *Summary, want int) error {
	got := 0
	for {
		typ, payload, err := s.fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("receiver went away after confirming %d of %d files: %w", got, want, err)
		}
		switch typ {
		case FrameResult:
			var r Result
			if err := unmarshal(typ, payload, &r); err != nil {
				return err
			}
			if r.I < 0 || r.I >= len(s.src.Entries) || got >= want {
				return fmt.Errorf("receiver sent a result for entry %d, which was not sent", r.I)
			}
			got++
			results <- r
		case FrameSummary:
			if got != want {
				return fmt.Errorf("receiver ended after %d of %d results", got, want)
			}
			return unmarshal(typ, payload, sum)
		case FrameError:
			var m ErrorMsg
			unmarshal(typ, payload, &m)
			return &RemoteError{Msg: m.Msg}
		default:
			return fmt.Errorf("transfer: unexpected %s from the receiver", FrameName(typ))
		}
	}
}

// check decodes frame (t, payload), which must be of type typ (an ERROR
// frame becomes a RemoteError), into v.
func (s *sender) check(t byte, payload []byte, typ byte, v any) error {
	if t == FrameError {
		var m ErrorMsg
		unmarshal(t, payload, &m)
		return &RemoteError{Msg: m.Msg}
	}
	if t != typ {
		return fmt.Errorf("transfer: got %s, want %s", FrameName(t), FrameName(typ))
	}
	return unmarshal(t, payload, v)
}

func (s *sender) sendFile(ctx context.Context, w Want, rep *Report) error {
	e := &s.src.Entries[w.I]
	var r io.Reader
	var f *os.File
	offset := int64(0)
	if e.IsStream() {
		r = s.src.stream
	} else {
		var err error
		if f, err = os.Open(s.src.local[w.I]); err != nil {
			return err
		}
		defer f.Close()
		if offset, err = s.resumeAt(ctx, f, w); err != nil {
			return err
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return err
		}
		r = f
	}
	if err := s.writeMsg(FrameFileStart, FileStart{I: w.I, Offset: offset}); err != nil {
		return err
	}
	rep.Resumed += offset
	s.pr.FileBegin(e.Path, e.Size, offset)

	// Every byte that leaves is summed (see transitSum) as it is read.
	sum := newTransitSum()
	sent := offset
	next, stop := s.chunks(r, sum, e.IsStream())
	defer stop()
	for {
		c, ok := next()
		if !ok {
			break
		}
		n := c.n
		if n > 0 {
			if e.Size >= 0 && sent+int64(n) > e.Size {
				return fmt.Errorf("%s grew while being sent", e.Path)
			}
			AppendHeader(c.buf[:0], FrameData, n)
			if rep.FirstData == 0 {
				rep.FirstData = time.Since(s.start)
			}
			if _, err := s.conn.Write(c.buf[:HeaderSize+n]); err != nil {
				return err
			}
			c.release()
			sent += int64(n)
			rep.Bytes += int64(n)
			s.pr.Advance(int64(n))
			if err := s.pace(ctx, n); err != nil {
				return err
			}
		}
		if c.err != nil {
			return fmt.Errorf("read %s: %w", e.Path, c.err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	// The sum is complete once chunks is closed.
	end := FileEnd{I: w.I, Size: sent, Hash: e.Hash, Sum: sum.hex()}
	if !e.IsStream() {
		if sent != e.Size {
			return fmt.Errorf("%s shrank while being sent (%d of %d bytes)", e.Path, sent, e.Size)
		}
		// What was read is what was summed; make sure it is the file that
		// was offered, not one changed in the middle of the read.
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size() != e.Size || st.ModTime().UnixNano() != e.MTime {
			return fmt.Errorf("%s changed while being sent", s.src.local[w.I])
		}
	}
	return s.writeMsg(FrameFileEnd, end)
}

// resumeAt returns where file w.I starts: at the receiver's offset if the
// prefix it holds is ours, else 0. The prefix is compared through its
// content hash — from the block digests when the sender has them, else by
// hashing that much of the file.
func (s *sender) resumeAt(ctx context.Context, f *os.File, w Want) (int64, error) {
	e := &s.src.Entries[w.I]
	if w.Offset <= 0 || w.Offset > e.Size || (w.Offset != e.Size && w.Offset%BlockSize != 0) {
		return 0, nil
	}
	ds := s.src.blocks[w.I]
	if ds == nil {
		var err error
		if ds, err = hashBlocks(ctx, f, w.Offset); err != nil {
			return 0, err
		}
	}
	var ph string
	switch k := w.Offset / BlockSize; {
	case w.Offset == e.Size && e.Hash != "":
		ph = e.Hash
	case w.Offset%BlockSize != 0: // the whole file, hashed just now
		r := rootOf(ds, w.Offset)
		ph = hex.EncodeToString(r[:])
	case int(k) <= len(ds):
		ph = prefixHash(ds[:k])
	}
	if ph != "" && ph == w.Prefix {
		return w.Offset, nil
	}
	return 0, nil
}

// abort unblocks every pending read and write on conn: through an expired
// deadline where it has one (a peer channel's Close is only a half-close),
// else by closing it.
func abort(conn any) {
	if d, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Unix(1, 0))
		return
	}
	if c, ok := conn.(io.Closer); ok {
		c.Close()
	}
}

// chunk is one block read ahead by prefetch, with room for a frame header
// before the data (buf[HeaderSize:HeaderSize+n]).
type chunk struct {
	buf     []byte
	n       int
	err     error // read error other than end of file
	release func()
}

// chunks returns the source of a file's DATA chunks, each summed into h as
// it is read. A regular file is read in the sending goroutine, one chunk at
// a time: the page cache answers at once, and the multiplexer's send loop
// already encrypts one chunk while the next is read (a read-ahead goroutine
// only added two hand-offs per chunk, measured as more CPU time on a busy
// machine). A stream (stdin) is read ahead in a goroutine of its own, since
// its producer may be slow when the network is not.
func (s *sender) chunks(r io.Reader, h io.Writer, stream bool) (next func() (chunk, bool), stop func()) {
	size := s.chunkSize()
	if stream {
		ch, stop := prefetch(r, h, size)
		return func() (chunk, bool) { c, ok := <-ch; return c, ok }, stop
	}
	if s.rbuf == nil {
		s.rbuf = make([]byte, HeaderSize+DataChunk)
	}
	buf, done := s.rbuf[:HeaderSize+size], false
	return func() (chunk, bool) {
		if done {
			return chunk{}, false
		}
		n, err := io.ReadFull(r, buf[HeaderSize:])
		done = err != nil // end of file, or a read error carried by this chunk
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = nil
		}
		if n == 0 && err == nil {
			return chunk{}, false
		}
		h.Write(buf[HeaderSize : HeaderSize+n])
		return chunk{buf: buf, n: n, err: err, release: func() {}}, true
	}, func() {}
}

// chunkSize is the DATA payload size: DataChunk, or under a rate limit
// about a tenth of a second's worth (at least 16 KiB), so that a limited
// transfer flows and shows progress evenly rather than in bursts.
func (s *sender) chunkSize() int {
	if s.rate <= 0 {
		return DataChunk
	}
	return int(min(max(s.rate/10, 16<<10), DataChunk))
}

// prefetchDepth is how many chunks are read ahead of the network.
const prefetchDepth = 4

// prefetch reads r in a goroutine, size bytes at a time, feeding h (if
// not nil) as it goes, so that disk reads and hashing overlap with sending.
// The channel closes at end of file or after a chunk carrying an error.
// stop ends the goroutine early and waits for it.
func prefetch(r io.Reader, h io.Writer, size int) (<-chan chunk, func()) {
	out := make(chan chunk)
	free := make(chan []byte, prefetchDepth)
	for range prefetchDepth {
		free <- make([]byte, HeaderSize+size)
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-quit:
				return
			}
			n, err := io.ReadFull(r, buf[HeaderSize:])
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = nil
				if n == 0 {
					return
				}
			}
			if h != nil && n > 0 {
				h.Write(buf[HeaderSize : HeaderSize+n])
			}
			c := chunk{buf: buf, n: n, err: err, release: func() { free <- buf }}
			select {
			case out <- c:
			case <-quit:
				return
			}
			if err != nil || n < size {
				return
			}
		}
	}()
	var once sync.Once
	return out, func() {
		once.Do(func() { close(quit) })
		<-done
	}
}
