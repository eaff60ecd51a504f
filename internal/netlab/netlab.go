// Package netlab builds small NAT topologies out of network namespaces,
// veth pairs and nftables, for integration tests that need real NATs.
// It needs root, `ip` (iproute2) and `nft` (nftables); New skips or fails
// the test through testenv when they are missing.
//
// Layout: a "public" segment 198.51.100.0/24 is a bridge in its own
// namespace, which holds 198.51.100.1 itself (run servers there). Public
// hosts and NAT routers attach to that bridge with one address each. A NAT
// router owns a LAN bridge 10.<lan>.0.1/24; hosts behind it get
// 10.<lan>.0.<n> and a default route through it. Nothing in a lab can reach
// the machine's own networks: the namespaces have no link to them.
//
// NAT kinds (nftables in the router's namespace; see
// ../shared/reference/facts.md for how they behave on this kernel):
//
//	NATDrop       masquerade (endpoint-independent mapping: the source port
//	              is kept); unsolicited inbound packets are dropped
//	NATReset      masquerade; unsolicited inbound TCP is answered with RST
//	              (the kernel's answer: nothing listens on the router)
//	NATSymmetric  masquerade fully-random (a new random port per
//	              destination); unsolicited inbound dropped
//
// Every namespace name carries a per-lab random prefix, so concurrent
// tests never collide; Cleanup deletes every namespace (and with them the
// veths) when the test ends.
package netlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/del-share/del/internal/testenv"
)

// NATKind selects a router's NAT behaviour.
type NATKind int

// NAT kinds; see the package doc.
const (
	NATDrop NATKind = iota + 1
	NATReset
	NATSymmetric
)

func (k NATKind) String() string {
	switch k {
	case NATDrop:
		return "eim-drop"
	case NATReset:
		return "eim-rst"
	case NATSymmetric:
		return "symmetric"
	}
	return fmt.Sprintf("NATKind(%d)", int(k))
}

// Lab is one test's set of namespaces.
type Lab struct {
	t      testing.TB
	prefix string
	ns     []*NS
	pub    *NS
}

// NS is a network namespace of the lab.
type NS struct {
	Name string     // the namespace name (ip netns)
	Addr netip.Addr // its main address (198.51.100.x or 10.x.0.y)
	lab  *Lab
}

// Router is a NAT router namespace with a LAN.
type Router struct {
	*NS
	Kind NATKind
	lan  int
}

// PublicAddr is the public segment's own address (servers run there).
var PublicAddr = netip.MustParseAddr("198.51.100.1")

// New creates the lab and its public segment, or skips/fails t when root,
// ip or nft is missing.
func New(t testing.TB) *Lab {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedBinary(t, "ip")
	testenv.NeedBinary(t, "nft")
	var b [3]byte
	_, _ = rand.Read(b[:])
	l := &Lab{t: t, prefix: "dl" + hex.EncodeToString(b[:])}
	t.Cleanup(l.cleanup)
	l.pub = l.namespace("pub", PublicAddr)
	l.must("ip", "-n", l.pub.Name, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", l.pub.Name, "addr", "add", PublicAddr.String()+"/24", "dev", "br0")
	l.must("ip", "-n", l.pub.Name, "link", "set", "br0", "up")
	return l
}

// Public returns the public segment's namespace (address 198.51.100.1).
func (l *Lab) Public() *NS { return l.pub }

func (l *Lab) namespace(name string, addr netip.Addr) *NS {
	n := &NS{Name: l.prefix + "-" + name, Addr: addr, lab: l}
	l.must("ip", "netns", "add", n.Name)
	l.ns = append(l.ns, n)
	l.must("ip", "-n", n.Name, "link", "set", "lo", "up")
	return n
}

// AddPublicHost attaches a host at 198.51.100.<octet> (2..254).
func (l *Lab) AddPublicHost(name string, octet int) *NS {
	addr := netip.AddrFrom4([4]byte{198, 51, 100, byte(octet)})
	n := l.namespace(name, addr)
	port := fmt.Sprintf("h%d", octet)
	l.must("ip", "-n", n.Name, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", l.pub.Name)
	l.must("ip", "-n", l.pub.Name, "link", "set", port, "master", "br0", "up")
	l.must("ip", "-n", n.Name, "addr", "add", addr.String()+"/24", "dev", "eth0")
	l.must("ip", "-n", n.Name, "link", "set", "eth0", "up")
	return n
}

// AddNAT adds a NAT router with WAN address 198.51.100.<octet> and LAN
// 10.<lan>.0.0/24.
func (l *Lab) AddNAT(name string, octet, lan int, kind NATKind) *Router {
	addr := netip.AddrFrom4([4]byte{198, 51, 100, byte(octet)})
	r := &Router{NS: l.namespace(name, addr), Kind: kind, lan: lan}
	port := fmt.Sprintf("r%d", octet)
	l.must("ip", "-n", r.Name, "link", "add", "wan", "type", "veth", "peer", "name", port, "netns", l.pub.Name)
	l.must("ip", "-n", l.pub.Name, "link", "set", port, "master", "br0", "up")
	l.must("ip", "-n", r.Name, "addr", "add", addr.String()+"/24", "dev", "wan")
	l.must("ip", "-n", r.Name, "link", "set", "wan", "up")
	l.must("ip", "-n", r.Name, "link", "add", "lan", "type", "bridge")
	l.must("ip", "-n", r.Name, "addr", "add", fmt.Sprintf("10.%d.0.1/24", lan), "dev", "lan")
	l.must("ip", "-n", r.Name, "link", "set", "lan", "up")
	l.must("ip", "netns", "exec", r.Name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.mustStdin(nftRules(kind), "ip", "netns", "exec", r.Name, "nft", "-f", "-")
	return r
}

// nftRules is the router's ruleset for a NAT kind.
func nftRules(kind NATKind) string {
	random := ""
	if kind == NATSymmetric {
		random = " fully-random"
	}
	dropInput := `iifname "wan" drop`
	if kind == NATReset {
		dropInput = "" // nothing listens on the router: the kernel answers RST
	}
	return fmt.Sprintf(`table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" masquerade%s
	}
}
table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state established,related accept
		%s
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
}
`, random, dropInput)
}

// AddHost attaches a host to the router's LAN at 10.<lan>.0.<octet>
// (2..254), with a default route through the router.
func (r *Router) AddHost(name string, octet int) *NS {
	l := r.lab
	addr := netip.AddrFrom4([4]byte{10, byte(r.lan), 0, byte(octet)})
	n := l.namespace(name, addr)
	port := fmt.Sprintf("d%d", octet)
	l.must("ip", "-n", n.Name, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", r.Name)
	l.must("ip", "-n", r.Name, "link", "set", port, "master", "lan", "up")
	l.must("ip", "-n", n.Name, "addr", "add", addr.String()+"/24", "dev", "eth0")
	l.must("ip", "-n", n.Name, "link", "set", "eth0", "up")
	l.must("ip", "-n", n.Name, "route", "add", "default", "via", fmt.Sprintf("10.%d.0.1", r.lan))
	return n
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Nft lists the router's ruleset (for failure messages).
func (r *Router) Nft() string {
	out, _ := exec.Command("ip", "netns", "exec", r.Name, "nft", "list", "ruleset").CombinedOutput()
	return string(out)
}

// Namespaces lists the lab's namespace names.
func (l *Lab) Namespaces() []string {
	var out []string
	for _, n := range l.ns {
		out = append(out, n.Name)
	}
	return out
}

func (l *Lab) must(args ...string) {
	l.t.Helper()
	l.mustStdin("", args...)
}

func (l *Lab) mustStdin(stdin string, args ...string) {
	l.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		l.t.Fatalf("netlab: %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

func (l *Lab) cleanup() {
	for i := len(l.ns) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", l.ns[i].Name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "netlab: delete %s: %v %s\n", l.ns[i].Name, err, out)
		}
	}
}
