package link

import (
	"crypto/tls"
	"net"
	"sync"
)

// crypto/tls writes every record (at most 16 KiB of data) with its own
// Write on the underlying connection. For bulk data that is four times more
// TCP segments and receiver wake-ups than the connection needs: on loopback,
// where the kernel's TCP work is most of the cost of a copy, it is the
// largest share of CPU time. The two types below gather the records of one
// application Write and hand them to the kernel in a single write.

// recordBatcher sits between crypto/tls and the network connection. While
// batching, writes are appended to buf; flush sends them in one write.
// Writes made while not batching (handshake flights, alerts, post-handshake
// messages) go straight through, after whatever is pending.
type recordBatcher struct {
	net.Conn

	mu       sync.Mutex
	batching bool
	buf      []byte
	err      error // sticky: a failed flush fails every later write

	rd bulkReader // the read side: see readbuf.go
}

func newRecordBatcher(c net.Conn) *recordBatcher {
	return &recordBatcher{Conn: c, rd: bulkReader{conn: c}}
}

func (b *recordBatcher) Read(p []byte) (int, error) { return b.rd.Read(p) }

// maxBatch bounds the batch buffer; a larger application write is sent in
// several batches of about this size.
const maxBatch = 512 << 10

func (b *recordBatcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if !b.batching {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= maxBatch {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *recordBatcher) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	if err != nil {
		b.err = err
	}
	return err
}

func (b *recordBatcher) start() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

func (b *recordBatcher) finish() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	err := b.flushLocked()
	if cap(b.buf) > maxBatch+64<<10 {
		b.buf = nil // do not keep an outsized buffer after a burst
	}
	return err
}

// batchedTLS is the TLS connection the multiplexer writes to: each of its
// writes (the multiplexer already coalesces frames into large writes) leaves
// as one batch of records. Writes are serialised by the multiplexer's single
// send loop; the mutex keeps the batch boundaries right if anything else
// ever writes concurrently.
type batchedTLS struct {
	*tls.Conn
	raw *recordBatcher
	wmu sync.Mutex
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(p) < 16<<10 {
		return c.Conn.Write(p) // one record: nothing to gather
	}
	c.raw.start()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.finish(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}
