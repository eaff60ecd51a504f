package gitp2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ZeroID is the all-zero object id that stands for "no object" in ref
// updates and in the advertisement of an empty repository.
const ZeroID = "0000000000000000000000000000000000000000"

// Repo is a local git repository served to peers.
type Repo struct {
	// GitDir is the absolute path of the repository's git directory.
	GitDir string
	// Bare is false when the repository has a work tree; then its checked-out
	// branch cannot be pushed to.
	Bare bool
	// Git is the git program; empty means "git" on PATH.
	Git string
}

// OpenRepo finds the git directory of path (a work tree or a bare repository).
func OpenRepo(ctx context.Context, path string) (*Repo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	// The common layouts are recognised without a subprocess: every
	// session opens its repository.
	if fi, err := os.Stat(filepath.Join(abs, ".git")); err == nil && fi.IsDir() && isGitDir(filepath.Join(abs, ".git")) {
		return &Repo{GitDir: filepath.Join(abs, ".git")}, nil
	}
	if isGitDir(abs) {
		return &Repo{GitDir: abs, Bare: filepath.Base(abs) != ".git"}, nil
	}
	r := &Repo{}
	cmd := exec.CommandContext(ctx, r.git(), "rev-parse", "--absolute-git-dir", "--is-bare-repository")
	cmd.Dir = abs
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s is not a git repository", path)
	}
	lines := strings.Fields(string(out))
	if len(lines) != 2 {
		return nil, fmt.Errorf("git rev-parse in %s: unexpected output %q", path, out)
	}
	r.GitDir, r.Bare = lines[0], lines[1] == "true"
	return r, nil
}

// isGitDir reports whether dir looks like a git directory: HEAD, objects/
// and refs/.
func isGitDir(dir string) bool {
	for _, name := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

func (r *Repo) git() string {
	if r.Git != "" {
		return r.Git
	}
	return "git"
}

// cleanEnv is the server's environment without the GIT_* variables that
// would point a subprocess at another repository.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GIT_") && !strings.HasPrefix(kv, "GIT_TRACE") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// command prepares a git subprocess on the repository.
func (r *Repo) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.git(), append([]string{"--git-dir", r.GitDir}, args...)...)
	cmd.Env = cleanEnv(env...)
	cmd.Dir = r.GitDir
	return cmd
}

// output runs git and returns its stdout; stderr is folded into the error.
func (r *Repo) output(ctx context.Context, env []string, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := r.command(ctx, env, args...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Ref is one advertised reference.
type Ref struct {
	Name string
	OID  string
	// Peeled is the object an annotated tag points to, or "".
	Peeled string
}

// Refs is what a server advertises: HEAD (if it resolves), then the refs
// sorted by name.
type Refs struct {
	Head *Ref
	// HeadTarget is the branch HEAD points to ("refs/heads/main"), or "" when
	// HEAD is detached.
	HeadTarget string
	List       []Ref
}

// ReadRefs lists the repository's references, read from its files (HEAD,
// packed-refs, refs/), or by `git for-each-ref` for a layout the native
// reader leaves to git.
func (r *Repo) ReadRefs(ctx context.Context) (*Refs, error) {
	objs := r.openObjects(ctx)
	defer objs.Close()
	return r.readRefsWith(ctx, objs)
}

// readRefsWith lists the references, peeling tags with objs.
func (r *Repo) readRefsWith(ctx context.Context, objs *objects) (*Refs, error) {
	if objs.nativeOK() {
		refs, err := readRefsNative(r.GitDir, objs)
		if !errors.Is(err, errUnsupported) {
			return refs, err
		}
	}
	return r.readRefs(ctx, objs)
}

// readRefs lists the references with git for-each-ref. Its %(*objectname)
// peels one level; a tag of a tag is peeled further, as upload-pack does.
func (r *Repo) readRefs(ctx context.Context, objs *objects) (*Refs, error) {
	out, err := r.output(ctx, nil, nil, "for-each-ref", "--format=%(objectname) %(refname) %(*objectname)")
	if err != nil {
		return nil, err
	}
	refs := &Refs{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		ref := Ref{OID: f[0], Name: f[1]}
		if len(f) > 2 {
			ref.Peeled = f[2]
			if p, ok, err := objs.Peel(ref.Peeled); err != nil {
				return nil, err
			} else if ok && p != "" {
				ref.Peeled = p
			}
		}
		refs.List = append(refs.List, ref)
	}
	sort.Slice(refs.List, func(i, j int) bool { return refs.List[i].Name < refs.List[j].Name })
	if err := readHead(r.GitDir, refs); err != nil {
		return nil, err
	}
	return refs, nil
}

// readHead sets refs.Head and refs.HeadTarget from the HEAD file
// (gitrepository-layout(5)): "ref: <name>" or a detached object id.
func readHead(gitDir string, refs *Refs) error {
	head, err := os.ReadFile(filepath.Join(gitDir, "HEAD"))
	if err != nil {
		return err
	}
	h := strings.TrimSpace(string(head))
	if target, ok := strings.CutPrefix(h, "ref: "); ok {
		refs.HeadTarget = target
		i := sort.Search(len(refs.List), func(i int) bool { return refs.List[i].Name >= target })
		if i < len(refs.List) && refs.List[i].Name == target {
			refs.Head = &Ref{Name: "HEAD", OID: refs.List[i].OID}
		}
	} else if isHex40(h) {
		refs.Head = &Ref{Name: "HEAD", OID: h}
	}
	return nil
}

// isHex40 reports whether s is a full SHA-1 object name in lowercase hex.
func isHex40(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// commit is what negotiation needs of a commit.
type commit struct {
	parents []string
	time    int64
}

// objects answers "do we have this object", "what are this commit's
// parents" and "what does this tag point to": from the object store in
// this process, or through one long-running `git cat-file
// --batch-command` for what the store does not read.
type objects struct {
	mu      sync.Mutex // guards the fields below
	store   *objectStore
	git     *catFile // started at the first question the store cannot answer
	repo    *Repo
	ctx     context.Context
	commits map[string]*commit
	types   map[string]string // "" = missing
}

// openObjects opens the repository's objects; it starts no process.
func (r *Repo) openObjects(ctx context.Context) *objects {
	o := &objects{repo: r, ctx: ctx, commits: map[string]*commit{}, types: map[string]string{}}
	if s, err := openStore(r.GitDir); err == nil {
		o.store = s
	}
	return o
}

// nativeOK reports whether the repository's files are read natively.
func (o *objects) nativeOK() bool { return o.store != nil }

func (o *objects) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.store != nil {
		o.store.Close()
		o.store = nil
	}
	if o.git != nil {
		err := o.git.close()
		o.git = nil
		return err
	}
	return nil
}

// typeLocked returns an object's type, "" when it is missing.
func (o *objects) typeLocked(oid string) (string, error) {
	if t, ok := o.types[oid]; ok {
		return t, nil
	}
	var t string
	var err error
	if o.store != nil {
		// Most questions are about commits (haves, wants): read it whole
		// now rather than its header twice.
		var data []byte
		t, data, err = o.store.ReadIf(oid, "commit")
		if err == nil && t == "commit" {
			o.commits[oid] = parseCommit(data)
		}
	}
	if o.store == nil || err != nil {
		var g *catFile
		if g, err = o.catFileLocked(); err == nil {
			t, _, err = g.request("info", oid)
		}
	}
	if err != nil {
		return "", err
	}
	o.types[oid] = t
	return t, nil
}

// contentsLocked returns an object's type and, when it is want, its
// content; type "" when it is missing.
func (o *objects) contentsLocked(oid, want string) (string, []byte, error) {
	if t, ok := o.types[oid]; ok && t != want {
		return t, nil, nil
	}
	if o.store != nil {
		if t, data, err := o.store.ReadIf(oid, want); err == nil {
			o.types[oid] = t
			return t, data, nil
		}
	}
	if t, err := o.typeLocked(oid); err != nil || t != want {
		return t, nil, err
	}
	g, err := o.catFileLocked()
	if err != nil {
		return "", nil, err
	}
	typ, size, err := g.request("contents", oid)
	if err != nil || typ == "" {
		return "", nil, err
	}
	body := make([]byte, size+1) // content and a LF
	if _, err := io.ReadFull(g.out, body); err != nil {
		return "", nil, fmt.Errorf("git cat-file: %w", err)
	}
	return typ, body[:size], nil
}

// Type returns the type of an object, or "" if the repository lacks it.
func (o *objects) Type(oid string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.typeLocked(oid)
}

// Commit returns a commit's parents and committer time, or nil if oid is
// not a commit we have.
func (o *objects) Commit(oid string) (*commit, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if c, ok := o.commits[oid]; ok {
		return c, nil
	}
	typ, body, err := o.contentsLocked(oid, "commit")
	if err != nil || typ != "commit" {
		return nil, err
	}
	c := parseCommit(body)
	o.commits[oid] = c
	return c, nil
}

// Peel follows annotated tags from oid to the first object that is not a
// tag. It returns "" when oid is not a tag, and ok false when oid is
// missing.
func (o *objects) Peel(oid string) (peeled string, ok bool, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	cur := oid
	for depth := 0; ; depth++ {
		typ, body, err := o.contentsLocked(cur, "tag")
		if err != nil || typ == "" {
			return "", false, err
		}
		if typ != "tag" {
			if cur == oid {
				return "", true, nil
			}
			return cur, true, nil
		}
		if depth > 64 {
			return "", false, fmt.Errorf("tag %s: nested too deep", oid)
		}
		target, ok := parseTagTarget(body)
		if !ok {
			return "", false, fmt.Errorf("tag %s: no object line", cur)
		}
		cur = target
	}
}

// parseTagTarget reads the "object <oid>" header a tag starts with.
func parseTagTarget(b []byte) (string, bool) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	t, ok := bytes.CutPrefix(line, []byte("object "))
	if !ok || !isHex40(string(t)) {
		return "", false
	}
	return string(t), true
}

func (o *objects) catFileLocked() (*catFile, error) {
	if o.git != nil {
		return o.git, nil
	}
	g, err := startCatFile(o.ctx, o.repo)
	if err != nil {
		return nil, err
	}
	o.git = g
	return g, nil
}

// catFile is a running `git cat-file --batch-command`.
type catFile struct {
	cmd   *exec.Cmd
	stdin io.Closer
	in    *bufio.Writer
	out   *bufio.Reader
}

func startCatFile(ctx context.Context, r *Repo) (*catFile, error) {
	cmd := r.command(ctx, nil, "cat-file", "--batch-command")
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &catFile{cmd: cmd, stdin: in, in: bufio.NewWriter(in), out: bufio.NewReader(out)}, nil
}

func (g *catFile) close() error {
	g.stdin.Close()
	return g.cmd.Wait()
}

// request sends one command and reads its header line; typ "" = missing.
func (g *catFile) request(verb, oid string) (typ string, size int64, err error) {
	fmt.Fprintf(g.in, "%s %s\n", verb, oid)
	if err := g.in.Flush(); err != nil {
		return "", 0, err
	}
	line, err := g.out.ReadString('\n')
	if err != nil {
		return "", 0, fmt.Errorf("git cat-file: %w", err)
	}
	f := strings.Fields(line)
	if len(f) == 2 && f[1] == "missing" {
		return "", 0, nil
	}
	if len(f) != 3 || f[0] != oid {
		return "", 0, fmt.Errorf("git cat-file: unexpected %q", line)
	}
	size, err = strconv.ParseInt(f[2], 10, 64)
	return f[1], size, err
}

// parseCommit reads the parents and committer time of a raw commit.
func parseCommit(b []byte) *commit {
	c := &commit{}
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			break // end of headers
		}
		if p, ok := bytes.CutPrefix(line, []byte("parent ")); ok && isHex40(string(p)) {
			c.parents = append(c.parents, string(p))
		} else if p, ok := bytes.CutPrefix(line, []byte("committer ")); ok {
			if gt := bytes.LastIndexByte(p, '>'); gt >= 0 {
				if f := strings.Fields(string(p[gt+1:])); len(f) > 0 {
					c.time, _ = strconv.ParseInt(f[0], 10, 64)
				}
			}
		}
	}
	return c
}
