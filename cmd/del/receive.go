package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/transfer"
	"github.com/del-share/del/turn"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newReceiveCmd) }

// receiveCmd holds `del receive`'s flags and, once run, what it resolved.
type receiveCmd struct {
	listen    string
	dir       string
	yes       bool
	toStdout  bool
	overwrite bool
	fsync     bool
	from      string
	quiet     bool
	turnURL   string
	permit    []string

	cfg   *config.Config
	home  string
	ident *identity.Identity
	only  identity.ID // --from
	info  io.Writer   // where the contract lines go: stdout, or stderr with --stdout
	opts  transfer.ReceiveOptions
}

func newReceiveCmd() *cobra.Command {
	r := &receiveCmd{}
	cmd := &cobra.Command{
		Use:   "receive [CODE] [--listen HOST:PORT] [--dir DIR] [--yes]",
		Short: "Receive one transfer from a peer",
		Long: `Receive one transfer.
  del receive CODE          from the sender that printed the code phrase
  del receive               online through the DHT; prints "listening <peer-id>"
  del receive --listen H:P  prints "listening <peer-id>@<host>:<port>"
  del receive --turn URL    on a TURN relay's address
Nothing is accepted without consent: --yes, an answer at the terminal prompt,
the accept policy of config.toml (contacts are accepted by default), --from
limiting who may send, or a code phrase (entering it is consent).`,
		Args: cobra.MaximumNArgs(1),
		RunE: r.run,
	}
	f := cmd.Flags()
	f.StringVar(&r.listen, "listen", "", "HOST:PORT to listen on (port 0 picks a free one)")
	f.StringVar(&r.dir, "dir", "", "folder to receive into (default: download_dir of config.toml, else the current folder)")
	f.BoolVarP(&r.yes, "yes", "y", false, "accept the offer without asking")
	f.BoolVar(&r.toStdout, "stdout", false, "write the single received file to stdout")
	f.BoolVar(&r.overwrite, "overwrite", false, "replace existing files that have other content")
	f.BoolVar(&r.fsync, "fsync", false, "flush each file to disk before confirming it (default: fsync of config.toml)")
	f.StringVar(&r.from, "from", "", "accept only this peer id")
	f.BoolVarP(&r.quiet, "quiet", "q", false, "no progress output")
	f.StringVar(&r.turnURL, "turn", "", "also listen on a TURN relay: turn://USER:PASS@HOST:PORT (default $DEL_TURN)")
	f.StringSliceVar(&r.permit, "permit", nil, "IPs allowed to reach the relayed address besides the TURN server's own")
	return cmd
}

func (r *receiveCmd) run(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	var err error
	if r.cfg, r.home, err = loadConfig(); err != nil {
		return err
	}
	contacts, err := config.LoadContacts(r.home)
	if err != nil {
		return err
	}
	if r.dir == "" {
		r.dir = r.cfg.DownloadDir
	}
	if r.dir == "" {
		r.dir = "."
	}
	if r.from != "" {
		if r.only, err = identity.ParseID(r.from); err != nil {
			return fmt.Errorf("--from: %w", err)
		}
	}
	tc, err := turnClient(r.turnURL, r.cfg)
	if err != nil {
		return err
	}
	online := r.listen == "" && len(r.cfg.Bootstrap) > 0
	code := len(args) == 1
	if (code || tc == nil) && r.listen == "" && !online {
		return errNoBootstrap
	}
	if r.ident, err = linkIdentity(cmd); err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	r.info = out
	if r.toStdout {
		r.info = cmd.ErrOrStderr()
	}
	r.opts = transfer.ReceiveOptions{
		Dir:       r.dir,
		Overwrite: r.overwrite,
		Fsync:     r.fsync || r.cfg.Fsync,
		Progress:  newProgress(cmd.ErrOrStderr(), "receiving", r.quiet),
		Decide:    consentPolicy(r.yes, contacts, r.cfg.Accept, askTerminal),
	}
	if r.toStdout {
		r.opts.Stdout = out
	}
	if c := daemonConn(r.home); c != nil && (code || online) {
		return r.viaDaemon(c, code)
	}
	switch {
	case code:
		return receiveWithCode(ctx, r.info, r.ident, r.online(), args[0], r.opts)
	case online:
		return receiveOnline(ctx, r.info, r.ident, r.only, r.online(), r.opts)
	default:
		return r.listening(ctx, cmd, tc)
	}
}

func (r *receiveCmd) online() onlineOptions {
	return onlineOptions{cfg: r.cfg, turnURL: r.turnURL, client: true}
}

// viaDaemon asks this device's daemon for the next transfer.
func (r *receiveCmd) viaDaemon(c net.Conn, code bool) error {
	if code || r.toStdout || !r.only.IsZero() {
		c.Close()
		return fmt.Errorf("a daemon keeps this device online (%s): it receives by id; code phrases, --stdout and --from need it stopped", filepath.Join(r.home, daemonSocket))
	}
	absDir, err := filepath.Abs(r.dir)
	if err != nil {
		c.Close()
		return err
	}
	text, err := viaDaemon(c, ctlRequest{Op: "receive", Dir: absDir, Yes: r.yes, Overwrite: r.overwrite, Fsync: r.fsync}, r.opts.Progress, r.info)
	if err != nil {
		return err
	}
	fmt.Fprintln(r.info, text)
	return nil
}

// listening waits on a direct address (--listen) and/or a relayed one
// (--turn) and receives the first transfer that arrives on either.
func (r *receiveCmd) listening(ctx context.Context, cmd *cobra.Command, tc *turn.Client) error {
	actx, cancelAccept := context.WithCancel(ctx)
	acc := newAcceptor()
	var listeners []net.Listener
	defer func() {
		cancelAccept()
		for _, ln := range listeners {
			ln.Close()
		}
		acc.wait()
	}()
	if r.listen != "" {
		ln, err := net.Listen("tcp", r.listen)
		if err != nil {
			return err
		}
		listeners = append(listeners, ln)
		acc.add(actx, ln, "direct")
		fmt.Fprintf(r.info, "listening %s@%s\n", r.ident.ID, ln.Addr())
	}
	if tc != nil {
		alloc, err := relayListen(ctx, tc, r.permit)
		if err != nil {
			return err
		}
		listeners = append(listeners, alloc)
		acc.add(actx, alloc, "relay "+tc.Server)
		// With --listen too, the first line stays the direct address.
		word := "listening"
		if r.listen != "" {
			word = "relayed"
		}
		fmt.Fprintf(r.info, "%s %s@%s\n", word, r.ident.ID, alloc.RelayedAddr())
	}
	for {
		a, err := acc.next(ctx)
		if err != nil {
			return err
		}
		rep, err := serveOne(ctx, a.conn, r.ident, r.only, r.opts)
		if errors.Is(err, errNotATransfer) {
			// A stray connection or a refused peer: keep waiting.
			fmt.Fprintf(cmd.ErrOrStderr(), "ignored a connection from %s: %v\n", a.conn.RemoteAddr(), err)
			continue
		}
		if err != nil {
			return err
		}
		where := r.dir
		if r.toStdout {
			where = "stdout"
		}
		link := "a direct link"
		if a.via != "direct" {
			link = "a relayed link (TURN " + strings.TrimPrefix(a.via, "relay ") + ")"
		}
		fmt.Fprintf(r.info, "received %s from %s into %s over %s\n", describe(rep), rep.Remote, where, link)
		return nil
	}
}
