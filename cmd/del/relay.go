package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/turn"
)

// turnClient returns the TURN client for a --turn flag value, or for the
// configured one ($DEL_TURN, config.toml) when the flag is empty; nil when
// neither is set.
func turnClient(flag string, cfg *config.Config) (*turn.Client, error) {
	u := flag
	if u == "" {
		u = cfg.TURN
	}
	if u == "" {
		return nil, nil
	}
	return turn.ParseURL(u)
}

// relayListen allocates a TCP relay (RFC 6062) and permits peers to reach
// it: the TURN server's own address (a sender that goes out through the same
// server arrives from there) and the given extra IPs.
func relayListen(ctx context.Context, c *turn.Client, permit []string) (*turn.Allocation, error) {
	a, err := c.Allocate(ctx)
	if err != nil {
		return nil, fmt.Errorf("TURN allocation on %s: %w", c.Server, err)
	}
	ips, err := resolveIPs(ctx, append([]string{hostOnly(c.Server), a.RelayedAddr().Addr().String()}, permit...))
	if err != nil {
		a.Close()
		return nil, err
	}
	if err := a.Permit(ctx, ips...); err != nil {
		a.Close()
		return nil, fmt.Errorf("TURN permission: %w", err)
	}
	return a, nil
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func resolveIPs(ctx context.Context, hosts []string) ([]netip.Addr, error) {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		var addrs []netip.Addr
		if a, err := netip.ParseAddr(h); err == nil {
			addrs = []netip.Addr{a}
		} else {
			res, err := net.DefaultResolver.LookupNetIP(ctx, "ip", h)
			if err != nil {
				return nil, fmt.Errorf("permit %s: %w", h, err)
			}
			addrs = res
		}
		for _, a := range addrs {
			if a = a.Unmap(); !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// acceptor merges several listeners (a direct TCP one, a relayed one) into
// one stream of connections, each tagged with how it arrived.
type acceptor struct {
	conns chan arrival
	errs  chan error
	wg    sync.WaitGroup
}

type arrival struct {
	conn net.Conn
	via  string // "direct" or "relay <server>"
}

func newAcceptor() *acceptor {
	return &acceptor{conns: make(chan arrival), errs: make(chan error, 4)}
}

func (a *acceptor) add(ctx context.Context, ln net.Listener, via string) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				a.errs <- fmt.Errorf("%s listener: %w", via, err)
				return
			}
			select {
			case a.conns <- arrival{c, via}:
			case <-ctx.Done():
				c.Close()
				return
			}
		}
	}()
}

// next returns the next connection, or the first listener error.
func (a *acceptor) next(ctx context.Context) (arrival, error) {
	select {
	case c := <-a.conns:
		return c, nil
	case err := <-a.errs:
		return arrival{}, err
	case <-ctx.Done():
		return arrival{}, ctx.Err()
	}
}

// wait waits for the accept loops, whose listeners the caller has closed.
func (a *acceptor) wait() { a.wg.Wait() }

var errNoPath = errors.New("no path to the peer")

// directTimeout bounds a direct attempt when a relay could take over.
const directTimeout = 5 * time.Second

// dialPeer reaches addr directly or, when that fails (mode "auto") or is not
// wanted (mode "always"), through the sender's own TURN allocation. It
// returns the connection, how it went, and a func to call once the
// connection is no longer used (it releases the allocation).
func dialPeer(ctx context.Context, addr string, tc *turn.Client, mode string) (net.Conn, string, func(), error) {
	nothing := func() {}
	var directErr error
	if mode != "always" {
		dctx := ctx
		if tc != nil && mode == "auto" {
			// Leave time for the relay if the direct path is silently dropped.
			var cancel context.CancelFunc
			dctx, cancel = context.WithTimeout(ctx, directTimeout)
			defer cancel()
		}
		var d net.Dialer
		c, err := d.DialContext(dctx, "tcp", addr)
		if err == nil {
			return c, "a direct connection", nothing, nil
		}
		directErr = err
		if tc == nil || mode == "never" {
			return nil, "", nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
	}
	if tc == nil {
		return nil, "", nil, errors.New("--relay always needs a TURN server (--turn or DEL_TURN)")
	}
	a, err := tc.Allocate(ctx)
	if err != nil {
		return nil, "", nil, fmt.Errorf("%w: direct: %v; TURN allocation on %s: %v", errNoPath, directErr, tc.Server, err)
	}
	c, err := a.DialPeer(ctx, addr)
	if err != nil {
		a.Close()
		return nil, "", nil, fmt.Errorf("%w: direct: %v; through TURN %s: %v", errNoPath, directErr, tc.Server, err)
	}
	return c, fmt.Sprintf("a relayed link (TURN %s, relayed address %s)", tc.Server, a.RelayedAddr()), func() { a.Close() }, nil
}
