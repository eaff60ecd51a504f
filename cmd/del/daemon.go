package main

// `del daemon` keeps a device online: a full DHT node, the host that
// answers connection requests, and the accept policy. Other del commands of
// the same DEL_HOME talk to it through a Unix socket, $DEL_HOME/daemon.sock
// (mode 0600), instead of going online themselves.
//
// Control protocol: newline-delimited JSON. The client sends one request
// line; the daemon answers with event lines and ends with a "result" event:
//
//	→ {"op":"send","to":"<peer-id>","paths":["/abs/path",...],"limit":0}
//	→ {"op":"receive","dir":"/abs/dir","yes":true,"overwrite":false}
//	→ {"op":"status"}
//	→ {"op":"connect","to":"<peer-id>","channel":"git/<repo>"}
//	   (after an ok result the socket carries the channel's bytes both ways;
//	   git-remote-del's connections go through it instead of joining the DHT)
//	← {"ev":"begin","files":2,"bytes":1234}   progress: begin, file, advance, fileend, end
//	← {"ev":"info","text":"listening <peer-id>"}
//	← {"ev":"result","ok":true,"text":"sent 2 file(s) …"} | {"ev":"result","ok":false,"text":"<error>"}
//
// Transfers that arrive while no `del receive` is attached are received into
// the configured download folder when the accept policy says "auto" for that
// device (contacts, by default), and declined otherwise.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/del-share/del/gitp2p"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
	"github.com/del-share/del/transfer"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newDaemonCmd) }

const daemonSocket = "daemon.sock"

type ctlRequest struct {
	Op        string   `json:"op"`
	To        string   `json:"to,omitempty"`
	Paths     []string `json:"paths,omitempty"`
	Limit     int64    `json:"limit,omitempty"`
	Dir       string   `json:"dir,omitempty"`
	Channel   string   `json:"channel,omitempty"`
	Yes       bool     `json:"yes,omitempty"`
	Overwrite bool     `json:"overwrite,omitempty"`
	Fsync     bool     `json:"fsync,omitempty"`
}

type ctlEvent struct {
	Ev     string `json:"ev"`
	Files  int    `json:"files,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
	Path   string `json:"path,omitempty"`
	Size   int64  `json:"size,omitempty"`
	Offset int64  `json:"offset,omitempty"`
	N      int64  `json:"n,omitempty"`
	Err    string `json:"err,omitempty"`
	OK     bool   `json:"ok,omitempty"`
	Text   string `json:"text,omitempty"`
}

func newDaemonCmd() *cobra.Command {
	var turnURL string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Keep this device online (DHT node, listener, accept policy) until stopped",
		Long: `Keeps this device online until SIGINT/SIGTERM: a full DHT node, the answer
to connection requests, and the accept policy of config.toml. del send and del
receive of the same DEL_HOME then work through it (socket $DEL_HOME/daemon.sock).
It also serves the repositories shared with del git share (git/<repo>
channels). Prints "daemon online <peer-id>" once ready.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, home, err := loadConfig()
			if err != nil {
				return err
			}
			ident, err := linkIdentity(cmd)
			if err != nil {
				return err
			}
			sock := filepath.Join(home, daemonSocket)
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				return fmt.Errorf("a daemon is already running for %s", home)
			}
			os.Remove(sock)
			d := &daemon{cfg: cfg, home: home, ident: ident}
			contacts, err := config.LoadContacts(home)
			if err != nil {
				return err
			}
			d.contacts = contacts
			host, stop, err := goOnline(ctx, ident, onlineOptions{cfg: cfg, turnURL: turnURL})
			if err != nil {
				return err
			}
			defer stop()
			d.host = host
			ln, err := net.Listen("unix", sock)
			if err != nil {
				return err
			}
			os.Chmod(sock, 0o600)
			defer os.Remove(sock)
			stopLn := context.AfterFunc(ctx, func() { ln.Close() })
			defer stopLn()
			fmt.Fprintf(cmd.OutOrStdout(), "daemon online %s\n", ident.ID)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); d.acceptTransfers(ctx) }()
			for {
				c, err := ln.Accept()
				if err != nil {
					break
				}
				wg.Add(1)
				go func() { defer wg.Done(); d.serveControl(ctx, c) }()
			}
			stop()
			wg.Wait()
			if ctx.Err() != nil {
				return nil // stopped by a signal: a clean exit
			}
			return err
		},
	}
	cmd.Flags().StringVar(&turnURL, "turn", "", "TURN server for relayed candidates (default $DEL_TURN / config.toml)")
	return cmd
}

type daemon struct {
	cfg      *config.Config
	home     string
	ident    *identity.Identity
	host     *peer.Host
	contacts config.Contacts

	mu      sync.Mutex
	waiting []*receiveWaiter // `del receive` clients, first come first served
}

// receiveWaiter is an attached `del receive`.
type receiveWaiter struct {
	req  ctlRequest
	ev   *eventWriter
	done chan struct{}
}

// acceptTransfers hands each incoming file channel to a waiting `del
// receive`, or receives it by policy, and serves git channels for the
// shared repositories (del git share).
func (d *daemon) acceptTransfers(ctx context.Context) {
	git := newGitServer(d.ident, gitp2p.SharesFile(d.home), func(format string, a ...any) {
		slog.Info(fmt.Sprintf(format, a...))
	})
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		in, err := d.host.Accept(ctx)
		if err != nil {
			return
		}
		if isGitChannel(in.Name) {
			wg.Add(1)
			go func() { defer wg.Done(); git.serveChannel(ctx, in.Name, in.Conn, in.Link.Remote) }()
			continue
		}
		if in.Name != FileChannel {
			in.Conn.Close()
			continue
		}
		d.mu.Lock()
		var w *receiveWaiter
		if len(d.waiting) > 0 {
			w, d.waiting = d.waiting[0], d.waiting[1:]
		}
		d.mu.Unlock()
		go d.receive(ctx, in, w)
	}
}

func (d *daemon) receive(ctx context.Context, in peer.Incoming, w *receiveWaiter) {
	defer peer.Finish(in.Conn, 10*time.Second)
	remote := in.Link.Remote.String()
	opts := transfer.ReceiveOptions{Remote: remote, Dir: d.cfg.DownloadDir, Fsync: d.cfg.Fsync}
	policy := d.cfg.Accept
	if w != nil {
		defer close(w.done)
		opts.Dir, opts.Overwrite, opts.Progress = w.req.Dir, w.req.Overwrite, w.ev
		opts.Fsync = opts.Fsync || w.req.Fsync
		if w.req.Yes {
			policy = config.Accept{Contacts: config.AcceptAuto, Others: config.AcceptAuto}
		}
	}
	if opts.Dir == "" {
		opts.Dir = "."
	}
	// The daemon asks nobody: "ask" declines, naming what would consent.
	decide := consentPolicy(false, d.contacts, policy, nil)
	opts.Decide = func(ctx context.Context, o *transfer.OfferInfo) error {
		if err := decide(ctx, o); err != nil {
			return fmt.Errorf("%w (a daemon receives from auto-accepted contacts, or with del receive --yes)", err)
		}
		return nil
	}
	rep, err := transfer.Receive(ctx, in.Conn, opts)
	if w != nil {
		if err != nil {
			w.ev.result(false, err.Error())
		} else {
			w.ev.result(true, fmt.Sprintf("received %s from %s into %s over ICE (%s)", describe(rep), remote, opts.Dir, in.Link.RemoteAddr()))
		}
		return
	}
	if err != nil {
		slog.Info("daemon: incoming transfer failed", "from", remote, "err", err)
	} else {
		slog.Info("daemon: received", "from", remote, "summary", describe(rep), "dir", opts.Dir)
	}
}

func (d *daemon) serveControl(ctx context.Context, c net.Conn) {
	defer c.Close()
	ev := &eventWriter{w: c}
	br := bufio.NewReaderSize(c, 1<<20)
	line, err := br.ReadSlice('\n')
	if err != nil {
		ev.result(false, "bad request: no newline within 1 MiB")
		return
	}
	var req ctlRequest
	if err := json.Unmarshal(line, &req); err != nil {
		ev.result(false, "bad request: "+err.Error())
		return
	}
	switch req.Op {
	case "status":
		ev.result(true, "daemon online "+d.ident.ID.String())
	case "receive":
		w := &receiveWaiter{req: req, ev: ev, done: make(chan struct{})}
		d.mu.Lock()
		d.waiting = append(d.waiting, w)
		d.mu.Unlock()
		ev.send(ctlEvent{Ev: "info", Text: "listening " + d.ident.ID.String()})
		// The client hanging up cancels the wait.
		gone := make(chan struct{})
		go func() { io.Copy(io.Discard, c); close(gone) }()
		select {
		case <-w.done:
		case <-gone:
			d.mu.Lock()
			for i, x := range d.waiting {
				if x == w {
					d.waiting = append(d.waiting[:i], d.waiting[i+1:]...)
					break
				}
			}
			d.mu.Unlock()
		case <-ctx.Done():
		}
	case "send":
		d.send(ctx, req, ev)
	case "connect":
		d.connect(ctx, req, c, br, ev)
	default:
		ev.result(false, fmt.Sprintf("unknown op %q", req.Op))
	}
}

// connect opens a channel to a peer and splices it to the control
// connection (whose buffered reader br may already hold the first bytes).
func (d *daemon) connect(ctx context.Context, req ctlRequest, c net.Conn, br *bufio.Reader, ev *eventWriter) {
	to, err := identity.ParseID(req.To)
	if err != nil {
		ev.result(false, err.Error())
		return
	}
	if req.Channel == "" || req.Channel == FileChannel {
		ev.result(false, fmt.Sprintf("channel %q cannot be connected through the daemon", req.Channel))
		return
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	ch, _, err := d.host.Dial(dctx, to, req.Channel)
	cancel()
	if err != nil {
		ev.result(false, err.Error())
		return
	}
	defer ch.Close()
	ev.result(true, "connected")
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(ch, br)
		if cw, ok := ch.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	io.Copy(c, ch)
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	<-done
}

func (d *daemon) send(ctx context.Context, req ctlRequest, ev *eventWriter) {
	to, err := identity.ParseID(req.To)
	if err != nil {
		ev.result(false, err.Error())
		return
	}
	src, err := transfer.ScanWith(ctx, req.Paths, transfer.ScanOptions{Cache: hashCache(d.home), Late: true})
	if err != nil {
		ev.result(false, err.Error())
		return
	}
	ch, l, err := d.host.Dial(ctx, to, FileChannel)
	if err != nil {
		ev.result(false, err.Error())
		return
	}
	defer ch.Close()
	rep, err := transfer.Send(ctx, ch, src, transfer.SendOptions{Progress: ev, RateLimit: req.Limit})
	if err != nil {
		ev.result(false, err.Error())
		return
	}
	ev.result(true, fmt.Sprintf("sent %s to %s over ICE through the daemon (%s)", describe(rep), to, l.RemoteAddr()))
}

// eventWriter sends control events; as a transfer.Progress it forwards
// progress, coalescing byte counts to about ten events a second.
type eventWriter struct {
	mu      sync.Mutex
	w       io.Writer
	pending int64
	last    time.Time
}

func (e *eventWriter) send(ev ctlEvent) {
	b, _ := json.Marshal(ev)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.w.Write(append(b, '\n'))
}

func (e *eventWriter) result(ok bool, text string) {
	e.send(ctlEvent{Ev: "result", OK: ok, Text: text})
}

func (e *eventWriter) flush() {
	if e.pending > 0 {
		n := e.pending
		e.pending = 0
		e.send(ctlEvent{Ev: "advance", N: n})
	}
}

func (e *eventWriter) Begin(files int, bytes int64) {
	e.send(ctlEvent{Ev: "begin", Files: files, Bytes: bytes})
}
func (e *eventWriter) FileBegin(path string, size, offset int64) {
	e.flush()
	e.send(ctlEvent{Ev: "file", Path: path, Size: size, Offset: offset})
}
func (e *eventWriter) Advance(n int64) {
	e.pending += n
	if time.Since(e.last) > 100*time.Millisecond {
		e.last = time.Now()
		e.flush()
	}
}
func (e *eventWriter) FileEnd(path string, err error) {
	e.flush()
	ev := ctlEvent{Ev: "fileend", Path: path}
	if err != nil {
		ev.Err = err.Error()
	}
	e.send(ev)
}
func (e *eventWriter) End() { e.flush(); e.send(ctlEvent{Ev: "end"}) }

// daemonConn returns a connection to this device's daemon, or nil when
// none is running.
func daemonConn(home string) net.Conn {
	c, err := net.Dial("unix", filepath.Join(home, daemonSocket))
	if err != nil {
		return nil
	}
	return c
}

// viaDaemon sends req to the daemon on c and replays its events: progress
// into pr, info lines to info; it returns the result text or an error.
func viaDaemon(c net.Conn, req ctlRequest, pr transfer.Progress, info io.Writer) (string, error) {
	defer c.Close()
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return "", err
	}
	if pr == nil {
		pr = nilProgress{}
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev ctlEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return "", fmt.Errorf("daemon: %w", err)
		}
		switch ev.Ev {
		case "begin":
			pr.Begin(ev.Files, ev.Bytes)
		case "file":
			pr.FileBegin(ev.Path, ev.Size, ev.Offset)
		case "advance":
			pr.Advance(ev.N)
		case "fileend":
			var err error
			if ev.Err != "" {
				err = errors.New(ev.Err)
			}
			pr.FileEnd(ev.Path, err)
		case "end":
			pr.End()
		case "info":
			fmt.Fprintln(info, ev.Text)
		case "result":
			if !ev.OK {
				return "", errors.New(ev.Text)
			}
			return ev.Text, nil
		}
	}
	return "", errors.New("the daemon went away")
}

type nilProgress struct{}

func (nilProgress) Begin(int, int64)               {}
func (nilProgress) FileBegin(string, int64, int64) {}
func (nilProgress) Advance(int64)                  {}
func (nilProgress) FileEnd(string, error)          {}
func (nilProgress) End()                           {}

// daemonChannel asks the daemon on c to connect to a peer's channel and
// returns the socket as that channel.
func daemonChannel(c net.Conn, to identity.ID, channel string) (io.ReadWriteCloser, error) {
	b, _ := json.Marshal(ctlRequest{Op: "connect", To: to.String(), Channel: channel})
	if _, err := c.Write(append(b, '\n')); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadBytes('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("daemon: %w", err)
	}
	var ev ctlEvent
	if err := json.Unmarshal(line, &ev); err != nil || ev.Ev != "result" {
		c.Close()
		return nil, fmt.Errorf("daemon: unexpected answer %q", line)
	}
	if !ev.OK {
		c.Close()
		return nil, errors.New(ev.Text)
	}
	return &daemonStream{Reader: br, Conn: c}, nil
}

// daemonStream reads through the buffered reader that took the daemon's
// answer, writes to the socket, and half-closes it.
type daemonStream struct {
	io.Reader
	net.Conn
}

func (s *daemonStream) Read(p []byte) (int, error) { return s.Reader.Read(p) }

// CloseWrite tells the daemon (and so the peer) that we are done sending.
func (s *daemonStream) CloseWrite() error {
	if uc, ok := s.Conn.(*net.UnixConn); ok {
		return uc.CloseWrite()
	}
	return nil
}
