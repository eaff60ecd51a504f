package link

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/internal/testkeys"
)

// pair returns two ends of a loopback TCP connection.
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type side struct {
	link *Link
	err  error
}

func connect(t *testing.T, client, server Config) (side, side) {
	t.Helper()
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sch := make(chan side, 1)
	go func() {
		l, err := Server(ctx, b, server)
		sch <- side{l, err}
	}()
	l, err := Client(ctx, a, client)
	c := side{l, err}
	s := <-sch
	for _, x := range []side{c, s} {
		if x.link != nil {
			t.Cleanup(func() { x.link.Close() })
		}
	}
	return c, s
}

func TestLinkChannels(t *testing.T) {
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	c, s := connect(t, Config{Identity: alice, Expect: bob.ID}, Config{Identity: bob})
	if c.err != nil || s.err != nil {
		t.Fatalf("client %v, server %v", c.err, s.err)
	}
	if c.link.Remote != bob.ID || s.link.Remote != alice.ID {
		t.Fatalf("remote ids: client sees %s, server sees %s", c.link.Remote, s.link.Remote)
	}
	if v := c.link.ConnectionState().Version; v != 0x0304 {
		t.Fatalf("TLS version %x, want 1.3", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Two channels at once, each echoing on its own.
	errs := make(chan error, 2)
	go func() {
		for range 2 {
			name, ch, err := s.link.Accept(ctx)
			if err != nil {
				errs <- err
				return
			}
			go func() {
				data, err := io.ReadAll(ch)
				if err == nil {
					_, err = ch.Write(append([]byte(name+":"), data...))
				}
				ch.Close()
				errs <- err
			}()
		}
	}()
	for _, name := range []string{"file", "git/my-repo"} {
		ch, err := c.link.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		ch.Write([]byte("ping"))
		ch.(interface{ CloseWrite() error }).CloseWrite()
		got, err := io.ReadAll(ch)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != name+":ping" {
			t.Fatalf("channel %s echoed %q", name, got)
		}
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestWrongPeerRefusedBeforeData(t *testing.T) {
	alice, bob, mallory := testkeys.Identity(t, 0), testkeys.Identity(t, 1), testkeys.Identity(t, 2)
	// Alice expects Bob, Mallory answers.
	c, s := connect(t, Config{Identity: alice, Expect: bob.ID}, Config{Identity: mallory})
	var wp *WrongPeerError
	if !errors.As(c.err, &wp) || !errors.Is(c.err, ErrWrongPeer) {
		t.Fatalf("client err %v, want WrongPeerError", c.err)
	}
	if wp.Want != bob.ID || wp.Got != mallory.ID {
		t.Fatalf("error names want %s got %s", wp.Want, wp.Got)
	}
	if msg := c.err.Error(); !strings.Contains(msg, bob.ID.String()) || !strings.Contains(msg, mallory.ID.String()) {
		t.Fatalf("error %q does not name both ids", msg)
	}
	// Mallory never gets a link, so no channel and no byte.
	if s.err == nil {
		t.Fatal("server side got a link although the client refused it")
	}

	// The server pins too: Bob accepts only Alice, Mallory dials.
	c, s = connect(t, Config{Identity: mallory, Expect: bob.ID}, Config{Identity: bob, Expect: alice.ID})
	if !errors.As(s.err, &wp) || wp.Got != mallory.ID || wp.Want != alice.ID {
		t.Fatalf("server err %v, want WrongPeerError naming mallory", s.err)
	}
	if c.err == nil {
		t.Fatal("client got a link although the server refused it")
	}
}

func TestNoCertificateRefused(t *testing.T) {
	bob := testkeys.Identity(t, 1)
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := Server(ctx, b, Config{Identity: bob})
		done <- err
	}()
	// A plain TLS client with no certificate.
	go func() {
		defer a.Close()
		tc := tlsClientNoCert(a)
		tc.HandshakeContext(ctx)
		io.Copy(io.Discard, tc)
	}()
	if err := <-done; err == nil {
		t.Fatal("a client without a certificate got a link")
	}
}
