package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
	"github.com/del-share/del/transfer"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { commands = append(commands, newSendCmd, newReceiveCmd) }

// FileChannel is the peer channel that carries file transfers.
const FileChannel = "file"

// parseTarget splits "<peer-id>@<host>:<port>"; a bare "<peer-id>" gives
// an empty address (the peer is found through the DHT).
func parseTarget(s string, contacts config.Contacts) (identity.ID, string, error) {
	idPart, addr, ok := strings.Cut(s, "@")
	if v, isContact := contacts[idPart]; isContact {
		idPart = v
	}
	id, err := identity.ParseID(idPart)
	if err != nil {
		return id, "", fmt.Errorf("%q is neither a peer id nor a contact (del contacts list)", idPart)
	}
	if !ok {
		return id, "", nil // by id alone, through the DHT
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return id, "", fmt.Errorf("address %q: %w", addr, err)
	}
	return id, addr, nil
}

func newSendCmd() *cobra.Command {
	var (
		name      string
		quiet     bool
		timeout   time.Duration
		limit     string
		turnURL   string
		relayMode string
		useCode   bool
	)
	cmd := &cobra.Command{
		Use:   "send [<peer-id>[@<host>:<port>] | <contact>] PATH... | -",
		Short: "Send files, directories or stdin (-) to a peer, or to whoever has the printed code",
		Long: `Send files, directories (recursively) or standard input ("-") to a peer:
by its id (found through the DHT), by contact name, or at a direct address
<peer-id>@<host>:<port>. Without a peer (or with --code), del prints a code
phrase; the receiver runs "del receive <code>".
Exits 0 only when the receiver has confirmed every file's content hash.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, home, err := loadConfig()
			if err != nil {
				return err
			}
			contacts, err := config.LoadContacts(home)
			if err != nil {
				return err
			}
			want, addr, terr := parseTarget(args[0], contacts)
			paths := args[1:]
			if useCode || len(args) == 1 || terr != nil {
				if !useCode && len(args) > 1 && !pathExists(args[0]) {
					return terr // a mistyped peer id or contact, not a path
				}
				useCode, paths = true, args
			}
			var rate int64
			if limit != "" {
				if rate, err = parseRate(limit); err != nil {
					return fmt.Errorf("--limit-rate: %w", err)
				}
			}
			ident, err := loadIdentity(cmd)
			if err != nil {
				return err
			}
			var src *transfer.Source
			if len(paths) == 1 && paths[0] == "-" {
				src, err = transfer.StreamSource(name, os.Stdin)
			} else {
				for _, p := range paths {
					if p == "-" {
						return errors.New(`"-" (stdin) must be the only path`)
					}
				}
				src, err = scanWithFeedback(ctx, paths, cmd.ErrOrStderr(), quiet)
			}
			if err != nil {
				return err
			}
			switch relayMode {
			case "auto", "always", "never":
			default:
				return fmt.Errorf("--relay must be auto, always or never, not %q", relayMode)
			}
			tc, err := turnClient(turnURL, cfg)
			if err != nil {
				return err
			}
			sopts := transfer.SendOptions{Progress: newProgress(cmd.ErrOrStderr(), "sending", quiet), RateLimit: rate}
			if useCode {
				rep, err := sendWithCode(ctx, cmd.OutOrStdout(), ident, onlineOptions{cfg: cfg, turnURL: turnURL, client: true}, src, sopts)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "sent %s to %s\n", describe(rep), rep.Remote)
				return nil
			}
			if c := daemonConn(home); addr == "" && c != nil && !(len(paths) == 1 && paths[0] == "-") {
				abs := make([]string, len(paths))
				for i, p := range paths {
					if abs[i], err = filepath.Abs(p); err != nil {
						return err
					}
				}
				text, err := viaDaemon(c, ctlRequest{Op: "send", To: want.String(), Paths: abs, Limit: rate}, sopts.Progress, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), text)
				return nil
			}
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var ch net.Conn
			var via string
			if addr == "" {
				host, stop, err := goOnline(dctx, ident, onlineOptions{cfg: cfg, turnURL: turnURL, client: true})
				if err != nil {
					return err
				}
				defer stop()
				if ch, _, err = host.Dial(dctx, want, FileChannel); err != nil {
					return err
				}
				t := host.LastTiming()
				via = fmt.Sprintf("ICE (%s path; lookup %s, signaling %s, checks %s, TLS %s)", t.Path,
					t.Lookup.Round(time.Millisecond), t.Signal.Round(time.Millisecond), t.ICE.Round(time.Millisecond), t.TLS.Round(time.Millisecond))
				addr = "its ICE-selected address"
			} else {
				conn, how, release, err := dialPeer(dctx, addr, tc, relayMode)
				if err != nil {
					return err
				}
				defer release()
				link, err := peer.Client(dctx, conn, peer.Config{Identity: ident, Expect: want})
				if err != nil {
					return err
				}
				defer link.Close()
				if ch, err = link.Open(dctx, FileChannel); err != nil {
					return err
				}
				via = how
			}
			defer ch.Close()
			rep, err := transfer.Send(ctx, ch, src, sopts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sent %s to %s at %s over %s\n", describe(rep), want, addr, via)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "stdin", `name the receiver gives to data read from "-"`)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	cmd.Flags().DurationVar(&timeout, "connect-timeout", 30*time.Second, "how long to try to reach the peer")
	cmd.Flags().StringVar(&turnURL, "turn", "", "TURN server for going out through a relay: turn://USER:PASS@HOST:PORT (default $DEL_TURN)")
	cmd.Flags().BoolVar(&useCode, "code", false, "send to whoever enters the printed code phrase (the default when no peer is named)")
	cmd.Flags().StringVar(&relayMode, "relay", "auto", "auto: relay only if the direct connection fails; always; never")
	cmd.Flags().StringVar(&limit, "limit-rate", "", "cap the data rate in bytes per second (suffixes k, M, G: powers of 1000)")
	return cmd
}

// scanWithFeedback scans and hashes paths, saying so on w when it takes
// more than a second (large trees).
func scanWithFeedback(ctx context.Context, paths []string, w io.Writer, quiet bool) (*transfer.Source, error) {
	var hashedBytes atomic.Int64
	start := time.Now()
	done := make(chan struct{})
	slow := make(chan struct{})
	go func() {
		defer close(slow)
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-done:
			return
		case <-t.C:
		}
		if !quiet {
			fmt.Fprintf(w, "hashing content (BLAKE3) before the offer…\n")
		}
	}()
	src, err := transfer.Scan(ctx, paths, func(n int64) { hashedBytes.Add(n) })
	close(done)
	<-slow
	if el := time.Since(start); !quiet && el > time.Second && err == nil {
		fmt.Fprintf(w, "hashed %s in %s\n", transfer.FormatBytes(hashedBytes.Load()), el.Round(10*time.Millisecond))
	}
	return src, err
}

func pathExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil || p == "-"
}

// describe summarises a report: files, bytes, time, rate, skips, resumes.
func describe(rep *transfer.Report) string {
	secs := rep.Duration.Seconds()
	rate := float64(rep.Bytes) / max(secs, 1e-9)
	s := fmt.Sprintf("%d file(s), %s in %.2fs (%s/s)", rep.Files, transfer.FormatBytes(rep.Bytes), secs, transfer.FormatBytes(int64(rate)))
	if rep.Skipped > 0 {
		s += fmt.Sprintf(", %d already there", rep.Skipped)
	}
	if rep.Resumed > 0 {
		s += fmt.Sprintf(", resumed %s", transfer.FormatBytes(rep.Resumed))
	}
	return s
}

func newReceiveCmd() *cobra.Command {
	var (
		listen    string
		dir       string
		yes       bool
		toStdout  bool
		overwrite bool
		from      string
		quiet     bool
		turnURL   string
		permit    []string
	)
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
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, home, err := loadConfig()
			if err != nil {
				return err
			}
			contacts, err := config.LoadContacts(home)
			if err != nil {
				return err
			}
			if dir == "" {
				dir = cfg.DownloadDir
			}
			if dir == "" {
				dir = "."
			}
			tc, err := turnClient(turnURL, cfg)
			if err != nil {
				return err
			}
			online := listen == "" && len(cfg.Bootstrap) > 0
			if listen == "" && tc == nil && !online {
				return errNoBootstrap
			}
			var only identity.ID
			if from != "" {
				id, err := identity.ParseID(from)
				if err != nil {
					return fmt.Errorf("--from: %w", err)
				}
				only = id
			}
			ident, err := loadIdentity(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			info := out
			if toStdout {
				info = cmd.ErrOrStderr()
			}
			opts := transfer.ReceiveOptions{
				Dir:       dir,
				Overwrite: overwrite,
				Progress:  newProgress(cmd.ErrOrStderr(), "receiving", quiet),
				Decide:    consentPolicy(yes, contacts, cfg.Accept, askTerminal),
			}
			if toStdout {
				opts.Stdout = out
			}
			if c := daemonConn(home); c != nil && (len(args) == 1 || online) {
				if len(args) == 1 || toStdout || !only.IsZero() {
					c.Close()
					return fmt.Errorf("a daemon keeps this device online (%s): it receives by id; code phrases, --stdout and --from need it stopped", filepath.Join(home, daemonSocket))
				}
				absDir, err := filepath.Abs(dir)
				if err != nil {
					return err
				}
				text, err := viaDaemon(c, ctlRequest{Op: "receive", Dir: absDir, Yes: yes, Overwrite: overwrite}, opts.Progress, info)
				if err != nil {
					return err
				}
				fmt.Fprintln(info, text)
				return nil
			}
			if len(args) == 1 {
				if len(cfg.Bootstrap) == 0 {
					return errNoBootstrap
				}
				return receiveWithCode(ctx, info, ident, onlineOptions{cfg: cfg, turnURL: turnURL, client: true}, args[0], opts)
			}
			if online {
				return receiveOnline(ctx, info, ident, only, onlineOptions{cfg: cfg, turnURL: turnURL, client: true}, opts)
			}
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
			if listen != "" {
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return err
				}
				listeners = append(listeners, ln)
				acc.add(actx, ln, "direct")
				fmt.Fprintf(info, "listening %s@%s\n", ident.ID, ln.Addr())
			}
			if tc != nil {
				alloc, err := relayListen(ctx, tc, permit)
				if err != nil {
					return err
				}
				listeners = append(listeners, alloc)
				acc.add(actx, alloc, "relay "+tc.Server)
				// With --listen too, the first line stays the direct address.
				word := "listening"
				if listen != "" {
					word = "relayed"
				}
				fmt.Fprintf(info, "%s %s@%s\n", word, ident.ID, alloc.RelayedAddr())
			}
			for {
				a, err := acc.next(ctx)
				if err != nil {
					return err
				}
				rep, err := serveOne(ctx, a.conn, ident, only, opts)
				if errors.Is(err, errNotATransfer) {
					// A stray connection or a refused peer: keep waiting.
					fmt.Fprintf(cmd.ErrOrStderr(), "ignored a connection from %s: %v\n", a.conn.RemoteAddr(), err)
					continue
				}
				if err != nil {
					return err
				}
				where := dir
				if toStdout {
					where = "stdout"
				}
				link := "a direct link"
				if a.via != "direct" {
					link = "a relayed link (TURN " + strings.TrimPrefix(a.via, "relay ") + ")"
				}
				fmt.Fprintf(info, "received %s from %s into %s over %s\n", describe(rep), rep.Remote, where, link)
				return nil
			}
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "HOST:PORT to listen on (port 0 picks a free one)")
	cmd.Flags().StringVar(&dir, "dir", "", "folder to receive into (default: download_dir of config.toml, else the current folder)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "accept the offer without asking")
	cmd.Flags().BoolVar(&toStdout, "stdout", false, "write the single received file to stdout")
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "replace existing files that have other content")
	cmd.Flags().StringVar(&from, "from", "", "accept only this peer id")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	cmd.Flags().StringVar(&turnURL, "turn", "", "also listen on a TURN relay: turn://USER:PASS@HOST:PORT (default $DEL_TURN)")
	cmd.Flags().StringSliceVar(&permit, "permit", nil, "IPs allowed to reach the relayed address besides the TURN server's own")
	return cmd
}

var errNotATransfer = errors.New("not a transfer")

// receiveOnline goes online through the DHT, prints "listening <peer-id>",
// and receives the first transfer a device sends to this id.
// A one-shot receiver is an OpenDHT client node (o.client): behind a NAT it
// could not answer other nodes' queries anyway, and lookups would wait for it.
func receiveOnline(ctx context.Context, info io.Writer, ident *identity.Identity, only identity.ID, o onlineOptions, opts transfer.ReceiveOptions) error {
	if !only.IsZero() {
		o.accept = func(id identity.ID) bool { return id == only }
	}
	host, stop, err := goOnline(ctx, ident, o)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(info, "listening %s\n", ident.ID)
	for {
		in, err := host.Accept(ctx)
		if err != nil {
			return err
		}
		if in.Name != FileChannel {
			in.Conn.Close()
			continue
		}
		opts.Remote = in.Link.Remote.String()
		rep, err := transfer.Receive(ctx, in.Conn, opts)
		peer.Finish(in.Conn, 10*time.Second)
		if err != nil {
			return err
		}
		where := opts.Dir
		if opts.Stdout != nil {
			where = "stdout"
		}
		fmt.Fprintf(info, "received %s from %s into %s over ICE (%s)\n", describe(rep), opts.Remote, where, in.Link.RemoteAddr())
		return nil
	}
}

// serveOne authenticates one incoming connection and receives the transfer
// on its file channel.
func serveOne(ctx context.Context, conn net.Conn, ident *identity.Identity, only identity.ID, opts transfer.ReceiveOptions) (*transfer.Report, error) {
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	link, err := peer.Server(hctx, conn, peer.Config{Identity: ident, Expect: only})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotATransfer, err)
	}
	defer link.Close()
	name, ch, err := link.Accept(hctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotATransfer, err)
	}
	defer ch.Close()
	if name != FileChannel {
		return nil, fmt.Errorf("%w: peer opened channel %q", errNotATransfer, name)
	}
	opts.Remote = link.Remote.String()
	rep, err := transfer.Receive(ctx, ch, opts)
	if rep != nil {
		rep.Remote = link.Remote.String()
	}
	// We spoke last (the summary): let it reach the sender before hanging up.
	peer.Finish(ch, 10*time.Second)
	return rep, err
}

// consentPolicy decides on an offer: --yes accepts everything; otherwise
// the configured policy for contacts (default auto) or for other devices
// (default ask) applies, and "ask" calls ask (nil: decline).
func consentPolicy(yes bool, contacts config.Contacts, policy config.Accept, ask func(ctx context.Context, who string, o *transfer.OfferInfo) error) func(context.Context, *transfer.OfferInfo) error {
	return func(ctx context.Context, o *transfer.OfferInfo) error {
		if yes {
			return nil
		}
		who := o.Remote
		rule := policy.Others
		if name := contacts.NameOf(o.Remote); name != "" {
			who = fmt.Sprintf("%s (%s)", name, o.Remote)
			rule = policy.Contacts
		}
		switch rule {
		case config.AcceptAuto:
			return nil
		case config.AcceptRefuse:
			return errors.New("the receiver does not accept transfers from this device")
		}
		if ask == nil {
			return errors.New("the receiver did not consent (nobody to ask; it needs --yes)")
		}
		return ask(ctx, who, o)
	}
}

// askTerminal asks at the controlling terminal, declining when there is none.
func askTerminal(ctx context.Context, who string, o *transfer.OfferInfo) error {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return errors.New("the receiver did not consent (no terminal to ask; it needs --yes)")
	}
	defer tty.Close()
	fmt.Fprintf(tty, "%s offers %d file(s), %s", who, o.Files, transfer.FormatBytes(o.Bytes))
	if o.Skip > 0 || o.Resume > 0 {
		fmt.Fprintf(tty, " (%s to move)", transfer.FormatBytes(o.Move))
	}
	fmt.Fprintln(tty, ":")
	for i, e := range o.Entries {
		if i == 10 {
			fmt.Fprintf(tty, "  … and %d more\n", len(o.Entries)-10)
			break
		}
		fmt.Fprintf(tty, "  %s %s\n", e.Path, sizeOf(e))
	}
	fmt.Fprintf(tty, "Accept into %s? [y/N] ", o.Dir)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(tty).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		if a := strings.ToLower(strings.TrimSpace(line)); a == "y" || a == "yes" {
			return nil
		}
		return errors.New("the receiver declined")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sizeOf(e transfer.Entry) string {
	switch {
	case e.Kind == transfer.KindDir:
		return "(folder)"
	case e.Kind == transfer.KindSymlink:
		return "-> " + e.Target
	case e.Size < 0:
		return "(stream)"
	}
	return "(" + transfer.FormatBytes(e.Size) + ")"
}
