package ice

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
)

// Conn is the selected pair's TCP connection, handed to the application.
// Data is framed per RFC 4571 (RFC 6544 §3); Write splits into frames of
// at most MaxFrame bytes and Read returns payload bytes only. Late STUN
// checks from the peer are answered (Binding success), keepalives (Binding
// indications) are skipped; neither is ever returned as data.
type Conn struct {
	c    net.Conn
	br   *bufio.Reader
	pair Pair

	ufrag, pwd string

	rmu    sync.Mutex // guards remain (reads are serialized)
	remain int        // payload bytes left in the current data frame

	wmu *sync.Mutex // shared with the check phase's writers

	lastWrite atomic.Int64 // unix nanoseconds of the last frame written

	closeOnce sync.Once
	closed    chan struct{}
	kaDone    chan struct{} // closed when the keepalive goroutine ends
	relay     RelayAllocation
	relayWG   *sync.WaitGroup
	closeErr  error
}

// newConn wraps the selected pair's connection; keepalive > 0 starts the
// keepalive goroutine (see keepalive).
func newConn(pc *pconn, p Pair, ufrag, pwd string, relay RelayAllocation, relayWG *sync.WaitGroup, keepalive time.Duration) *Conn {
	c := &Conn{c: pc.c, br: pc.br, pair: p, ufrag: ufrag, pwd: pwd, wmu: &pc.wmu, relay: relay, relayWG: relayWG,
		closed: make(chan struct{}), kaDone: make(chan struct{})}
	c.lastWrite.Store(time.Now().UnixNano())
	if keepalive > 0 {
		go c.keepalive(keepalive)
	} else {
		close(c.kaDone)
	}
	return c
}

// keepalive sends a STUN Binding indication (RFC 8445 §11: no answer
// expected) whenever nothing was written for an interval, so NATs and the
// TURN server keep an idle connection's mapping.
func (c *Conn) keepalive(every time.Duration) {
	defer close(c.kaDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, c.lastWrite.Load())) < every {
				continue
			}
			m, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication), stun.Fingerprint)
			if err != nil {
				return
			}
			if _, err := c.writeFrames(m.Raw); err != nil {
				return
			}
		}
	}
}

// Pair returns the selected candidate pair.
func (c *Conn) Pair() Pair { return c.pair }

// Read reads application payload.
func (c *Conn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for c.remain == 0 {
		kind, m, err := nextFrame(c.br)
		if err != nil {
			return 0, err
		}
		if kind == frameSTUN {
			if m != nil && m.Type == stun.BindingRequest {
				c.answer(m)
			}
			continue
		}
		h, _ := c.br.Peek(2)
		c.remain = int(binary.BigEndian.Uint16(h))
		if _, err := c.br.Discard(2); err != nil {
			return 0, err
		}
	}
	if len(b) > c.remain {
		b = b[:c.remain]
	}
	n, err := c.br.Read(b)
	c.remain -= n
	return n, err
}

// answer replies to a late check so the peer's pair stays valid.
func (c *Conn) answer(m *stun.Message) {
	if _, err := parseCheck(m, c.ufrag, c.pwd); err != nil {
		return
	}
	raw, err := buildSuccess(m.TransactionID, addrPortOf(c.c.RemoteAddr()), c.pwd)
	if err != nil {
		return
	}
	_, _ = c.writeFrames(raw)
}

// Write writes b as one or more frames.
func (c *Conn) Write(b []byte) (int, error) { return c.writeFrames(b) }

func (c *Conn) writeFrames(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	var hdr [2]byte
	for len(b) > 0 {
		chunk := b[:min(len(b), MaxFrame)]
		binary.BigEndian.PutUint16(hdr[:], uint16(len(chunk)))
		bufs := net.Buffers{hdr[:], chunk}
		if _, err := bufs.WriteTo(c.c); err != nil {
			return total, err
		}
		total += len(chunk)
		b = b[len(chunk):]
	}
	c.lastWrite.Store(time.Now().UnixNano())
	return total, nil
}

// Close closes the connection (and the relay allocation under it).
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.closeErr = c.c.Close()
		<-c.kaDone
		if c.relay != nil {
			c.relay.Close()
			c.relayWG.Wait()
		}
	})
	return c.closeErr
}

// CloseWrite half-closes a direct TCP connection (the peer reads EOF).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.c.(interface{ CloseWrite() error }); ok {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return cw.CloseWrite()
	}
	return nil
}

func (c *Conn) LocalAddr() net.Addr                { return c.c.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.c.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.c.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.c.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }
