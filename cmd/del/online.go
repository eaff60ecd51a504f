package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/ice"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
)

// onlineOptions are what going online needs besides the identity.
type onlineOptions struct {
	cfg     *config.Config
	turnURL string                 // --turn, else $DEL_TURN
	accept  func(identity.ID) bool // who may connect; nil: anyone
	// client: a one-shot node (del send) that other nodes keep out of their
	// routing tables (OpenDHT's client flag).
	client bool
}

// goOnline joins the DHT through the configured bootstrap nodes and returns
// a host that can dial and answer by id. stop takes it offline.
func goOnline(ctx context.Context, ident *identity.Identity, o onlineOptions) (h *peer.Host, stop func(), err error) {
	boot, err := bootstrapAddrs(ctx, o.cfg.Bootstrap)
	if err != nil {
		return nil, nil, err
	}
	// The DHT node binds cfg.DHTListen (DEL_DHT_LISTEN); by default loopback
	// when every bootstrap node is on loopback, else all interfaces.
	listen := o.cfg.DHTListen
	if listen == "" {
		listen = ":0"
		if allLoopback(boot) {
			listen = "127.0.0.1:0"
		}
	}
	node, err := dht.ListenUDP(dht.Config{Identity: ident, Client: o.client}, listen)
	if err != nil {
		return nil, nil, err
	}
	node.Bootstrap(boot...)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := node.WaitReady(wctx); err != nil {
		node.Close()
		return nil, nil, fmt.Errorf("join the DHT through %v: %w", boot, err)
	}
	slog.Debug("online: DHT joined", "took", time.Since(start), "addr", node.Addr())
	icfg := ice.Config{Interfaces: o.cfg.Interfaces}
	for _, s := range o.cfg.STUN {
		ap, err := resolveAddrPort(ctx, s)
		if err != nil {
			node.Close()
			return nil, nil, fmt.Errorf("STUN server %s: %w", s, err)
		}
		icfg.STUN = append(icfg.STUN, ap)
	}
	tc, err := turnClient(o.turnURL, o.cfg)
	if err != nil {
		node.Close()
		return nil, nil, err
	}
	if tc != nil {
		icfg.Relay = ice.TURNRelay(tc)
		// A TURN server is also a STUN server.
		if ap, err := resolveAddrPort(ctx, tc.Server); err == nil && len(icfg.STUN) == 0 {
			icfg.STUN = append(icfg.STUN, ap)
		}
	}
	home, err := config.Home()
	if err != nil {
		node.Close()
		return nil, nil, err
	}
	h, err = peer.NewHost(peer.HostConfig{Identity: ident, DHT: node.Node, ICE: icfg, Accept: o.accept,
		SeenFile: filepath.Join(home, "seen-signals")})
	if err != nil {
		node.Close()
		return nil, nil, err
	}
	if err := h.Start(wctx); err != nil {
		h.Close()
		node.Close()
		return nil, nil, err
	}
	slog.Debug("online: certificate published, listening for requests", "took", time.Since(start))
	return h, func() {
		t := time.Now()
		h.Close()
		node.Close()
		slog.Debug("online: offline", "took", time.Since(t))
	}, nil
}

var errNoBootstrap = errors.New("no DHT bootstrap node is configured: set " + config.EnvBootstrap +
	"=HOST:PORT or bootstrap in " + config.FileName + " (`del dht run` starts one), or use a direct address <peer-id>@<host>:<port>")

func bootstrapAddrs(ctx context.Context, list []string) ([]netip.AddrPort, error) {
	if len(list) == 0 {
		return nil, errNoBootstrap
	}
	var out []netip.AddrPort
	for _, s := range list {
		ap, err := resolveAddrPort(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap node %s: %w", s, err)
		}
		out = append(out, ap)
	}
	return out, nil
}

func resolveAddrPort(ctx context.Context, s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %v", host, err)
	}
	return netip.ParseAddrPort(net.JoinHostPort(ips[0].Unmap().String(), port))
}

func allLoopback(aps []netip.AddrPort) bool {
	for _, ap := range aps {
		if !ap.Addr().IsLoopback() {
			return false
		}
	}
	return len(aps) > 0
}

// loadConfig returns the device's configuration (config.toml with the
// environment on top).
func loadConfig() (*config.Config, string, error) {
	home, err := config.Home()
	if err != nil {
		return nil, "", err
	}
	cfg, err := config.Load(home)
	return cfg, home, err
}
