package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/ice"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
)

// EnvDHTListen sets the address the device's DHT node binds (default: the
// loopback address when every bootstrap node is on loopback, else all
// interfaces on a random port).
const EnvDHTListen = "DEL_DHT_LISTEN"

// onlineOptions are what going online needs besides the identity.
type onlineOptions struct {
	turnURL string                 // --turn, else $DEL_TURN
	accept  func(identity.ID) bool // who may connect; nil: anyone
	// client: a one-shot node (del send) that other nodes keep out of their
	// routing tables (OpenDHT's client flag).
	client bool
}

// goOnline joins the DHT through the configured bootstrap nodes and returns
// a host that can dial and answer by id. stop takes it offline.
func goOnline(ctx context.Context, ident *identity.Identity, o onlineOptions) (h *peer.Host, stop func(), err error) {
	boot, err := bootstrapAddrs(ctx)
	if err != nil {
		return nil, nil, err
	}
	listen := os.Getenv(EnvDHTListen)
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
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := node.WaitReady(wctx); err != nil {
		node.Close()
		return nil, nil, fmt.Errorf("join the DHT through %v: %w", boot, err)
	}
	icfg := ice.Config{Interfaces: ice.InterfacesFromEnv()}
	for _, s := range splitList(os.Getenv(config.EnvSTUN)) {
		ap, err := resolveAddrPort(ctx, s)
		if err != nil {
			node.Close()
			return nil, nil, fmt.Errorf("%s: %w", config.EnvSTUN, err)
		}
		icfg.STUN = append(icfg.STUN, ap)
	}
	tc, err := turnClient(o.turnURL)
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
	h, err = peer.NewHost(peer.HostConfig{Identity: ident, DHT: node.Node, ICE: icfg, Accept: o.accept})
	if err != nil {
		node.Close()
		return nil, nil, err
	}
	if err := h.Start(wctx); err != nil {
		h.Close()
		node.Close()
		return nil, nil, err
	}
	return h, func() { h.Close(); node.Close() }, nil
}

var errNoBootstrap = errors.New("no DHT bootstrap node is configured: set " + config.EnvBootstrap +
	"=HOST:PORT (`del dht run` starts one), or use a direct address <peer-id>@<host>:<port>")

func bootstrapAddrs(ctx context.Context) ([]netip.AddrPort, error) {
	list := splitList(os.Getenv(config.EnvBootstrap))
	if len(list) == 0 {
		return nil, errNoBootstrap
	}
	var out []netip.AddrPort
	for _, s := range list {
		ap, err := resolveAddrPort(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", config.EnvBootstrap, err)
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

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
