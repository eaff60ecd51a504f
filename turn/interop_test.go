package turn

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/del-share/del/internal/testenv"
)

// exerciseClient runs DEL's client against the TURN server at addr: a peer
// connecting to the relayed address, a connection out to a peer, and two
// relayed clients talking to each other; each moves MiBs both ways and
// compares SHA-256 sums on the far side.
func exerciseClient(t *testing.T, addr string) {
	const size = 4 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("peer-connects-in", func(t *testing.T) {
		a := allocate(t, clientFor(addr))
		if err := a.Permit(ctx, loopback); err != nil {
			t.Fatalf("Permit: %v", err)
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := a.Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		peer, err := net.Dial("tcp", a.RelayedAddr().String())
		if err != nil {
			t.Fatalf("peer dial relayed address %v: %v", a.RelayedAddr(), err)
		}
		defer peer.Close()
		in := recvConn(t, accepted, "Accept")
		if in.RemoteAddr().String() != peer.LocalAddr().String() {
			t.Errorf("accepted RemoteAddr %v, want the peer %v", in.RemoteAddr(), peer.LocalAddr())
		}
		if in.LocalAddr().String() != a.RelayedAddr().String() {
			t.Errorf("accepted LocalAddr %v, want the relayed address %v", in.LocalAddr(), a.RelayedAddr())
		}
		// The accepting side speaks first, as TLS servers' peers wait for
		// the handshake: coturn drops early peer data beyond ~64 KB.
		if _, err := in.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		var hi [2]byte
		if _, err := io.ReadFull(peer, hi[:]); err != nil || string(hi[:]) != "hi" {
			t.Fatalf("peer read greeting: %q %v", hi, err)
		}
		sendAndCheck(t, peer, in, size)
		sendAndCheck(t, in, peer, size)
	})

	// A peer that sends a little before the client has bound (32 KiB, under
	// coturn's ~64 KB) loses nothing.
	t.Run("early-peer-data", func(t *testing.T) {
		a := allocate(t, clientFor(addr))
		if err := a.Permit(ctx, loopback); err != nil {
			t.Fatalf("Permit: %v", err)
		}
		peer, err := net.Dial("tcp", a.RelayedAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		early := make([]byte, 32<<10)
		rand.Read(early)
		if _, err := peer.Write(early); err != nil {
			t.Fatal(err)
		}
		in, err := a.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		in.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(early))
		if _, err := io.ReadFull(in, got); err != nil || !bytes.Equal(got, early) {
			t.Fatalf("early peer data: %v, equal %v", err, bytes.Equal(got, early))
		}
	})

	t.Run("dial-out-to-peer", func(t *testing.T) {
		a := allocate(t, clientFor(addr))
		ln := loopbackListener(t)
		peerCh := acceptOne(ln)
		out, err := a.DialPeer(ctx, ln.Addr().String())
		if err != nil {
			t.Fatalf("DialPeer: %v", err)
		}
		defer out.Close()
		peer := recvConn(t, peerCh, "peer accept")
		if got := peer.RemoteAddr().(*net.TCPAddr).AddrPort(); got != a.RelayedAddr() {
			t.Errorf("peer sees the connection from %v, want the relayed address %v (RFC 6062 §5.2)", got, a.RelayedAddr())
		}
		sendAndCheck(t, out, peer, size)
		sendAndCheck(t, peer, out, size)
	})

	t.Run("both-sides-relayed", func(t *testing.T) {
		recv := allocate(t, clientFor(addr))
		send := allocate(t, clientFor(addr))
		if err := recv.Permit(ctx, send.RelayedAddr().Addr()); err != nil {
			t.Fatalf("Permit: %v", err)
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := recv.Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		out, err := send.DialPeer(ctx, recv.RelayedAddr().String())
		if err != nil {
			t.Fatalf("DialPeer through two relays: %v", err)
		}
		defer out.Close()
		in := recvConn(t, accepted, "Accept")
		sendAndCheck(t, in, out, size) // receiver speaks first
		sendAndCheck(t, out, in, 2*size)
	})
}

func TestClientWithDelTurn(t *testing.T) {
	s := startServer(t, nil)
	exerciseClient(t, s.Addr().String())
}

func TestClientWithCoturn(t *testing.T) {
	exerciseClient(t, startCoturn(t))
}

// TestCoturnUclientWithDelTurn runs coturn's own RFC 6062 client against
// del turn: -T makes two TCP allocations and Connects one to the other, then
// relays messages; every one must come back.
func TestCoturnUclientWithDelTurn(t *testing.T) {
	bin := testenv.NeedBinary(t, "turnutils_uclient")
	s := startServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-T", "-u", testUser, "-w", testPass,
		"-n", "20", "-l", "500", "-m", "1", "-p", strconv.Itoa(int(s.Addr().Port())), "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_uclient: %v\n%s", err, lastLines(string(out), 30))
	}
	all := regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`).FindAllSubmatch(out, -1)
	if all == nil {
		t.Fatalf("no message totals in uclient output:\n%s", lastLines(string(out), 30))
	}
	m := all[len(all)-1] // the final totals
	sent, _ := strconv.Atoi(string(m[1]))
	recv, _ := strconv.Atoi(string(m[2]))
	if sent != 40 || recv != 40 {
		t.Errorf("uclient sent %d, received %d messages; want 40 and 40", sent, recv)
	}
	if !regexp.MustCompile(`Total lost packets 0 `).Match(out) {
		t.Errorf("uclient lost packets:\n%s", lastLines(string(out), 15))
	}
	if got := s.Metrics().Snapshot().AllocationsTotal; got < 2 {
		t.Errorf("server made %d allocations, want at least 2", got)
	}
}
