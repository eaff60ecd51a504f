package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/del-share/del/turn"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newTurnCmd) }

func newTurnCmd() *cobra.Command {
	var (
		listen, tlsListen, certFile, keyFile string
		users                                []string
		usersFile, realm, secret             string
		relayIP, relayBind                   string
		minPort, maxPort, quota              int
		allowLoopback                        bool
		allowPeers, denyPeers                []string
		bandwidth                            string
		lifetime                             time.Duration
		metricsAddr                          string
	)
	cmd := &cobra.Command{
		Use:   "turn",
		Short: "Run a TURN relay server (RFC 8656 with TCP allocations, RFC 6062; also STUN)",
		Long: `Run a TURN relay server with TCP (RFC 6062) and UDP allocations, which also
answers STUN Binding requests. It listens on TCP and UDP on the same port, and on
TLS with --tls-listen. Peers in loopback, private, link-local, unique-local,
multicast and unspecified ranges are refused unless allowed with --allow-peer
(or --allow-loopback-peers). Prints "turn listening HOST:PORT" once ready;
SIGTERM or SIGINT releases every allocation and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := turn.ServerConfig{
				Listen: listen, TLSListen: tlsListen, Realm: realm, SharedSecret: secret,
				MinPort: minPort, MaxPort: maxPort, UserQuota: quota,
				AllocationLifetime: lifetime, Logger: slog.Default(),
				Users: map[string]string{},
			}
			if secret == "" {
				cfg.SharedSecret = os.Getenv("DEL_TURN_SECRET")
			}
			if usersFile != "" {
				if err := readUsersFile(usersFile, cfg.Users); err != nil {
					return err
				}
			}
			for _, u := range users {
				name, pass, ok := strings.Cut(u, ":")
				if !ok || name == "" {
					return fmt.Errorf("--user %q: want NAME:PASSWORD", u)
				}
				cfg.Users[name] = pass
			}
			var err error
			if cfg.RelayIP, err = optAddr("--relay-ip", relayIP); err != nil {
				return err
			}
			if cfg.RelayBind, err = optAddr("--relay-bind", relayBind); err != nil {
				return err
			}
			if cfg.BandwidthLimit, err = parseRate(bandwidth); err != nil {
				return fmt.Errorf("--bandwidth: %w", err)
			}
			if allowLoopback {
				cfg.AllowedPeers = append(cfg.AllowedPeers, turn.LoopbackPeers...)
			}
			if cfg.AllowedPeers, err = appendPrefixes(cfg.AllowedPeers, "--allow-peer", allowPeers); err != nil {
				return err
			}
			if len(denyPeers) > 0 {
				cfg.DeniedPeers = append([]netip.Prefix(nil), turn.DefaultDeniedPeers...)
				if cfg.DeniedPeers, err = appendPrefixes(cfg.DeniedPeers, "--deny-peer", denyPeers); err != nil {
					return err
				}
			}
			if tlsListen != "" {
				if certFile == "" || keyFile == "" {
					return errors.New("--tls-listen needs --cert and --key")
				}
				cert, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return fmt.Errorf("load TLS certificate: %w", err)
				}
				cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			}
			return runTurn(cmd, cfg, metricsAddr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "0.0.0.0:3478", "TCP and UDP listening address HOST:PORT")
	f.StringVar(&tlsListen, "tls-listen", "", "TURN over TLS listening address HOST:PORT (needs --cert, --key)")
	f.StringVar(&certFile, "cert", "", "TLS certificate chain, PEM")
	f.StringVar(&keyFile, "key", "", "TLS private key, PEM")
	f.StringArrayVar(&users, "user", nil, "long-term credential NAME:PASSWORD (repeatable)")
	f.StringVar(&usersFile, "users-file", "", "file of NAME:PASSWORD lines (# comments)")
	f.StringVar(&realm, "realm", "", "realm of the long-term credentials (required)")
	f.StringVar(&secret, "auth-secret", "", "TURN REST API shared secret, as coturn's --static-auth-secret (or DEL_TURN_SECRET)")
	f.StringVar(&relayIP, "relay-ip", "", "relayed address given to clients (default: the --listen host)")
	f.StringVar(&relayBind, "relay-bind", "", "address relay sockets bind to (default: --relay-ip)")
	f.IntVar(&minPort, "min-port", 0, "lowest relay port (with --max-port; default: kernel-chosen ports)")
	f.IntVar(&maxPort, "max-port", 0, "highest relay port")
	f.BoolVar(&allowLoopback, "allow-loopback-peers", false, "relay to 127.0.0.0/8 and ::1 (tests, demos)")
	f.StringArrayVar(&allowPeers, "allow-peer", nil, "relay to this CIDR even if denied (repeatable)")
	f.StringArrayVar(&denyPeers, "deny-peer", nil, "refuse this CIDR too, besides the default ranges (repeatable)")
	f.IntVar(&quota, "user-quota", 0, "concurrent allocations per user (0: no limit)")
	f.StringVar(&bandwidth, "bandwidth", "0", "per-allocation limit in bytes/s, suffixes k, M, G (powers of 1000; 0: none)")
	f.DurationVar(&lifetime, "lifetime", 0, "allocation lifetime granted when a client asks for none or more than 1h (default 10m)")
	f.StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics")
	cmd.MarkFlagRequired("realm")
	return cmd
}

func runTurn(cmd *cobra.Command, cfg turn.ServerConfig, metricsAddr string) error {
	srv, err := turn.NewServer(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	out := cmd.OutOrStdout()
	var hs *http.Server
	if metricsAddr != "" {
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			srv.Metrics().WritePrometheus(w)
		})
		hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		fmt.Fprintf(out, "turn metrics http://%s/metrics\n", ln.Addr())
	}
	if srv.TLSAddr().IsValid() {
		fmt.Fprintf(out, "turn tls listening %s\n", srv.TLSAddr())
	}
	if srv.Addr().IsValid() {
		fmt.Fprintf(out, "turn listening %s\n", srv.Addr())
	}
	<-cmd.Context().Done()
	slog.Info("turn: shutting down", "allocations", srv.Allocations())
	if hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		hs.Shutdown(ctx)
		cancel()
	}
	return srv.Close()
}

func readUsersFile(path string, users map[string]string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		name, pass, ok := strings.Cut(s, ":")
		if !ok || name == "" {
			return fmt.Errorf("%s:%d: want NAME:PASSWORD", path, line)
		}
		users[name] = pass
	}
	return sc.Err()
}

func optAddr(flag, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("%s: %w", flag, err)
	}
	return a, nil
}

func appendPrefixes(to []netip.Prefix, flag string, list []string) ([]netip.Prefix, error) {
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%s %q: %w", flag, s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		to = append(to, p.Masked())
	}
	return to, nil
}

// parseRate reads "1500", "10k", "25M", "1G" (decimal multiples) as bytes/s.
func parseRate(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "k"), strings.HasSuffix(s, "K"):
		mult, s = 1e3, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1e6, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mult, s = 1e9, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad rate %q", s)
	}
	return n * mult, nil
}
