package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/del-share/del/internal/testkeys"
)

// countingConn counts the writes that reach the network and their bytes.
type countingConn struct {
	net.Conn
	writes, bytes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	c.bytes.Add(int64(len(p)))
	return c.Conn.Write(p)
}

// A bulk channel write leaves in a few large network writes, not one per
// 16 KiB TLS record, and arrives intact.
func TestBulkWritesBatchRecords(t *testing.T) {
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	a, b := pair(t)
	counted := &countingConn{Conn: a}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sch := make(chan side, 1)
	go func() {
		l, err := Server(ctx, b, Config{Identity: bob})
		sch <- side{l, err}
	}()
	cl, err := Client(ctx, counted, Config{Identity: alice, Expect: bob.ID})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	s := <-sch
	if s.err != nil {
		t.Fatal(s.err)
	}
	defer s.link.Close()

	payload := make([]byte, 16<<20)
	rand.Read(payload)
	got := make(chan []byte, 1)
	go func() {
		_, ch, err := s.link.Accept(ctx)
		if err != nil {
			got <- nil
			return
		}
		data, _ := io.ReadAll(ch)
		ch.Close()
		got <- data
	}()
	ch, err := cl.Open(ctx, "file")
	if err != nil {
		t.Fatal(err)
	}
	w0, b0 := counted.writes.Load(), counted.bytes.Load()
	for off := 0; off < len(payload); off += 128 << 10 {
		if _, err := ch.Write(payload[off : off+128<<10]); err != nil {
			t.Fatal(err)
		}
	}
	ch.(interface{ CloseWrite() error }).CloseWrite()
	data := <-got
	if !bytes.Equal(data, payload) {
		t.Fatalf("received %d bytes, not the %d sent", len(data), len(payload))
	}
	writes, sent := counted.writes.Load()-w0, counted.bytes.Load()-b0
	records := sent / (16 << 10)
	t.Logf("%d bytes in %d network writes (%d TLS records)", sent, writes, records)
	// Unbatched, every record is a write (records ≈ 1024 here); batched,
	// each 128 KiB channel write is one network write, give or take
	// window updates and the close.
	if writes > records/4 {
		t.Fatalf("%d network writes for %d records: records are not batched", writes, records)
	}
}
