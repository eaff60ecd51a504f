package ice

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v5"

	"github.com/del-share/del/internal/testenv"
	delturn "github.com/del-share/del/turn"
)

const (
	turnUser, turnPass, turnRealm = "alice", "secret123", "del.test"
)

// startTURN runs pion/turn v5's server (TURN and STUN over TCP) on ip,
// port 0, until the test ends. It stands in for `del turn` until the
// project's server lands.
func startTURN(t testing.TB, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	key := turn.GenerateAuthKey(turnUser, turnRealm, turnPass)
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: turnRealm,
		AuthHandler: func(ra *turn.RequestAttributes) (string, []byte, bool) {
			return ra.Username, key, ra.Username == turnUser
		},
		ListenerConfigs: []turn.ListenerConfig{{
			Listener:              ln,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{RelayAddress: net.ParseIP(ip), Address: ip},
		}},
		LoggerFactory: logging.NewDefaultLoggerFactory(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// pionRelay adapts pion/turn v5's client to RelayFunc (to be replaced by
// the project's turn client).
func pionRelay(server netip.AddrPort) RelayFunc {
	return func(ctx context.Context) (RelayAllocation, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", server.String())
		if err != nil {
			return nil, err
		}
		cl, err := turn.NewClient(&turn.ClientConfig{
			STUNServerAddr: server.String(), TURNServerAddr: server.String(),
			Conn: turn.NewSTUNConn(conn), Username: turnUser, Password: turnPass, Realm: turnRealm,
			LoggerFactory: logging.NewDefaultLoggerFactory(),
		})
		if err != nil {
			conn.Close()
			return nil, err
		}
		if err := cl.Listen(); err != nil {
			cl.Close()
			conn.Close()
			return nil, err
		}
		alloc, err := cl.AllocateTCPWithContext(ctx)
		if err != nil {
			cl.Close()
			conn.Close()
			return nil, err
		}
		r := &pionAlloc{cl: cl, conn: conn, alloc: alloc, addr: addrPortOf(alloc.Addr())}
		if m, err := cl.SendBindingRequest(); err == nil {
			r.mapped = addrPortOf(m)
		}
		return r, nil
	}
}

type pionAlloc struct {
	cl    *turn.Client
	conn  net.Conn
	alloc interface {
		Accept() (net.Conn, error)
		Addr() net.Addr
		Close() error
	}
	addr   netip.AddrPort
	mapped netip.AddrPort
}

func (p *pionAlloc) Addr() netip.AddrPort   { return p.addr }
func (p *pionAlloc) Mapped() netip.AddrPort { return p.mapped }
func (p *pionAlloc) Permit(ips []netip.Addr) error {
	var first error
	for _, ip := range ips {
		if err := p.cl.CreatePermission(&net.TCPAddr{IP: ip.AsSlice()}); err != nil && first == nil {
			first = err
		}
	}
	return first
}
func (p *pionAlloc) Accept() (net.Conn, error) { return p.alloc.Accept() }
func (p *pionAlloc) Close() error {
	// pion/turn v5.1.3: TCPAllocation.Close does not unblock Accept (its
	// doc says it does); the accept deadline does.
	if d, ok := p.alloc.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(time.Unix(1, 0))
	}
	err := p.alloc.Close()
	p.cl.Close()
	p.conn.Close()
	return err
}

// startDelTURN runs the project's TURN server (what `del turn` runs) on ip,
// port 0, relaying to peers in allowed.
func startDelTURN(t testing.TB, ip string, allowed ...netip.Prefix) netip.AddrPort {
	t.Helper()
	srv, err := delturn.NewServer(delturn.ServerConfig{
		Listen: net.JoinHostPort(ip, "0"), Realm: turnRealm,
		Users:        map[string]string{turnUser: turnPass},
		AllowedPeers: allowed,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Addr()
}

// delRelay uses the project's TURN client.
func delRelay(server netip.AddrPort) RelayFunc {
	return TURNRelay(&delturn.Client{Server: server.String(), Username: turnUser, Password: turnPass,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

var delturnLoopback = delturn.LoopbackPeers

// startCoturn runs coturn's turnserver (a real, independent TURN server)
// on loopback with its own relay port range, and returns its address.
func startCoturn(t testing.TB) netip.AddrPort {
	t.Helper()
	bin := testenv.NeedBinary(t, "turnserver")
	for attempt := 0; attempt < 3; attempt++ {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		var b [1]byte
		_, _ = rand.Read(b[:])
		lo := 30000 + int(b[0])%150*100
		cmd := exec.Command(bin, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
			"--listening-port="+strconv.Itoa(int(addr.Port())), "--lt-cred-mech",
			"--user="+turnUser+":"+turnPass, "--realm="+turnRealm, "--no-tls", "--no-dtls",
			"--allow-loopback-peers", "--no-cli", "--min-port="+strconv.Itoa(lo),
			"--max-port="+strconv.Itoa(lo+99), "--log-file=stdout", "--simple-log")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp4", addr.String(), 200*time.Millisecond)
			if err == nil {
				c.Close()
				t.Cleanup(func() {
					_ = cmd.Process.Signal(os.Interrupt)
					select {
					case <-exited:
					case <-time.After(5 * time.Second):
						_ = cmd.Process.Kill()
						<-exited
					}
				})
				return addr
			}
			select {
			case <-exited:
				deadline = time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
		_ = cmd.Process.Kill()
		<-exited
		t.Logf("turnserver did not come up on %s:\n%s", addr, out.String())
	}
	t.Fatal("turnserver did not start")
	return netip.AddrPort{}
}
