package link

import (
	"context"
	"io"
	"testing"

	"github.com/del-share/del/internal/testkeys"
)

// BenchmarkChannelThroughput moves data over one channel of a pinned link on
// loopback TCP: TLS 1.3 + yamux, no disk.
func BenchmarkChannelThroughput(b *testing.B) {
	alice, bob := testkeys.Identity(b, 0), testkeys.Identity(b, 1)
	c, s := connect(&testing.T{}, Config{Identity: alice, Expect: bob.ID}, Config{Identity: bob})
	if c.err != nil || s.err != nil {
		b.Fatal(c.err, s.err)
	}
	ctx := context.Background()
	done := make(chan int64)
	go func() {
		_, ch, err := s.link.Accept(ctx)
		if err != nil {
			b.Error(err)
			close(done)
			return
		}
		n, _ := io.CopyBuffer(io.Discard, ch, make([]byte, 256<<10))
		done <- n
	}()
	ch, err := c.link.Open(ctx, "file")
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := ch.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	ch.(interface{ CloseWrite() error }).CloseWrite()
	<-done
}
