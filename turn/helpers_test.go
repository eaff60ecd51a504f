package turn

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/del-share/del/internal/testenv"
)

const (
	testRealm = "del.test"
	testUser  = "alice"
	testPass  = "secret123"
)

func testLogger() *slog.Logger {
	if os.Getenv("DEL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer runs a del turn server on loopback for the test; mutate may
// change the config first. Loopback peers are allowed unless mutate resets
// AllowedPeers.
func startServer(t testing.TB, mutate func(*ServerConfig)) *Server {
	t.Helper()
	cfg := ServerConfig{
		Listen:       "127.0.0.1:0",
		Realm:        testRealm,
		Users:        map[string]string{testUser: testPass, "bob": "hunter2"},
		AllowedPeers: LoopbackPeers,
		Logger:       testLogger(),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func clientFor(addr string) *Client {
	return &Client{Server: addr, Username: testUser, Password: testPass, Logger: testLogger()}
}

func allocate(t testing.TB, c *Client) *Allocation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := c.Allocate(ctx)
	if err != nil {
		t.Fatalf("Allocate on %s: %v", c.Server, err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCoturn runs coturn's turnserver on a free loopback port with a relay
// port range of its own (command from facts.md) and returns HOST:PORT.
// credArgs replace the default long-term user alice.
func startCoturn(t testing.TB, credArgs ...string) string {
	t.Helper()
	bin := testenv.NeedBinary(t, "turnserver")
	for try := 0; try < 3; try++ {
		port := freePort(t)
		n, _ := rand.Int(rand.Reader, big.NewInt(90))
		minPort := 20000 + int(n.Int64())*100
		ctx, cancel := context.WithCancel(context.Background())
		if len(credArgs) == 0 {
			credArgs = []string{"--lt-cred-mech", "--user=" + testUser + ":" + testPass}
		}
		args := append([]string{"-n", "-v",
			"--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
			"--listening-port=" + strconv.Itoa(port), "--realm=" + testRealm,
			"--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli",
			"--min-port=" + strconv.Itoa(minPort), "--max-port=" + strconv.Itoa(minPort+99),
			"--log-file=stdout", "--simple-log"}, credArgs...)
		cmd := exec.CommandContext(ctx, bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start turnserver: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if waitListening(addr, exited, 10*time.Second) {
			t.Cleanup(func() {
				cancel()
				<-exited
				if t.Failed() {
					t.Logf("turnserver output:\n%s", lastLines(out.String(), 40))
				}
			})
			return addr
		}
		cancel()
		<-exited
		t.Logf("turnserver did not come up on %s:\n%s", addr, lastLines(out.String(), 20))
	}
	t.Fatal("turnserver did not start")
	return ""
}

// waitListening polls addr until it accepts a TCP connection, the process
// exits or the deadline passes.
func waitListening(addr string, exited <-chan struct{}, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

func lastLines(s string, n int) string {
	lines := bytes.Split([]byte(s), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// sendAndCheck writes size random bytes followed by nothing on w's side,
// reads them on r's side and compares SHA-256 sums. The reader confirms
// with one byte before the writer closes (coturn loses the tail otherwise).
func sendAndCheck(t testing.TB, w, r net.Conn, size int) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		h := sha256.New()
		n, err := io.CopyN(h, r, int64(size))
		var res result
		res.n, res.err = n, err
		copy(res.sum[:], h.Sum(nil))
		if err == nil {
			_, res.err = r.Write([]byte{1})
		}
		got <- res
	}()
	w.SetDeadline(time.Now().Add(60 * time.Second))
	r.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := w.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	res := <-got
	if res.err != nil {
		t.Fatalf("read after %d of %d bytes: %v", res.n, size, res.err)
	}
	if res.sum != want {
		t.Fatalf("SHA-256 differs after %d bytes", size)
	}
	var ack [1]byte
	if _, err := io.ReadFull(w, ack[:]); err != nil {
		t.Fatalf("read confirmation: %v", err)
	}
	w.SetDeadline(time.Time{})
	r.SetDeadline(time.Time{})
}

func loopbackListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptOne accepts one connection from ln in the background.
func acceptOne(ln net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

func recvConn(t testing.TB, ch <-chan net.Conn, what string) net.Conn {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatalf("%s: accept failed", what)
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no connection within 10 s", what)
	}
	return nil
}

var loopback = netip.MustParseAddr("127.0.0.1")

func fmtMiB(n int) string { return fmt.Sprintf("%d MiB", n>>20) }
