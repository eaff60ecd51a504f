package ice

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/del-share/del/turn"
)

// ApplyEnv applies the CLI contract's environment overrides (DESIGN.md) to
// cfg:
//
//	DEL_INTERFACES=lo,eth0           gather only on these interfaces
//	DEL_STUN=HOST:PORT[,HOST:PORT]   STUN servers (Binding over TCP)
//	DEL_TURN=turn://USER:PASS@HOST:PORT  relayed candidate; the TURN server
//	                                 also serves as a STUN server
//
// Unset variables leave cfg as it is. Host names are resolved once, here:
// nothing is contacted unless the user configured it.
func ApplyEnv(ctx context.Context, cfg *Config) error {
	if names := InterfacesFromEnv(); names != nil {
		cfg.Interfaces = names
	}
	if v := os.Getenv("DEL_STUN"); v != "" {
		for _, s := range strings.Split(v, ",") {
			ap, err := resolveHostPort(ctx, strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("ice: DEL_STUN: %w", err)
			}
			cfg.STUN = append(cfg.STUN, ap)
		}
	}
	if v := os.Getenv("DEL_TURN"); v != "" {
		c, err := turn.ParseURL(v)
		if err != nil {
			return fmt.Errorf("ice: DEL_TURN: %w", err)
		}
		cfg.Relay = TURNRelay(c)
		if c.TLSConfig == nil { // STUN here is plain TCP
			ap, err := resolveHostPort(ctx, c.Server)
			if err != nil {
				return fmt.Errorf("ice: DEL_TURN: %w", err)
			}
			cfg.STUN = append(cfg.STUN, ap)
		}
	}
	return nil
}

func resolveHostPort(ctx context.Context, s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := net.DefaultResolver.LookupPort(ctx, "tcp", port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(p)), nil
}
