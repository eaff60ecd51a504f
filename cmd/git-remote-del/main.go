// Command git-remote-del is git's remote helper for del:// URLs
// (gitremote-helpers(7)). With it on PATH, stock git clones, fetches,
// pulls, pushes and lists refs of a repository shared by another device:
//
//	git clone del://<peer-id>@<host>:<port>/<repo>
//	git clone del://<peer-id>/<repo>     (needs an address, see below)
//
// The helper answers git's "capabilities" with "connect". On
// "connect git-upload-pack" or "connect git-receive-pack" it reaches the
// peer (TLS 1.3 pinned to <peer-id>, package peer), opens the channel
// "git/<repo>", sends the session request — one pkt-line
// "<service> <repo>\n" (gitp2p.AppendRequest) — answers git with an empty
// line and then copies bytes both ways until the peer closes the channel.
// The peer's `del git serve` answers as upload-pack or receive-pack, or
// with an ERR packet that git prints as "remote error: ...".
//
// An id-only URL is resolved by `del git connect` (the del command must be
// on PATH): it joins the DHT through the configured bootstrap nodes
// (DEL_BOOTSTRAP or config.toml), finds the peer and connects with ICE,
// and this process is replaced by it. An address in git's configuration
// short-cuts the lookup:
//
//	git config --global del.<peer-id>.address HOST:PORT
//
// The device identity is read from DEL_HOME (the same as `del id`).
//
// OpenDHT (GnuTLS) gives about half its certificates a negative serial
// number, which crypto/x509 refuses by default; accept them so that OpenDHT
// identities and certificates found on the DHT parse.
//
//go:debug x509negativeserial=1
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/del-share/del/gitp2p"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer/link"
)

// Target is a parsed del:// URL.
type Target struct {
	Peer identity.ID
	// Addr is HOST:PORT when the URL carries one, else "".
	Addr string
	Repo string
}

// ParseURL parses del://<peer-id>[@<host>:<port>]/<repo>.
func ParseURL(u string) (Target, error) {
	var t Target
	rest, ok := strings.CutPrefix(u, "del://")
	if !ok {
		return t, fmt.Errorf("%q is not a del:// URL", u)
	}
	authority, repo, ok := strings.Cut(rest, "/")
	repo = strings.TrimSuffix(strings.TrimSuffix(repo, "/"), ".git")
	if !ok || !gitp2p.ValidName(repo) {
		return t, fmt.Errorf("%q: expected del://<peer-id>[@<host>:<port>]/<repo>", u)
	}
	idPart, addr, hasAddr := strings.Cut(authority, "@")
	id, err := identity.ParseID(idPart)
	if err != nil {
		return t, fmt.Errorf("%q: peer id: %w", u, err)
	}
	if hasAddr {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return t, fmt.Errorf("%q: address: %w", u, err)
		}
	}
	return Target{Peer: id, Addr: addr, Repo: repo}, nil
}

// Dialer reaches a peer and returns an authenticated link to it. The
// peer-by-id work (DHT lookup + ICE) plugs in here.
type Dialer interface {
	Dial(ctx context.Context, t Target) (*link.Link, error)
}

// ErrNoAddress is returned when a URL names a peer by id alone and it
// cannot be looked up.
var ErrNoAddress = errors.New("cannot find a peer by id alone")

// gitConfigAddress reads del.<peer-id>.address from git's configuration.
func gitConfigAddress(id identity.ID) string {
	out, err := exec.Command("git", "config", "--get", "del."+id.String()+".address").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// trace prints timings to stderr when DEL_GIT_TRACE is set, for
// performance work on the connection setup.
var trace = func(string, ...any) {}

var traceStart = time.Now()

func main() {
	if os.Getenv("DEL_GIT_TRACE") != "" {
		trace = func(format string, a ...any) {
			now := time.Now()
			fmt.Fprintf(os.Stderr, "%s git-remote-del %7.1fms: %s\n", now.Format("15:04:05.000000"), float64(now.Sub(traceStart).Microseconds())/1000, fmt.Sprintf(format, a...))
		}
	}
	trace("started")
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: git-remote-del <remote> <url> (run by git for del:// URLs)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[2], os.Stdin, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fatal: del:", err)
		os.Exit(128)
	}
}

// run speaks the remote-helper protocol on in/out. dialer nil means the
// direct dialer with the identity of DEL_HOME, started at once (see
// earlyDial).
func run(ctx context.Context, url string, in io.Reader, out io.Writer, dialer Dialer) error {
	t, err := ParseURL(url)
	if err != nil {
		return err
	}
	var early *earlyDial
	if dialer == nil {
		early = startEarlyDial(ctx, t)
		defer early.discard()
	}
	br := bufio.NewReader(in)
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF && line == "" {
			return nil
		}
		if err != nil && err != io.EOF {
			return err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			return nil
		case line == "capabilities":
			if _, err := io.WriteString(out, "connect\n\n"); err != nil {
				return err
			}
		case strings.HasPrefix(line, "connect "):
			service := strings.TrimPrefix(line, "connect ")
			if service != gitp2p.UploadPackService && service != gitp2p.ReceivePackService {
				return fmt.Errorf("unsupported service %q", service)
			}
			if early != nil {
				res := early.wait()
				if res.byID {
					// By id: `del git connect` goes online and takes over.
					return execDelConnect(t, service)
				}
				if res.err != nil {
					return res.err
				}
				if res.daemon != nil {
					early.stream = nil // session owns it now
					return session(ctx, res.daemon, t, service, br, out)
				}
				early.link = nil // connect owns it now
				return connect(ctx, linkDialer{res.link}, t, service, br, out)
			}
			return connect(ctx, dialer, t, service, br, out)
		default:
			return fmt.Errorf("unsupported command %q", line)
		}
	}
}

// earlyDial reaches the peer while git is still starting the session: the
// helper knows the address from its arguments, and git always asks for
// "connect" after "capabilities". The device identity and its session
// certificate (an RSA signature, package peer) are made while the TCP
// connection is set up.
type earlyDial struct {
	cancel context.CancelFunc
	done   chan struct{}
	res    earlyResult
	// closed by discard unless taken
	link   *link.Link
	stream io.ReadWriteCloser
}

type earlyResult struct {
	link *link.Link
	// daemon is a channel opened by the device's daemon (by id).
	daemon io.ReadWriteCloser
	err    error
	// byID: no address is known and no daemon runs; `del git connect`
	// must find the peer.
	byID bool
}

func startEarlyDial(ctx context.Context, t Target) *earlyDial {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	e := &earlyDial{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.res = dialNow(ctx, t)
		e.link, e.stream = e.res.link, e.res.daemon
	}()
	return e
}

func dialNow(ctx context.Context, t Target) earlyResult {
	addr := t.Addr
	if addr == "" {
		if addr = gitConfigAddress(t.Peer); addr == "" {
			ch, running, err := daemonChannel(ctx, t)
			if !running {
				return earlyResult{byID: true}
			}
			return earlyResult{daemon: ch, err: err}
		}
	}
	type identOrErr struct {
		ident *identity.Identity
		err   error
	}
	identReady := make(chan identOrErr, 1)
	go func() {
		ident, home, err := loadIdentity()
		if err == nil {
			link.PrepareIn(ident, home)
			trace("session certificate ready")
		}
		identReady <- identOrErr{ident, err}
	}()
	trace("dialing %s at %s", t.Peer, addr)
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", addr)
	id := <-identReady
	if err != nil {
		return earlyResult{err: fmt.Errorf("connect to %s: %w", addr, err)}
	}
	trace("tcp connected to %s", addr)
	if id.err != nil {
		conn.Close()
		return earlyResult{err: id.err}
	}
	l, err := link.Client(ctx, conn, link.Config{Identity: id.ident, Expect: t.Peer})
	return earlyResult{link: l, err: err}
}

// wait returns the dial's result.
func (e *earlyDial) wait() earlyResult {
	<-e.done
	return e.res
}

// discard stops the dial and closes a link nobody took.
func (e *earlyDial) discard() {
	e.cancel()
	<-e.done
	if e.link != nil {
		e.link.Close()
	}
	if e.stream != nil {
		e.stream.Close()
	}
}

// linkDialer hands out a link dialed already.
type linkDialer struct{ link *link.Link }

func (d linkDialer) Dial(context.Context, Target) (*link.Link, error) { return d.link, nil }

// execDelConnect replaces this process with `del git connect`, which finds
// the peer by id (DHT + ICE, with the device's configuration) and pipes
// git's bytes itself. git waits for the answer to "connect" before sending
// protocol data, so nothing of stdin has been read ahead.
func execDelConnect(t Target, service string) error {
	del, err := exec.LookPath("del")
	if err != nil {
		return fmt.Errorf("%w without the del command on PATH: use del://%s@<host>:<port>/%s, or set `git config del.%s.address HOST:PORT`",
			ErrNoAddress, t.Peer, t.Repo, t.Peer)
	}
	trace("exec %s git connect", del)
	return syscall.Exec(del, []string{"del", "git", "connect", t.Peer.String(), t.Repo, service}, os.Environ())
}

// loadIdentity reads the device identity of DEL_HOME, and says where that is.
func loadIdentity() (*identity.Identity, string, error) {
	home, err := config.Home()
	if err != nil {
		return nil, "", err
	}
	ident, err := identity.Load(home)
	if err != nil {
		return nil, "", fmt.Errorf("device identity in %s: %w (run `del id` once to create it)", home, err)
	}
	trace("identity loaded")
	return ident, home, nil
}

// connect opens the git channel on a link from dialer and pipes git's
// bytes through it.
func connect(ctx context.Context, dialer Dialer, t Target, service string, in *bufio.Reader, out io.Writer) error {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	link, err := dialer.Dial(dctx, t)
	if err != nil {
		return err
	}
	trace("link up")
	defer link.Close()
	ch, err := link.Open(dctx, gitp2p.ChannelPrefix+t.Repo)
	if err != nil {
		return err
	}
	return session(ctx, ch, t, service, in, out)
}

// session sends the session request on an open channel, answers git's
// "connect" and pipes git's bytes until the peer ends the session.
func session(ctx context.Context, ch io.ReadWriteCloser, t Target, service string, in *bufio.Reader, out io.Writer) error {
	defer ch.Close()
	if _, err := ch.Write(gitp2p.AppendRequest(nil, service, t.Repo)); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	trace("channel open, request sent")
	// An empty line tells git the connection is established.
	if _, err := io.WriteString(out, "\n"); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	defer stop()
	// git -> peer: ends when git closes its side; the peer then reads EOF.
	// The goroutine is not waited for: the process exits once the peer has
	// said everything, and git may keep its end open until then.
	go func() {
		io.Copy(ch, in)
		if cw, ok := ch.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	// peer -> git: ends when the server closes the channel.
	first := true
	_, err := io.Copy(out, readerFunc(func(p []byte) (int, error) {
		n, err := ch.Read(p)
		if first && n > 0 {
			trace("first bytes from the peer")
			first = false
		}
		return n, err
	}))
	trace("peer closed the channel")
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("channel: %w", err)
	}
	return ctx.Err()
}

// daemonChannel asks the device's running daemon (`del daemon`, control
// socket DEL_HOME/daemon.sock) to open the channel to the peer: the daemon
// is online already and keeps its links, so a git command by id costs no
// DHT lookup, ICE or TLS handshake when the link exists. The control
// protocol (cmd/del/daemon.go): a JSON line {"op":"connect","to":<id>,
// "channel":<name>}, a JSON line {"ev":"result","ok":...,"text":...}, then
// the channel's bytes. ok false with no daemon listening.
func daemonChannel(ctx context.Context, t Target) (io.ReadWriteCloser, bool, error) {
	home, err := config.Home()
	if err != nil {
		return nil, false, nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(home, "daemon.sock"))
	if err != nil {
		return nil, false, nil
	}
	trace("daemon connected")
	req, _ := json.Marshal(map[string]string{"op": "connect", "to": t.Peer.String(), "channel": gitp2p.ChannelPrefix + t.Repo})
	if _, err := c.Write(append(req, '\n')); err != nil {
		c.Close()
		return nil, true, fmt.Errorf("daemon: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	br := bufio.NewReader(c)
	line, err := br.ReadBytes('\n')
	stop()
	var ev struct {
		Ev   string `json:"ev"`
		OK   bool   `json:"ok"`
		Text string `json:"text"`
	}
	if err == nil {
		err = json.Unmarshal(line, &ev)
	}
	if err != nil || ev.Ev != "result" {
		c.Close()
		return nil, true, fmt.Errorf("daemon: unexpected answer %q (%v)", line, err)
	}
	if !ev.OK {
		c.Close()
		return nil, true, errors.New(ev.Text)
	}
	return &daemonStream{Reader: br, UnixConn: c.(*net.UnixConn)}, true, nil
}

// daemonStream reads what the daemon's answer left buffered, then the
// socket.
type daemonStream struct {
	*bufio.Reader
	*net.UnixConn
}

func (s *daemonStream) Read(p []byte) (int, error) { return s.Reader.Read(p) }

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
