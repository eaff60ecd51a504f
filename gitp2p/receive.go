package gitp2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// receiveCaps are the receive-pack capabilities advertised.
const receiveCaps = "report-status delete-refs quiet atomic ofs-delta object-format=sha1 agent=" + Agent

// ReceiveOptions is what the share allows a pusher.
type ReceiveOptions struct {
	// AllowForce accepts updates that are not fast-forwards (and deletions).
	// Zero: only creations and fast-forwards.
	AllowForce bool
	// MaxPackBytes bounds an incoming pack; zero means 4 GiB.
	MaxPackBytes int64
}

// command is one ref update of a push.
type command struct {
	old, new, ref string
	err           string // "" until refused
}

func (c *command) isDelete() bool { return c.new == ZeroID }
func (c *command) isCreate() bool { return c.old == ZeroID }

// ReceivePack serves one push (git-receive-pack) on r/w: advertisement,
// commands, pack into a quarantine directory, connectivity and ref checks,
// promotion of the objects, ref updates, report-status. r must either end
// after the pack or have a SetReadDeadline method (a net.Conn, a
// BufferedConn), which stops the copy of the pack once index-pack is done.
func ReceivePack(ctx context.Context, repo *Repo, r io.Reader, w io.Writer, opts ReceiveOptions) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var interrupt func(bool)
	if d, ok := r.(interface{ SetReadDeadline(time.Time) error }); ok {
		interrupt = func(on bool) {
			if on {
				d.SetReadDeadline(time.Unix(1, 0))
			} else {
				d.SetReadDeadline(time.Time{})
			}
		}
	}
	err := receivePack(ctx, repo, NewReader(r), bw, opts, interrupt)
	var pe *ProtocolError
	if errors.As(err, &pe) {
		sendError(bw, err)
	}
	return err
}

func receivePack(ctx context.Context, repo *Repo, pr *Reader, w *bufio.Writer, opts ReceiveOptions, interrupt func(bool)) error {
	refs, err := repo.ReadRefs(ctx)
	if err != nil {
		sendError(w, err)
		return err
	}
	advertise(w, refs, receiveCaps, false, false)
	if err := w.Flush(); err != nil {
		return err
	}
	cmds, caps, err := readCommands(pr)
	if err != nil || len(cmds) == 0 {
		return err
	}
	report := strings.Contains(" "+caps+" ", " report-status ")
	atomic := strings.Contains(" "+caps+" ", " atomic ")

	needPack := false
	for _, c := range cmds {
		if !c.isDelete() {
			needPack = true
		}
	}
	var q *quarantine
	unpackErr := ""
	if needPack {
		q, err = receivePackfile(ctx, repo, pr.Buffered(), opts, interrupt)
		if q != nil {
			defer q.remove()
		}
		if err != nil {
			var pe *ProtocolError
			if errors.As(err, &pe) {
				return err
			}
			unpackErr = err.Error()
		}
	}
	if unpackErr == "" {
		checkCommands(ctx, repo, refs, q, cmds, opts)
		if err := q.connected(ctx, repo, cmds); err != nil {
			for _, c := range cmds {
				if c.err == "" && !c.isDelete() {
					c.err = "missing necessary objects"
				}
			}
		}
		if atomic {
			failAtomic(cmds)
		}
		if anyAccepted(cmds) && q != nil {
			if err := q.promote(); err != nil {
				unpackErr = "cannot move objects: " + err.Error()
			}
		}
	}
	if unpackErr != "" {
		for _, c := range cmds {
			if c.err == "" {
				c.err = "unpacker error"
			}
		}
	} else {
		updateRefs(ctx, repo, cmds, atomic)
	}
	if !report {
		if err := w.Flush(); err != nil {
			return err
		}
		if unpackErr != "" {
			return errors.New("unpack: " + unpackErr)
		}
		autoGC(ctx, repo, cmds)
		return nil
	}
	if unpackErr != "" {
		writeLine(w, "unpack %s\n", oneLine(unpackErr))
	} else {
		writeLine(w, "unpack ok\n")
	}
	for _, c := range cmds {
		if c.err == "" {
			writeLine(w, "ok %s\n", c.ref)
		} else {
			writeLine(w, "ng %s %s\n", c.ref, oneLine(c.err))
		}
	}
	w.Write(AppendFlush(nil))
	if err := w.Flush(); err != nil {
		return err
	}
	if unpackErr != "" {
		return errors.New("unpack: " + unpackErr)
	}
	autoGC(ctx, repo, cmds)
	return nil
}

// autoGC runs `git gc --auto` after a push that changed refs, as git's
// receive-pack does, so that the packs of many small pushes get
// consolidated. It runs in the foreground (gc.autoDetach=false): the
// session owns it, and it does work only past git's thresholds.
func autoGC(ctx context.Context, repo *Repo, cmds []*command) {
	if anyAccepted(cmds) {
		repo.output(ctx, nil, nil, "-c", "gc.autoDetach=false", "gc", "--auto", "--quiet")
	}
}

func oneLine(s string) string {
	s = strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
	if len(s) > 500 {
		s = s[:500]
	}
	return s
}

// readCommands reads "<old> <new> <ref>" lines up to the flush; the first
// carries the client's capabilities after a NUL.
func readCommands(pr *Reader) ([]*command, string, error) {
	var cmds []*command
	caps := ""
	for i := 0; ; i++ {
		line, kind, err := pr.Line()
		if err == io.EOF && i == 0 {
			return nil, "", nil
		}
		if err != nil {
			return nil, "", err
		}
		if kind == Flush {
			return cmds, caps, nil
		}
		if i == 0 {
			line, caps, _ = strings.Cut(line, "\x00")
		}
		if strings.HasPrefix(line, "shallow ") {
			return nil, "", protoErr("pushing from a shallow repository is not supported")
		}
		f := strings.SplitN(line, " ", 3)
		if len(f) != 3 || !isHex40(f[0]) || !isHex40(f[1]) {
			return nil, "", protoErr("bad command %q", line)
		}
		c := &command{old: f[0], new: f[1], ref: f[2]}
		if c.old == ZeroID && c.new == ZeroID {
			return nil, "", protoErr("bad command %q", line)
		}
		cmds = append(cmds, c)
		if len(cmds) > 10000 {
			return nil, "", protoErr("too many commands")
		}
	}
}

// validRefName applies git-check-ref-format(1)'s rules to a pushed name,
// which must also live under refs/.
func validRefName(name string) bool {
	if !strings.HasPrefix(name, "refs/") || strings.HasSuffix(name, "/") ||
		strings.HasSuffix(name, ".") || strings.HasSuffix(name, ".lock") ||
		strings.Contains(name, "..") || strings.Contains(name, "//") || strings.Contains(name, "@{") || name == "@" {
		return false
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c == 0x7f || strings.IndexByte(" ~^:?*[\\", c) >= 0 {
			return false
		}
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part[0] == '.' || strings.HasSuffix(part, ".lock") {
			return false
		}
	}
	return true
}

// checkCommands refuses, one by one, the updates the share does not allow
// or whose old value is stale.
func checkCommands(ctx context.Context, repo *Repo, refs *Refs, q *quarantine, cmds []*command, opts ReceiveOptions) {
	current := map[string]string{}
	for _, r := range refs.List {
		current[r.Name] = r.OID
	}
	seen := map[string]bool{}
	for _, c := range cmds {
		switch {
		case !validRefName(c.ref):
			c.err = "funny refname"
		case seen[c.ref]:
			c.err = "duplicate ref update"
		case !repo.Bare && c.ref == refs.HeadTarget:
			c.err = "branch is currently checked out"
		}
		seen[c.ref] = true
		if c.err != "" {
			continue
		}
		cur, exists := current[c.ref]
		if !exists {
			cur = ZeroID
		}
		if cur != c.old {
			c.err = "stale info: the ref is " + cur[:12] + ", not " + c.old[:12]
			continue
		}
		if c.isCreate() {
			continue
		}
		if c.isDelete() {
			if !opts.AllowForce {
				c.err = "deletion not allowed by the share (needs force)"
			}
			continue
		}
		if opts.AllowForce {
			continue
		}
		_, err := repo.output(ctx, q.env(), nil, "merge-base", "--is-ancestor", c.old, c.new)
		if err != nil {
			c.err = "non-fast-forward"
		}
	}
}

func failAtomic(cmds []*command) {
	failed := false
	for _, c := range cmds {
		if c.err != "" {
			failed = true
		}
	}
	if failed {
		for _, c := range cmds {
			if c.err == "" {
				c.err = "atomic push failed"
			}
		}
	}
}

func anyAccepted(cmds []*command) bool {
	for _, c := range cmds {
		if c.err == "" {
			return true
		}
	}
	return false
}

// updateRefs applies the accepted commands with git update-ref, checking
// each old value again under git's ref lock: all in one transaction for an
// atomic push, one transaction per ref otherwise.
func updateRefs(ctx context.Context, repo *Repo, cmds []*command, atomic bool) {
	line := func(c *command) string {
		if c.isDelete() {
			return fmt.Sprintf("delete %s %s\n", c.ref, c.old)
		}
		return fmt.Sprintf("update %s %s %s\n", c.ref, c.new, c.old)
	}
	if atomic {
		var b strings.Builder
		var todo []*command
		for _, c := range cmds {
			if c.err == "" {
				b.WriteString(line(c))
				todo = append(todo, c)
			}
		}
		if len(todo) == 0 {
			return
		}
		if _, err := repo.output(ctx, nil, strings.NewReader(b.String()), "update-ref", "--stdin"); err != nil {
			for _, c := range todo {
				c.err = "atomic transaction failed"
			}
		}
		return
	}
	for _, c := range cmds {
		if c.err != "" {
			continue
		}
		if _, err := repo.output(ctx, nil, strings.NewReader(line(c)), "update-ref", "--stdin"); err != nil {
			c.err = "failed to update ref"
		}
	}
}

// quarantine is a temporary object directory that receives a push's pack;
// its objects join the repository only after the checks passed
// (git-receive-pack(1), "QUARANTINE ENVIRONMENT").
type quarantine struct {
	dir     string // .../objects/tmp_objdir-incoming-XXXX
	objects string // the repository's object directory
}

// env points git at the quarantine, the repository's objects as alternate.
func (q *quarantine) env() []string {
	if q == nil {
		return nil
	}
	return []string{
		"GIT_OBJECT_DIRECTORY=" + q.dir,
		"GIT_ALTERNATE_OBJECT_DIRECTORIES=" + q.objects,
		"GIT_QUARANTINE_PATH=" + q.dir,
	}
}

func (q *quarantine) remove() { os.RemoveAll(q.dir) }

// connected checks that the new tips and everything they reach exist, the
// same check git receive-pack runs (rev-list --objects ... --not --all).
func (q *quarantine) connected(ctx context.Context, repo *Repo, cmds []*command) error {
	var in strings.Builder
	for _, c := range cmds {
		if c.err == "" && !c.isDelete() {
			in.WriteString(c.new + "\n")
		}
	}
	if in.Len() == 0 {
		return nil
	}
	_, err := repo.output(ctx, q.env(), strings.NewReader(in.String()), "rev-list", "--objects", "--stdin", "--not", "--all", "--quiet")
	return err
}

// promote moves the quarantined files into the repository's object
// directory, pack indexes last so that no reader sees an index whose pack
// is missing.
func (q *quarantine) promote() error {
	var files []string
	err := filepath.WalkDir(q.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.SliceStable(files, func(i, j int) bool {
		return !strings.HasSuffix(files[i], ".idx") && strings.HasSuffix(files[j], ".idx")
	})
	for _, f := range files {
		rel, _ := filepath.Rel(q.dir, f)
		dst := filepath.Join(q.objects, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if _, err := os.Stat(dst); err == nil {
			continue // same name, same content (names are hashes)
		}
		if err := os.Rename(f, dst); err != nil {
			return err
		}
	}
	return nil
}

// receivePackfile copies the pack that follows the commands into
// `git index-pack --stdin --fix-thin` inside a new quarantine. index-pack
// stops at the pack's trailer, but the client sends nothing after the pack
// (it waits for the report), so the copy is then blocked in a read:
// interrupt, when not nil, makes that read fail (and is called again with
// false to clear the deadline). A reader without it must end after the pack.
func receivePackfile(ctx context.Context, repo *Repo, br *bufio.Reader, opts ReceiveOptions, interrupt func(bool)) (*quarantine, error) {
	hdr, err := br.Peek(12)
	if err != nil {
		return nil, protoErr("reading pack header: %v", err)
	}
	if string(hdr[:4]) != "PACK" {
		return nil, protoErr("expected a pack, got %q", hdr[:4])
	}
	if v := binary.BigEndian.Uint32(hdr[4:]); v != 2 && v != 3 {
		return nil, protoErr("unsupported pack version %d", v)
	}
	count := binary.BigEndian.Uint32(hdr[8:])
	objectsDir := filepath.Join(repo.GitDir, "objects")
	dir, err := os.MkdirTemp(objectsDir, "tmp_objdir-incoming-")
	if err != nil {
		return nil, err
	}
	q := &quarantine{dir: dir, objects: objectsDir}
	if err := os.Mkdir(filepath.Join(dir, "pack"), 0o755); err != nil {
		return q, err
	}
	if count == 0 {
		_, err := br.Discard(12 + 20)
		return q, err
	}
	max := opts.MaxPackBytes
	if max <= 0 {
		max = 4 << 30
	}
	args := []string{"index-pack", "--stdin", "--fix-thin", fmt.Sprintf("--max-input-size=%d", max)}
	if repo.fsckObjects(ctx) {
		args = append(args, "--strict")
	}
	cmd := repo.command(ctx, q.env(), args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return q, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return q, err
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(stdin, br)
		stdin.Close()
		copied <- err
	}()
	waitErr := cmd.Wait()
	select {
	case <-copied:
	default:
		if interrupt == nil {
			<-copied
			break
		}
		// The copy may be between two reads, and a reader that pushes its
		// deadline forward at each read (an idle timeout) would undo a
		// single interrupt: repeat it until the copy has stopped.
		for stopped := false; !stopped; {
			interrupt(true)
			select {
			case <-copied:
				stopped = true
			case <-time.After(20 * time.Millisecond):
			}
		}
		interrupt(false)
	}
	if waitErr != nil {
		// A corrupt or truncated pack: reported as "unpack <error>", as
		// git's receive-pack does.
		return q, fmt.Errorf("index-pack: %s", oneLine(stderr.String()))
	}
	return q, nil
}

// fsckObjects reports whether the repository asks for incoming objects to
// be checked (receive.fsckObjects, else transfer.fsckObjects), as git's
// receive-pack does.
func (r *Repo) fsckObjects(ctx context.Context) bool {
	for _, key := range []string{"receive.fsckObjects", "transfer.fsckObjects"} {
		out, err := r.output(ctx, nil, nil, "config", "--type=bool", "--get", key)
		if err == nil {
			return strings.TrimSpace(string(out)) == "true"
		}
	}
	return false
}
