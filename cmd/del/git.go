package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/del-share/del/gitp2p"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newGitCmd) }

func newGitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "git",
		Short: "Share git repositories with other devices (clone with del://<peer-id>/<repo>)",
	}
	cmd.AddCommand(newGitShareCmd(), newGitUnshareCmd(), newGitListCmd(), newGitServeCmd(), newGitConnectCmd())
	return cmd
}

func sharesFile() (string, error) {
	home, err := config.Home()
	if err != nil {
		return "", err
	}
	return gitp2p.SharesFile(home), nil
}

func newGitShareCmd() *cobra.Command {
	var (
		name  string
		push  []string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "share PATH [--name N] [--allow-push <peer-id>...]",
		Short: "Let peers fetch a repository (and push, for the peers granted)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, err := gitp2p.OpenRepo(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			path, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = gitp2p.DefaultName(path)
			}
			var ids []string
			for _, p := range push {
				id, err := identity.ParseID(p)
				if err != nil {
					return fmt.Errorf("--allow-push %q: %w", p, err)
				}
				ids = append(ids, id.String())
			}
			file, err := sharesFile()
			if err != nil {
				return err
			}
			shares, err := gitp2p.LoadShares(file)
			if err != nil {
				return err
			}
			if err := shares.Add(gitp2p.Share{Name: name, Path: path, Push: ids, Force: force}); err != nil {
				return err
			}
			if err := shares.Save(file); err != nil {
				return err
			}
			kind := "work tree"
			if repo.Bare {
				kind = "bare"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "shared %s (%s) as %q\n", path, kind, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name peers use in del://<peer-id>/<name> (default: the folder name)")
	cmd.Flags().StringSliceVar(&push, "allow-push", nil, "peer id allowed to push (repeatable)")
	cmd.Flags().BoolVar(&force, "allow-force", false, "let the push peers also force-push and delete refs")
	return cmd
}

func newGitUnshareCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unshare NAME",
		Short: "Stop sharing a repository",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := sharesFile()
			if err != nil {
				return err
			}
			shares, err := gitp2p.LoadShares(file)
			if err != nil {
				return err
			}
			if !shares.Remove(args[0]) {
				return fmt.Errorf("no share named %q", args[0])
			}
			if err := shares.Save(file); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unshared %q\n", args[0])
			return nil
		},
	}
}

func newGitListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list [<peer-id>[@<host>:<port>]]",
		Short: "List this device's shared repositories, or those a peer shares with this device",
		Long: `Without an argument: this device's shares, one per line: NAME PATH [push:ID,...] [force].
With a peer: the repositories it lets this device reach, one per line: NAME read|push|force.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				return listRemote(cmd, args[0])
			}
			file, err := sharesFile()
			if err != nil {
				return err
			}
			shares, err := gitp2p.LoadShares(file)
			if err != nil {
				return err
			}
			for _, s := range shares.Shares {
				line := s.Name + "\t" + s.Path
				if len(s.Push) > 0 {
					line += "\tpush:" + strings.Join(s.Push, ",")
				}
				if s.Force {
					line += "\tforce"
				}
				fmt.Fprintln(cmd.OutOrStdout(), line)
			}
			return nil
		},
	}
}

func newGitServeCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "serve [--listen HOST:PORT]",
		Short: "Serve the shared repositories in the foreground",
		Long: `Serve the shared repositories until stopped. With --listen, prints
"listening <peer-id>@<host>:<port>" once ready; peers then run
git clone del://<peer-id>@<host>:<port>/<name>. Without it, goes online
through the DHT (DEL_BOOTSTRAP or the configuration) and prints
"listening <peer-id>"; peers then run git clone del://<peer-id>/<name>.
Shares added or removed while it runs apply at the next request.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ident, err := linkIdentity(cmd)
			if err != nil {
				return err
			}
			file, err := sharesFile()
			if err != nil {
				return err
			}
			if os.Getenv("DEL_GIT_TRACE") != "" {
				start := time.Now()
				var mu sync.Mutex
				gitp2p.Trace = func(format string, a ...any) {
					mu.Lock()
					defer mu.Unlock()
					now := time.Now()
					fmt.Fprintf(cmd.ErrOrStderr(), "%s del git serve %9.1fms: %s\n", now.Format("15:04:05.000000"), float64(now.Sub(start).Microseconds())/1000, fmt.Sprintf(format, a...))
				}
			}
			srv := newGitServer(ident, file, func(format string, a ...any) {
				fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", a...)
			})
			if listen == "" {
				return srv.serveOnline(ctx, cmd.OutOrStdout())
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "listening %s@%s\n", ident.ID, ln.Addr())
			return srv.serve(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "HOST:PORT to listen on (port 0 picks a free one)")
	return cmd
}

// newGitServer serves the shares listed in file (gitp2p.SharesFile of
// DEL_HOME). The daemon can hand it the channels its host accepts: for a
// name with isGitChannel, go srv.serveChannel(ctx, in.Name, in.Conn,
// in.Link.Remote).
func newGitServer(ident *identity.Identity, file string, log func(format string, a ...any)) *gitServer {
	return &gitServer{ident: ident, policy: gitp2p.FilePolicy(file), log: log}
}

// gitServer accepts links and serves git channels on them. It owns one
// goroutine per link and per channel and waits for all of them.
type gitServer struct {
	ident  *identity.Identity
	policy gitp2p.Policy
	log    func(format string, a ...any)
	wg     sync.WaitGroup
}

func (s *gitServer) serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		ln.Close()
		s.wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveLink(ctx, conn)
		}()
	}
}

func (s *gitServer) serveLink(ctx context.Context, conn net.Conn) {
	gitTrace("tcp connection from %s", conn.RemoteAddr())
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	link, err := peer.Server(hctx, conn, peer.Config{Identity: s.ident})
	cancel()
	if err != nil {
		s.log("ignored a connection from %s: %v", conn.RemoteAddr(), err)
		return
	}
	gitTrace("link up with %s", link.Remote)
	defer link.Close()
	stop := context.AfterFunc(ctx, func() { link.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		name, ch, err := link.Accept(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveChannel(ctx, name, ch, link.Remote)
		}()
	}
}

// gitTrace prints a timing point when DEL_GIT_TRACE is set.
func gitTrace(format string, a ...any) {
	if gitp2p.Trace != nil {
		gitp2p.Trace(format, a...)
	}
}

// isGitChannel reports whether a channel name is one gitServer serves.
func isGitChannel(name string) bool {
	return name == gitp2p.ListChannel || strings.HasPrefix(name, gitp2p.ChannelPrefix)
}

// serveChannel serves one git channel (a session or a listing) and closes it.
func (s *gitServer) serveChannel(ctx context.Context, name string, ch net.Conn, remote identity.ID) {
	if name == gitp2p.ListChannel {
		var l []gitp2p.Listing
		if lister, ok := s.policy.(gitp2p.Lister); ok {
			l = lister.List(remote)
		}
		gitp2p.WriteList(ch, l)
		peer.Finish(ch, 10*time.Second)
		return
	}
	repo, ok := strings.CutPrefix(name, gitp2p.ChannelPrefix)
	if !ok {
		s.log("%s opened channel %q: not a git channel", remote, name)
		ch.Close()
		return
	}
	if err := gitp2p.Serve(ctx, &idleConn{Conn: ch, idle: sessionIdle}, remote, repo, s.policy); err != nil {
		s.log("git %s for %s: %v", repo, remote, err)
	}
	// We spoke last (the pack, the report or an ERR packet): let the client
	// read it all before the channel closes.
	peer.Finish(ch, 10*time.Second)
}

// serveOnline goes online through the DHT and serves the git channels
// peers open by id.
func (s *gitServer) serveOnline(ctx context.Context, out io.Writer) error {
	cfg, _, err := loadConfig()
	if err != nil {
		return err
	}
	host, stop, err := goOnline(ctx, s.ident, onlineOptions{cfg: cfg})
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(out, "listening %s\n", s.ident.ID)
	defer s.wg.Wait()
	for {
		in, err := host.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !isGitChannel(in.Name) {
			s.log("%s opened channel %q: not a git channel", in.Link.Remote, in.Name)
			in.Conn.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveChannel(ctx, in.Name, in.Conn, in.Link.Remote)
		}()
	}
}

// sessionIdle is how long a git session may go without reading or writing
// a byte before the server gives up on the peer.
const sessionIdle = 2 * time.Minute

// idleConn pushes the channel's deadlines forward at every read and write,
// so that a peer that stops talking (or reading) mid-session frees the
// server's goroutine and git subprocesses.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}

// listRemote asks a peer which repositories it shares with this device:
// at <peer-id>@<host>:<port>, or by id through the DHT.
func listRemote(cmd *cobra.Command, target string) error {
	idPart, addr, hasAddr := strings.Cut(target, "@")
	want, err := identity.ParseID(idPart)
	if err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(addr); hasAddr && err != nil {
		return fmt.Errorf("%q: use <peer-id> or <peer-id>@<host>:<port>", target)
	}
	ident, err := linkIdentity(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
	defer cancel()
	var ch net.Conn
	if hasAddr {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", addr, err)
		}
		link, err := peer.Client(ctx, conn, peer.Config{Identity: ident, Expect: want})
		if err != nil {
			return err
		}
		defer link.Close()
		if ch, err = link.Open(ctx, gitp2p.ListChannel); err != nil {
			return err
		}
	} else {
		cfg, _, err := loadConfig()
		if err != nil {
			return err
		}
		host, stop, err := goOnline(ctx, ident, onlineOptions{cfg: cfg, client: true})
		if err != nil {
			return err
		}
		defer stop()
		if ch, _, err = host.Dial(ctx, want, gitp2p.ListChannel); err != nil {
			return err
		}
	}
	defer ch.Close()
	ch.SetReadDeadline(time.Now().Add(30 * time.Second))
	l, err := gitp2p.ReadList(ch)
	if err != nil {
		return err
	}
	for _, e := range l {
		fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", e.Name, e.Access)
	}
	return nil
}

// newGitConnectCmd is git-remote-del's way to reach a peer by id: it runs as
// the helper's replacement process, goes online through the DHT, dials the
// peer's git channel with ICE, answers git's "connect" with the empty line
// and then pipes stdin and stdout through the channel.
func newGitConnectCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:    "connect <peer-id> <repo> git-upload-pack|git-receive-pack",
		Short:  "Used by git-remote-del: connect git to a peer's repository by id",
		Hidden: true,
		Args:   cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := identity.ParseID(args[0])
			if err != nil {
				return err
			}
			repo, service := args[1], args[2]
			if service != gitp2p.UploadPackService && service != gitp2p.ReceivePackService {
				return fmt.Errorf("unknown service %q", service)
			}
			ident, err := linkIdentity(cmd)
			if err != nil {
				return err
			}
			cfg, home, err := loadConfig()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var ch io.ReadWriteCloser
			if c := daemonConn(home); c != nil {
				// A running daemon already has the DHT, the peer's link and
				// its ICE path: no join per git command.
				if ch, err = daemonChannel(c, id, gitp2p.ChannelPrefix+repo); err != nil {
					return err
				}
			} else {
				host, stop, err := goOnline(dctx, ident, onlineOptions{cfg: cfg, client: true})
				if err != nil {
					return err
				}
				defer stop()
				if ch, _, err = host.Dial(dctx, id, gitp2p.ChannelPrefix+repo); err != nil {
					return err
				}
			}
			defer ch.Close()
			if _, err := ch.Write(gitp2p.AppendRequest(nil, service, repo)); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if _, err := io.WriteString(out, "\n"); err != nil {
				return err
			}
			// git -> peer ends when git closes its side; the process exits
			// once the peer has closed the channel.
			go func() {
				io.Copy(ch, cmd.InOrStdin())
				if cw, ok := ch.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			}()
			_, err = io.Copy(out, ch)
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "connect-timeout", 60*time.Second, "how long to try to reach the peer")
	return cmd
}
