package link

import (
	"net"
	"sync"
)

// crypto/tls reads the connection one record at a time: a read(2) of about
// 16 KiB for every record, even when the socket holds megabytes. Under a
// bulk transfer that is 65 000 system calls and as many trips through the
// network poller per GiB; on the development VM, where every system call
// costs a lot, it was a tenth of the receiver's time (one read of up to
// 512 KiB instead: a tenth of the reads, a fifth of the poller waits;
// receiver system time -0.13 to -0.20 s per GiB, wall time -4 to -9 %,
// alternating runs of both orders; docs/notes/core.md).
//
// bulkReader is that buffer, taken only while data arrives in bulk: an idle
// link, or one carrying small messages, holds none and reads straight into
// crypto/tls's buffer as before.

// bulkReadSize is the buffer a bulk read fills at most (1 MiB and 4 MiB
// measured no better).
const bulkReadSize = 512 << 10

var bulkBuffers = sync.Pool{New: func() any { b := make([]byte, bulkReadSize); return &b }}

// bulkReader reads conn for a single reader (crypto/tls reads under its
// own lock). A direct read that fills the caller's buffer means more is
// waiting: the next read goes through a bulk buffer. A bulk read that
// brings less than an eighth of the buffer means the burst is over: once
// that data is handed out the buffer goes back to the pool.
type bulkReader struct {
	conn    net.Conn
	buf     *[]byte // nil outside bulk mode
	r, w    int     // unread data is (*buf)[r:w]
	bulk    bool    // the next read from conn goes into buf
	leaving bool    // release buf once it is drained
	err     error   // came with the buffered data: returned after it
}

func (b *bulkReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.r < b.w {
		n := copy(p, (*b.buf)[b.r:b.w])
		b.r += n
		if b.r == b.w && b.leaving {
			b.release()
		}
		return n, nil
	}
	if b.err != nil {
		err := b.err
		b.err = nil
		return 0, err
	}
	if !b.bulk {
		n, err := b.conn.Read(p)
		b.bulk = n == len(p) && err == nil
		return n, err
	}
	if b.buf == nil {
		b.buf = bulkBuffers.Get().(*[]byte)
	}
	n, err := b.conn.Read(*b.buf)
	if n == 0 {
		b.release()
		return 0, err
	}
	b.r, b.w = 0, n
	b.leaving = n < bulkReadSize/8 || err != nil
	b.err = err // the data first, then the error
	k := copy(p, (*b.buf)[:n])
	b.r = k
	if b.r == b.w && b.leaving {
		b.release()
	}
	return k, nil
}

func (b *bulkReader) release() {
	if b.buf != nil {
		bulkBuffers.Put(b.buf)
	}
	b.buf, b.r, b.w, b.bulk, b.leaving = nil, 0, 0, false, false
}
