package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
	"github.com/del-share/del/transfer"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newSendCmd) }

// sendCmd holds `del send`'s flags and, once run, what it resolved.
type sendCmd struct {
	name      string
	quiet     bool
	timeout   time.Duration
	limit     string
	turnURL   string
	relayMode string
	useCode   bool

	cfg   *config.Config
	home  string
	ident *identity.Identity
	opts  transfer.SendOptions
}

func newSendCmd() *cobra.Command {
	s := &sendCmd{}
	cmd := &cobra.Command{
		Use:   "send [<peer-id>[@<host>:<port>] | <contact>] PATH... | -",
		Short: "Send files, directories or stdin (-) to a peer, or to whoever has the printed code",
		Long: `Send files, directories (recursively) or standard input ("-") to a peer:
by its id (found through the DHT), by contact name, or at a direct address
<peer-id>@<host>:<port>. Without a peer (or with --code), del prints a code
phrase; the receiver runs "del receive <code>".
Exits 0 only when the receiver has confirmed every file's content hash.`,
		Args: cobra.MinimumNArgs(1),
		RunE: s.run,
	}
	f := cmd.Flags()
	f.StringVar(&s.name, "name", "stdin", `name the receiver gives to data read from "-"`)
	f.BoolVarP(&s.quiet, "quiet", "q", false, "no progress output")
	f.DurationVar(&s.timeout, "connect-timeout", 30*time.Second, "how long to try to reach the peer")
	f.StringVar(&s.turnURL, "turn", "", "TURN server for going out through a relay: turn://USER:PASS@HOST:PORT (default $DEL_TURN)")
	f.BoolVar(&s.useCode, "code", false, "send to whoever enters the printed code phrase (the default when no peer is named)")
	f.StringVar(&s.relayMode, "relay", "auto", "auto: relay only if the direct connection fails; always; never")
	f.StringVar(&s.limit, "limit-rate", "", "cap the data rate in bytes per second (suffixes k, M, G: powers of 1000)")
	return cmd
}

func (s *sendCmd) run(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	var err error
	if s.cfg, s.home, err = loadConfig(); err != nil {
		return err
	}
	contacts, err := config.LoadContacts(s.home)
	if err != nil {
		return err
	}
	// The first argument is the peer unless it is not one and is a path
	// (then every argument is a path and a code phrase is printed).
	want, addr, terr := parseTarget(args[0], contacts)
	paths := args[1:]
	if s.useCode || len(args) == 1 || terr != nil {
		if !s.useCode && len(args) > 1 && !pathExists(args[0]) {
			return terr // a mistyped peer id or contact, not a path
		}
		s.useCode, paths = true, args
	}
	switch s.relayMode {
	case "auto", "always", "never":
	default:
		return fmt.Errorf("--relay must be auto, always or never, not %q", s.relayMode)
	}
	var rate int64
	if s.limit != "" {
		if rate, err = parseRate(s.limit); err != nil {
			return fmt.Errorf("--limit-rate: %w", err)
		}
	}
	if s.ident, err = linkIdentity(cmd); err != nil {
		return err
	}
	src, err := s.source(ctx, cmd, paths)
	if err != nil {
		return err
	}
	s.opts = transfer.SendOptions{Progress: newProgress(cmd.ErrOrStderr(), "sending", s.quiet), RateLimit: rate}
	out := cmd.OutOrStdout()
	isStdin := len(paths) == 1 && paths[0] == "-"
	switch c := daemonConn(s.home); {
	case s.useCode:
		if c != nil {
			c.Close()
		}
		rep, err := sendWithCode(ctx, out, s.ident, s.online(), src, s.opts)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "sent %s to %s\n", describe(rep), rep.Remote)
		return nil
	case addr == "" && c != nil && !isStdin:
		return s.viaDaemon(c, cmd, want, paths, rate)
	default:
		if c != nil {
			c.Close()
		}
		return s.direct(ctx, out, want, addr, src)
	}
}

func (s *sendCmd) online() onlineOptions {
	return onlineOptions{cfg: s.cfg, turnURL: s.turnURL, client: true}
}

func (s *sendCmd) source(ctx context.Context, cmd *cobra.Command, paths []string) (*transfer.Source, error) {
	if len(paths) == 1 && paths[0] == "-" {
		return transfer.StreamSource(s.name, os.Stdin)
	}
	for _, p := range paths {
		if p == "-" {
			return nil, errors.New(`"-" (stdin) must be the only path`)
		}
	}
	return scanWithFeedback(ctx, s.home, paths, cmd.ErrOrStderr(), s.quiet)
}

// viaDaemon hands the transfer to this device's daemon.
func (s *sendCmd) viaDaemon(c net.Conn, cmd *cobra.Command, to identity.ID, paths []string, rate int64) error {
	abs := make([]string, len(paths))
	for i, p := range paths {
		var err error
		if abs[i], err = filepath.Abs(p); err != nil {
			c.Close()
			return err
		}
	}
	text, err := viaDaemon(c, ctlRequest{Op: "send", To: to.String(), Paths: abs, Limit: rate}, s.opts.Progress, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), text)
	return nil
}

// direct reaches the peer itself: by id through the DHT and ICE when addr
// is empty, else at addr (with the TURN fallback of --relay).
func (s *sendCmd) direct(ctx context.Context, out io.Writer, want identity.ID, addr string, src *transfer.Source) error {
	dctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var ch net.Conn
	var via string
	if addr == "" {
		host, stop, err := goOnline(dctx, s.ident, s.online())
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
		tc, err := turnClient(s.turnURL, s.cfg)
		if err != nil {
			return err
		}
		conn, how, release, err := dialPeer(dctx, addr, tc, s.relayMode)
		if err != nil {
			return err
		}
		defer release()
		link, err := peer.Client(dctx, conn, peer.Config{Identity: s.ident, Expect: want})
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
	rep, err := transfer.Send(ctx, ch, src, s.opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sent %s to %s at %s over %s\n", describe(rep), want, addr, via)
	return nil
}
