package ice

import (
	"context"
	"io"
	"net"
	"testing"
)

// BenchmarkConnThroughput: bulk data over the selected pair's Conn
// (RFC 4571 frames) against a plain loopback TCP connection.
func BenchmarkConnThroughput(b *testing.B) {
	const chunk = 256 << 10
	buf := make([]byte, chunk)
	run := func(b *testing.B, w io.Writer, r io.Reader) {
		b.SetBytes(chunk)
		done := make(chan error, 1)
		go func() {
			rb := make([]byte, chunk)
			_, err := io.ReadFull(r, make([]byte, 0))
			for i := 0; i < b.N && err == nil; i++ {
				_, err = io.ReadFull(r, rb)
			}
			done <- err
		}()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := w.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.Run("tcp", func(b *testing.B) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		c1, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c1.Close()
		c2, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		defer c2.Close()
		run(b, c1, c2)
	})
	b.Run("ice", func(b *testing.B) {
		a, _ := NewAgent(Config{Addrs: loopback, Controlling: true})
		z, _ := NewAgent(Config{Addrs: loopback})
		ctx := context.Background()
		da, _ := a.Gather(ctx)
		dz, _ := z.Gather(ctx)
		ch := make(chan *Conn, 1)
		go func() { c, _, _ := z.Connect(ctx, da); ch <- c }()
		ca, _, err := a.Connect(ctx, dz)
		cz := <-ch
		if err != nil || cz == nil {
			b.Fatal(err)
		}
		defer ca.Close()
		defer cz.Close()
		run(b, ca, cz)
	})
}
