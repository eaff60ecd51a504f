package transfer_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/del-share/del/internal/testkeys"
	"github.com/del-share/del/peer"
	"github.com/del-share/del/transfer"
)

// BenchmarkLinkTransfer sends one file over a pinned link on loopback TCP,
// in one process: TLS 1.3, yamux, the transfer protocol, hashing.
func BenchmarkLinkTransfer(b *testing.B) {
	for _, disk := range []bool{false, true} {
		name := "to-discard"
		if disk {
			name = "to-disk"
		}
		b.Run(name, func(b *testing.B) { benchTransfer(b, disk) })
	}
}

func benchTransfer(b *testing.B, disk bool) {
	const size = 256 << 20
	in := filepath.Join(b.TempDir(), "f")
	f, _ := os.Create(in)
	io.CopyN(f, zeroish{}, size)
	f.Close()
	src, err := transfer.Scan(context.Background(), []string{in}, nil)
	if err != nil {
		b.Fatal(err)
	}
	alice, bob := testkeys.Identity(b, 0), testkeys.Identity(b, 1)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		done := make(chan error, 1)
		out := filepath.Join(b.TempDir(), "out")
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			l, err := peer.Server(context.Background(), c, peer.Config{Identity: bob})
			if err != nil {
				done <- err
				return
			}
			defer l.Close()
			_, ch, err := l.Accept(context.Background())
			if err != nil {
				done <- err
				return
			}
			opts := transfer.ReceiveOptions{Dir: out, Decide: func(context.Context, *transfer.OfferInfo) error { return nil }}
			if !disk {
				opts.Stdout = io.Discard
			}
			_, err = transfer.Receive(context.Background(), ch, opts)
			peer.Finish(ch, 5e9)
			done <- err
		}()
		c, _ := net.Dial("tcp", ln.Addr().String())
		l, err := peer.Client(context.Background(), c, peer.Config{Identity: alice, Expect: bob.ID})
		if err != nil {
			b.Fatal(err)
		}
		ch, _ := l.Open(context.Background(), "file")
		if _, err := transfer.Send(context.Background(), ch, src, transfer.SendOptions{}); err != nil {
			b.Fatal(err)
		}
		ch.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		l.Close()
		ln.Close()
	}
}

type zeroish struct{}

func (zeroish) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i * 31)
	}
	return len(p), nil
}
