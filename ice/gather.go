package ice

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"
)

// RelayAllocation is the small part of a TURN-TCP client (RFC 6062) the
// agent needs for a relayed candidate. The relayed candidate is passive:
// the peer's active candidates connect to Addr, and each such connection,
// once bound (ConnectionAttempt + ConnectionBind), comes out of Accept.
type RelayAllocation interface {
	// Addr is the relayed transport address on the TURN server.
	Addr() netip.AddrPort
	// Mapped is our server-reflexive address as the TURN server saw it
	// (the candidate's raddr/rport); zero if unknown.
	Mapped() netip.AddrPort
	// Permit installs permissions for peers at these IP addresses
	// (CreatePermission, RFC 8656 §9); called with the peer's candidate IPs.
	// An address the server refuses (a private range it will not relay to,
	// another family) must not keep the others from being permitted: pion's
	// server stops at the first refused one. Ask for each alone.
	Permit(ips []netip.Addr) error
	// Accept returns the next peer connection relayed to us.
	Accept() (net.Conn, error)
	// Close releases the allocation; Accept returns an error afterwards.
	Close() error
}

// RelayFunc makes a TURN-TCP allocation. Until the project's TURN client
// exists the tests adapt pion/turn's client to it.
type RelayFunc func(ctx context.Context) (RelayAllocation, error)

// InterfacesFromEnv splits DEL_INTERFACES ("lo,eth0") into interface names;
// nil if unset.
func InterfacesFromEnv() []string {
	v := os.Getenv("DEL_INTERFACES")
	if v == "" {
		return nil
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// localAddrs lists the addresses to gather on: cfg.Addrs if set, else the
// addresses of the allowed interfaces (all up interfaces when none are
// named, loopback only if named). Link-local IPv6 is skipped.
func localAddrs(cfg *Config) ([]netip.Addr, error) {
	if len(cfg.Addrs) > 0 {
		return cfg.Addrs, nil
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	allowed := map[string]bool{}
	for _, n := range cfg.Interfaces {
		allowed[n] = true
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		if len(allowed) > 0 && !allowed[ifc.Name] {
			continue
		}
		if len(allowed) == 0 && ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr().Unmap()
			if ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
				continue
			}
			out = append(out, ip)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("ice: no usable address on interfaces %v", cfg.Interfaces)
	}
	return out, nil
}

// reuseControl sets SO_REUSEADDR and SO_REUSEPORT so an S-O or passive
// candidate's port can both listen and connect out (RFC 6544 §5.2 needs
// outgoing connections from the S-O port; srflx discovery dials from it).
func reuseControl(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

func tcpNet(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// dialFrom opens a TCP connection from local (port 0: ephemeral) to remote.
func dialFrom(ctx context.Context, local, remote netip.AddrPort, reuse bool) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local)}
	if reuse {
		d.Control = reuseControl
	}
	return d.DialContext(ctx, tcpNet(remote.Addr()), remote.String())
}

// stunBinding sends a STUN Binding request over a fresh TCP connection
// from local to server (STUN over TCP is self-delimiting: RFC 8489 §6.2.2,
// no RFC 4571 framing) and returns the XOR-MAPPED-ADDRESS.
func stunBinding(ctx context.Context, local, server netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dialFrom(ctx, local, server, true)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun %s: %w", server, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if _, err := c.Write(m.Raw); err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun %s: write: %w", server, err)
	}
	br := bufio.NewReader(c)
	hdr, err := br.Peek(20)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun %s: read: %w", server, err)
	}
	n := 20 + (int(hdr[2])<<8 | int(hdr[3]))
	raw, err := br.Peek(n)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun %s: read: %w", server, err)
	}
	resp := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := resp.Decode(); err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun %s: %w", server, err)
	}
	if resp.TransactionID != m.TransactionID || resp.Type != stun.BindingSuccess {
		return netip.AddrPort{}, fmt.Errorf("stun %s: unexpected %s", server, resp.Type)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(resp); err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun %s: %w", server, err)
	}
	a, ok := netip.AddrFromSlice(xa.IP)
	if !ok {
		return netip.AddrPort{}, errors.New("stun: bad mapped address")
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(xa.Port)), nil
}

// otherPref ranks a local address for RFC 6544 §4.2's other-pref: IPv6
// above IPv4 (RFC 8421 spirit), earlier addresses above later ones.
func otherPref(a netip.Addr, index int) uint32 {
	p := uint32(4095 - min(index, 4095))
	if a.Is6() {
		p += 4096
	}
	return p
}

// newLocal builds a local candidate.
func newLocal(t CandidateType, tcp TCPType, addr, base netip.AddrPort, server netip.Addr, pref uint32) Candidate {
	c := Candidate{
		Foundation: Foundation(t, tcp, base.Addr(), server),
		Component:  1,
		Priority:   Priority(t, tcp, pref, 1),
		Addr:       addr,
		Type:       t,
		TCPType:    tcp,
		Base:       base,
	}
	if t == ServerReflexive {
		c.Related = base
	}
	return c
}

// dedupe removes redundant candidates (RFC 8445 §5.1.3): same transport
// address, tcptype and base, keeping the higher priority.
func dedupe(cs []Candidate) []Candidate {
	var out []Candidate
next:
	for _, c := range cs {
		for i, o := range out {
			if o.Addr == c.Addr && o.TCPType == c.TCPType && o.Base == c.Base {
				if c.Priority > o.Priority {
					out[i] = c
				}
				continue next
			}
		}
		out = append(out, c)
	}
	return out
}
