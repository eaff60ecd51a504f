package ice

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
)

// pconn is one TCP connection of a candidate pair during checks. Its reader
// goroutine consumes STUN frames only: the first non-STUN frame (the peer
// already sends application data) is left in br for the returned Conn.
type pconn struct {
	c      net.Conn
	br     *bufio.Reader
	local  Candidate      // the local candidate: the listener's, or the dialing pair's
	remote netip.AddrPort // the peer's transport address as seen on this connection
	pair   *Pair          // nil until a check identifies it (accepted connections)

	wmu      sync.Mutex // serializes frame writes
	stopping atomic.Bool
	stopc    chan struct{} // closed by handOver: the reader must not block
	// trusted: an authenticated check or response was seen on this
	// connection, so the peer may now send application data on it. Before,
	// a non-STUN frame is garbage and is dropped.
	trusted atomic.Bool
	done    chan struct{} // closed when the reader goroutine exits
}

func (pc *pconn) writeFrame(p []byte, timeout time.Duration) error {
	b, err := AppendFrame(make([]byte, 0, 2+len(p)), p)
	if err != nil {
		return err
	}
	pc.wmu.Lock()
	defer pc.wmu.Unlock()
	_ = pc.c.SetWriteDeadline(time.Now().Add(timeout))
	_, err = pc.c.Write(b)
	_ = pc.c.SetWriteDeadline(time.Time{})
	return err
}

// addConn registers a connection and starts its reader.
func (r *run) addConn(c net.Conn, local Candidate, p *Pair) *pconn {
	if r.a.cfg.connHook != nil {
		c = r.a.cfg.connHook(c, p != nil)
	}
	ra := addrPortOf(c.RemoteAddr())
	pc := &pconn{
		c: c, br: bufio.NewReaderSize(c, 2+MaxFrame+16), local: local, pair: p,
		remote: netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port()),
		done:   make(chan struct{}),
		stopc:  make(chan struct{}),
	}
	r.a.mu.Lock()
	if r.a.closed {
		r.a.mu.Unlock()
		c.Close()
		return nil
	}
	r.a.conns[pc] = true
	r.a.mu.Unlock()
	if p != nil {
		r.connOf[p] = pc
	}
	r.a.wg.Add(1)
	go r.read(pc)
	return pc
}

// read delivers STUN frames of pc to the loop until an error, a data frame
// or a stop request.
func (r *run) read(pc *pconn) {
	defer r.a.wg.Done()
	defer close(pc.done)
	for {
		kind, m, err := nextFrame(pc.br)
		if pc.stopping.Load() {
			return
		}
		var ev event
		switch {
		case err != nil:
			ev = event{kind: evClosed, pc: pc, err: err}
		case kind == frameData && !pc.trusted.Load():
			if err := discardFrame(pc.br); err != nil {
				ev = event{kind: evClosed, pc: pc, err: err}
				break
			}
			continue
		case kind == frameData:
			ev = event{kind: evData, pc: pc}
		case m == nil:
			continue // malformed STUN (no FINGERPRINT...): dropped
		default:
			ev = event{kind: evMessage, pc: pc, msg: m}
		}
		if ev.kind == evMessage {
			// The loop acknowledges each message once handled: whether the
			// next non-STUN frame is data (trusted) or garbage depends on it.
			ev.ack = make(chan struct{})
		}
		select {
		case r.events <- ev:
		case <-r.ctx.Done():
			return
		case <-pc.stopc:
			return
		}
		if ev.kind != evMessage {
			return
		}
		select {
		case <-ev.ack:
		case <-r.ctx.Done():
			return
		case <-pc.stopc:
			return
		}
	}
}

type frameKind uint8

const (
	frameSTUN frameKind = iota + 1
	frameData
)

// nextFrame classifies the next frame of br. A STUN frame is consumed and
// returned decoded (nil if it does not decode or has no valid FINGERPRINT);
// a data frame is left unread. An oversized STUN frame is an error.
func nextFrame(br *bufio.Reader) (frameKind, *stun.Message, error) {
	h, err := br.Peek(2)
	if err != nil {
		return 0, nil, err
	}
	n := int(h[0])<<8 | int(h[1])
	if n < 20 {
		return frameData, nil, nil
	}
	hdr, err := br.Peek(2 + 20)
	if err != nil {
		return 0, nil, err
	}
	if !stun.IsMessage(hdr[2:]) || 20+(int(hdr[4])<<8|int(hdr[5])) != n {
		return frameData, nil, nil
	}
	if n > maxCheckFrame {
		return 0, nil, fmt.Errorf("%w: STUN frame of %d bytes", ErrFrameTooLarge, n)
	}
	b, err := peekFrame(br, maxCheckFrame)
	if err != nil {
		return 0, nil, err
	}
	m, derr := decodeSTUN(b)
	if _, err := br.Discard(2 + n); err != nil {
		return 0, nil, err
	}
	if derr != nil {
		return frameSTUN, nil, nil
	}
	return frameSTUN, m, nil
}

// discardFrame skips the next frame of br.
func discardFrame(br *bufio.Reader) error {
	h, err := br.Peek(2)
	if err != nil {
		return err
	}
	_, err = br.Discard(2 + (int(h[0])<<8 | int(h[1])))
	return err
}

// addrPortOf converts a connection's address (a *net.TCPAddr, or whatever a
// relay client returns) to a netip.AddrPort; zero if it cannot.
func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok && ta != nil {
		return ta.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
