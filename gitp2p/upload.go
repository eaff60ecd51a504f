package gitp2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// Trace, when set, receives timing points of each session (del git serve
// sets it when DEL_GIT_TRACE is set).
var Trace func(format string, args ...any)

func trace(format string, args ...any) {
	if Trace != nil {
		Trace(format, args...)
	}
}

// Agent is the agent= capability this server advertises.
const Agent = "del/1"

// uploadCaps are the upload-pack capabilities advertised after the first ref
// (gitprotocol-capabilities(5)). deepen-since, deepen-not, filter and
// allow-*-sha1-in-want are not offered.
const uploadCaps = "multi_ack thin-pack side-band side-band-64k ofs-delta shallow deepen-relative no-progress include-tag multi_ack_detailed no-done"

// ProtocolError is a malformed or unexpected message from the client. The
// server answers it with an ERR packet and ends the session.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "protocol error: " + e.Msg }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// sendError writes an ERR packet carrying err's message.
func sendError(w *bufio.Writer, err error) {
	w.Write(AppendError(nil, err.Error()))
	w.Flush()
}

func writeLine(w *bufio.Writer, format string, args ...any) {
	w.Write(AppendString(nil, fmt.Sprintf(format, args...)))
}

// advertise writes the v0 ref advertisement: HEAD first, then the refs in
// name order, each annotated tag followed by its peeled "^{}" line, the
// capabilities after a NUL on the first line, then a flush.
func advertise(w *bufio.Writer, refs *Refs, caps string, withHead, withPeeled bool) {
	first := true
	line := func(oid, name string) {
		if first {
			writeLine(w, "%s %s\x00%s\n", oid, name, caps)
			first = false
			return
		}
		writeLine(w, "%s %s\n", oid, name)
	}
	if withHead && refs.Head != nil {
		line(refs.Head.OID, "HEAD")
	}
	for _, r := range refs.List {
		line(r.OID, r.Name)
		if withPeeled && r.Peeled != "" {
			writeLine(w, "%s %s^{}\n", r.Peeled, r.Name)
		}
	}
	if first {
		line(ZeroID, "capabilities^{}")
	}
	w.Write(AppendFlush(nil))
}

// uploadRequest is what the client asked for before negotiation.
type uploadRequest struct {
	wants      []string
	shallows   []string // the client's current shallow commits
	depth      int
	relative   bool // deepen-relative: depth counts from the client's shallow commits
	multiAck   int  // 0, 1 (multi_ack), 2 (multi_ack_detailed)
	noDone     bool
	thin       bool
	ofsDelta   bool
	sideband   int // 0, SmallSidebandData, MaxSidebandData
	noProgress bool
	includeTag bool
}

// infiniteDepth is what `git fetch --unshallow` sends as "deepen".
const infiniteDepth = 0x7fffffff

func parseFeatures(req *uploadRequest, features string) {
	for _, f := range strings.Fields(features) {
		switch f {
		case "multi_ack_detailed":
			req.multiAck = 2
		case "multi_ack":
			if req.multiAck == 0 {
				req.multiAck = 1
			}
		case "no-done":
			req.noDone = true
		case "thin-pack":
			req.thin = true
		case "ofs-delta":
			req.ofsDelta = true
		case "side-band-64k":
			req.sideband = MaxSidebandData
		case "side-band":
			if req.sideband == 0 {
				req.sideband = SmallSidebandData
			}
		case "no-progress":
			req.noProgress = true
		case "include-tag":
			req.includeTag = true
		case "deepen-relative":
			req.relative = true
		}
	}
}

// readNeeds reads the want/shallow/deepen lines up to the flush. It returns
// a nil request when the client wants nothing (ls-remote, up to date).
func readNeeds(r *Reader, ours map[string]bool) (*uploadRequest, error) {
	req := &uploadRequest{}
	seen := map[string]bool{}
	for i := 0; ; i++ {
		line, kind, err := r.Line()
		if err == io.EOF && i == 0 {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if kind == Flush {
			break
		}
		if arg, ok := strings.CutPrefix(line, "shallow "); ok {
			if !isHex40(arg) {
				return nil, protoErr("invalid shallow line: %q", line)
			}
			req.shallows = append(req.shallows, arg)
			continue
		}
		if arg, ok := strings.CutPrefix(line, "deepen "); ok {
			d, err := strconv.Atoi(arg)
			if err != nil || d <= 0 {
				return nil, protoErr("invalid deepen: %q", line)
			}
			req.depth = d
			continue
		}
		arg, ok := strings.CutPrefix(line, "want ")
		if !ok || len(arg) < 40 || !isHex40(arg[:40]) || len(arg) > 40 && arg[40] != ' ' {
			return nil, protoErr("expected to get object ID, not %q", line)
		}
		oid := arg[:40]
		if i == 0 {
			parseFeatures(req, arg[40:])
		}
		if !ours[oid] {
			return nil, fmt.Errorf("upload-pack: not our ref %s", oid)
		}
		if !seen[oid] {
			seen[oid] = true
			req.wants = append(req.wants, oid)
		}
	}
	if len(req.wants) == 0 {
		if req.depth > 0 || len(req.shallows) > 0 {
			return nil, protoErr("shallow request without a want")
		}
		return nil, nil
	}
	return req, nil
}

// UploadPack serves one fetch or clone (git-upload-pack) on r/w: the ref
// advertisement, the client's wants, the shallow update, want/have
// negotiation, then the pack built by git pack-objects. A malformed request
// is answered with an ERR packet and returned as an error.
func UploadPack(ctx context.Context, repo *Repo, r io.Reader, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	err := uploadPack(ctx, repo, NewReader(r), bw)
	if err != nil {
		sendError(bw, err)
	}
	return err
}

func uploadPack(ctx context.Context, repo *Repo, pr *Reader, w *bufio.Writer) error {
	objs := repo.openObjects(ctx)
	defer objs.Close()
	refs, err := repo.readRefsWith(ctx, objs)
	if err != nil {
		return err
	}
	caps := uploadCaps
	if refs.HeadTarget != "" && refs.Head != nil {
		caps += " symref=HEAD:" + refs.HeadTarget
	}
	caps += " object-format=sha1 agent=" + Agent
	advertise(w, refs, caps, true, true)
	if err := w.Flush(); err != nil {
		return err
	}
	trace("upload-pack: advertised %d refs", len(refs.List))
	ours := map[string]bool{}
	peeled := map[string]string{}
	if refs.Head != nil {
		ours[refs.Head.OID] = true
	}
	for _, ref := range refs.List {
		ours[ref.OID] = true
		if ref.Peeled != "" {
			ours[ref.Peeled] = true
			peeled[ref.OID] = ref.Peeled
		}
	}
	req, err := readNeeds(pr, ours)
	if err != nil || req == nil {
		return err
	}
	trace("upload-pack: %d wants", len(req.wants))
	sh, err := shallowUpdate(objs, req, peeled)
	if err != nil {
		return err
	}
	if req.depth > 0 {
		for _, oid := range sh.newShallow {
			writeLine(w, "shallow %s\n", oid)
		}
		for _, oid := range sh.unshallow {
			writeLine(w, "unshallow %s\n", oid)
		}
		w.Write(AppendFlush(nil))
		if err := w.Flush(); err != nil {
			return err
		}
	}
	n := &negotiator{objs: objs, req: req, peeled: peeled, theyHave: map[string]bool{}, reaches: map[string]bool{}}
	if _, err := pr.Buffered().Peek(1); err != nil {
		return nil // the client hung up after the shallow list
	}
	// pack-objects starts while the haves are answered: forking and
	// exec'ing it takes milliseconds the ACKs need not wait for.
	type packOrErr struct {
		p   *packRun
		err error
	}
	started := make(chan packOrErr, 1)
	go func() {
		p, err := startPack(ctx, repo, req, sh)
		started <- packOrErr{p, err}
	}()
	defer func() {
		if s, ok := <-started; ok && s.p != nil {
			s.p.abort()
		}
	}()
	if err := n.run(pr, w); err != nil {
		return err
	}
	trace("upload-pack: negotiated, %d common", len(n.haves))
	s := <-started
	close(started)
	if s.err != nil {
		return s.err
	}
	return s.p.send(req, sh, n.haves, w)
}

// shallowPlan is the shallow update of one fetch.
type shallowPlan struct {
	newShallow []string // sent as "shallow", cut from the pack
	unshallow  []string // sent as "unshallow": their parents are added
	register   []string // "--shallow <oid>" lines for pack-objects
	extraWants []string
	extraEdges []string
}

// shallowUpdate computes, for "deepen N", the commits at depth N from the
// wants (the wants are at depth 1): they become the client's new shallow
// boundary; the client's shallow commits found above that depth are
// unshallowed. Without deepen, the client's shallow commits only bound the
// pack.
func shallowUpdate(objs *objects, req *uploadRequest, peeled map[string]string) (*shallowPlan, error) {
	sh := &shallowPlan{}
	clientShallow := map[string]bool{}
	for _, oid := range req.shallows {
		clientShallow[oid] = true
	}
	if req.depth == 0 {
		sh.register = append(sh.register, req.shallows...)
		return sh, nil
	}
	level := map[string]int{}
	starts, depth := req.wants, req.depth
	if req.relative {
		// git fetch --deepen N: N more commits below the current
		// shallow boundary (the boundary itself is depth 1).
		starts, depth = req.shallows, req.depth+1
	}
	if req.depth < infiniteDepth {
		var queue []string
		for _, w := range starts {
			if p, ok := peeled[w]; ok {
				w = p
			}
			c, err := objs.Commit(w)
			if err != nil {
				return nil, err
			}
			if c != nil && level[w] == 0 {
				level[w] = 1
				queue = append(queue, w)
			}
		}
		for len(queue) > 0 {
			oid := queue[0]
			queue = queue[1:]
			l := level[oid]
			if l >= depth {
				if !clientShallow[oid] {
					sh.newShallow = append(sh.newShallow, oid)
				}
				continue
			}
			c, err := objs.Commit(oid)
			if err != nil {
				return nil, err
			}
			if c == nil {
				continue
			}
			for _, p := range c.parents {
				if level[p] == 0 {
					level[p] = l + 1
					queue = append(queue, p)
				}
			}
		}
	}
	for _, oid := range req.shallows {
		l, reached := level[oid]
		if req.depth >= infiniteDepth || reached && l < depth {
			sh.unshallow = append(sh.unshallow, oid)
			c, err := objs.Commit(oid)
			if err != nil {
				return nil, err
			}
			if c != nil {
				sh.extraWants = append(sh.extraWants, c.parents...)
			}
			sh.extraEdges = append(sh.extraEdges, oid)
		}
	}
	sh.register = append(append(sh.register, sh.newShallow...), req.shallows...)
	return sh, nil
}

// negotiator runs the have/ACK exchange of gitprotocol-pack(5),
// "Packfile Negotiation", as git's upload-pack does.
type negotiator struct {
	objs       *objects
	req        *uploadRequest
	peeled     map[string]string
	theyHave   map[string]bool // commits the client has (and their parents)
	haves      []string        // common objects, in the order received
	oldestHave int64
	reaches    map[string]bool // wants known to reach a commit they have
}

// gotOID records a have line: -1 we lack it, 1 a new common object,
// 0 a commit we already knew they have.
func (n *negotiator) gotOID(oid string) (int, error) {
	typ, err := n.objs.Type(oid)
	if err != nil {
		return 0, err
	}
	if typ == "" {
		return -1, nil
	}
	if typ == "commit" {
		c, err := n.objs.Commit(oid)
		if err != nil {
			return 0, err
		}
		knew := n.theyHave[oid]
		n.theyHave[oid] = true
		if n.oldestHave == 0 || c.time < n.oldestHave {
			n.oldestHave = c.time
		}
		for _, p := range c.parents {
			n.theyHave[p] = true
		}
		if knew {
			return 0, nil
		}
	}
	n.haves = append(n.haves, oid)
	return 1, nil
}

// okToGiveUp reports whether every want reaches a commit the client has,
// walking no further back than the oldest have (git's ok_to_give_up).
func (n *negotiator) okToGiveUp() (bool, error) {
	if len(n.haves) == 0 {
		return false, nil
	}
	for _, w := range n.req.wants {
		if n.reaches[w] {
			continue
		}
		start := w
		if p, ok := n.peeled[w]; ok {
			start = p
		}
		c, err := n.objs.Commit(start)
		if err != nil {
			return false, err
		}
		if c == nil { // not a commit: nothing to learn from its ancestry
			n.reaches[w] = true
			continue
		}
		found := false
		seen := map[string]bool{start: true}
		queue := []string{start}
		for len(queue) > 0 && !found {
			oid := queue[0]
			queue = queue[1:]
			if n.theyHave[oid] {
				found = true
				break
			}
			c, err := n.objs.Commit(oid)
			if err != nil {
				return false, err
			}
			if c == nil || c.time < n.oldestHave {
				continue
			}
			for _, p := range c.parents {
				if !seen[p] {
					seen[p] = true
					queue = append(queue, p)
				}
			}
		}
		if !found {
			return false, nil
		}
		n.reaches[w] = true
	}
	return true, nil
}

func (n *negotiator) run(pr *Reader, w *bufio.Writer) error {
	var gotCommon, gotOther, sentReady, tracedHave bool
	last := ""
	for {
		line, kind, err := pr.Line()
		if err != nil {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if kind == Flush {
			if n.req.multiAck == 2 && gotCommon && !gotOther {
				ok, err := n.okToGiveUp()
				if err != nil {
					return err
				}
				if ok {
					sentReady = true
					writeLine(w, "ACK %s ready\n", last)
				}
			}
			if len(n.haves) == 0 || n.req.multiAck > 0 {
				writeLine(w, "NAK\n")
			}
			if n.req.noDone && sentReady {
				writeLine(w, "ACK %s\n", last)
				return w.Flush()
			}
			if err := w.Flush(); err != nil {
				return err
			}
			gotCommon, gotOther = false, false
			continue
		}
		if arg, ok := strings.CutPrefix(line, "have "); ok {
			if !tracedHave {
				trace("upload-pack: first have %s", arg)
				tracedHave = true
			}
			if !isHex40(arg) {
				return protoErr("expected SHA1 object, got %q", arg)
			}
			res, err := n.gotOID(arg)
			if err != nil {
				return err
			}
			if res == -1 {
				gotOther = true
				if n.req.multiAck > 0 {
					ok, err := n.okToGiveUp()
					if err != nil {
						return err
					}
					if ok && n.req.multiAck == 2 {
						sentReady = true
						writeLine(w, "ACK %s ready\n", arg)
					} else if ok {
						writeLine(w, "ACK %s continue\n", arg)
					}
				}
				continue
			}
			gotCommon = true
			last = arg
			switch {
			case n.req.multiAck == 2:
				writeLine(w, "ACK %s common\n", last)
			case n.req.multiAck == 1:
				writeLine(w, "ACK %s continue\n", last)
			case len(n.haves) == 1:
				writeLine(w, "ACK %s\n", last)
			}
			continue
		}
		if line == "done" {
			trace("upload-pack: done")
			if len(n.haves) > 0 {
				if n.req.multiAck > 0 {
					writeLine(w, "ACK %s\n", last)
				}
			} else {
				writeLine(w, "NAK\n")
			}
			return w.Flush()
		}
		return protoErr("expected SHA1 list, got %q", line)
	}
}

// bandWriter sends pack data and progress to the client, on side-band
// channels when the client asked for them.
type bandWriter struct {
	mu  sync.Mutex // guards w and buf
	w   *bufio.Writer
	max int // 0: no side-band
	buf []byte
}

func (b *bandWriter) send(band byte, p []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.max == 0 {
		if band != BandData {
			return nil // progress has nowhere to go without side-band
		}
		_, err := b.w.Write(p)
		return err
	}
	b.buf = AppendSideband(b.buf[:0], band, p, b.max)
	if _, err := b.w.Write(b.buf); err != nil {
		return err
	}
	return b.w.Flush()
}

// packRun is a git pack-objects started before negotiation ends: its
// start-up (exec, repository setup, ~5-10 ms) overlaps the have/ACK
// exchange; it waits for its revisions on stdin.
type packRun struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdin  io.WriteCloser
	stdout io.ReadCloser
	stderr io.ReadCloser
	done   bool
}

// startPack starts pack-objects with the options the client asked for.
func startPack(ctx context.Context, repo *Repo, req *uploadRequest, sh *shallowPlan) (*packRun, error) {
	var args []string
	if len(sh.register) > 0 {
		args = append(args, "--shallow-file", "")
	}
	args = append(args, "pack-objects", "--revs", "--stdout")
	if req.thin {
		args = append(args, "--thin")
	}
	if len(sh.register) > 0 {
		args = append(args, "--shallow")
	}
	if !req.noProgress && req.sideband > 0 {
		args = append(args, "--progress")
	}
	if req.ofsDelta {
		args = append(args, "--delta-base-offset")
	}
	if req.includeTag {
		args = append(args, "--include-tag")
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &packRun{cmd: repo.command(ctx, nil, args...), cancel: cancel}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err == nil {
		if p.stdout, err = p.cmd.StdoutPipe(); err == nil {
			p.stderr, err = p.cmd.StderrPipe()
		}
	}
	if err == nil {
		err = p.cmd.Start()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	trace("upload-pack: pack-objects started")
	return p, nil
}

// abort stops a pack-objects that will not be used.
func (p *packRun) abort() {
	if p.done {
		return
	}
	p.done = true
	p.cancel()
	p.stdin.Close()
	p.cmd.Wait()
}

// send gives pack-objects the wants and haves and relays its output: the
// pack on band 1 (or bare without side-band), its progress on band 2.
func (p *packRun) send(req *uploadRequest, sh *shallowPlan, haves []string, w *bufio.Writer) error {
	defer p.cancel()
	p.done = true
	var in strings.Builder
	for _, oid := range sh.register {
		fmt.Fprintf(&in, "--shallow %s\n", oid)
	}
	for _, oid := range append(append([]string{}, req.wants...), sh.extraWants...) {
		fmt.Fprintf(&in, "%s\n", oid)
	}
	in.WriteString("--not\n")
	for _, oid := range append(append([]string{}, haves...), sh.extraEdges...) {
		fmt.Fprintf(&in, "%s\n", oid)
	}
	in.WriteString("\n")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// pack-objects reads all its input before it writes; a write error
		// means it died, which Wait reports.
		io.WriteString(p.stdin, in.String())
		p.stdin.Close()
	}()
	stdout, stderr, cmd := p.stdout, p.stderr, p.cmd
	bw := &bandWriter{w: w, max: req.sideband}
	var errOut strings.Builder
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := stderr.Read(buf)
			if n > 0 {
				if errOut.Len() < 4096 {
					errOut.Write(buf[:n])
				}
				bw.send(BandProgress, buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, MaxSidebandData)
	var sendErr error
	first := true
	for {
		n, err := io.ReadFull(stdout, buf)
		if first && n > 0 {
			trace("upload-pack: first pack bytes")
			first = false
		}
		if n > 0 && sendErr == nil {
			sendErr = bw.send(BandData, buf[:n])
		}
		if err != nil {
			break
		}
	}
	wg.Wait()
	if err := cmd.Wait(); err != nil {
		msg := "upload-pack: aborting due to possible repository corruption on the remote side."
		if req.sideband > 0 {
			bw.send(BandError, []byte(msg))
		}
		return errors.Join(fmt.Errorf("git pack-objects: %w: %s", err, strings.TrimSpace(errOut.String())), sendErr)
	}
	if sendErr != nil {
		return sendErr
	}
	if req.sideband > 0 {
		w.Write(AppendFlush(nil))
	}
	trace("upload-pack: pack sent")
	return w.Flush()
}
