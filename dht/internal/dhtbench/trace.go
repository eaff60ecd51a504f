package main

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
)

// tracedClient is a benchmark client: a dht.Node on its own UDP socket whose
// transport notes when each of its queries went out and when the answer
// came, so the benchmark can show how fast the network's nodes answer the
// requests of real operations (not only pings).
type tracedClient struct {
	*dht.Node
	conn *net.UDPConn
	stop chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex
	sent map[uint32]time.Time
	rtt  []time.Duration
	on   bool
}

type tracedTransport struct{ c *tracedClient }

func (t tracedTransport) Send(b []byte, to netip.AddrPort) error {
	if m, err := wire.Decode(b); err == nil && m.Kind == wire.KindQuery {
		t.c.mu.Lock()
		if _, ok := t.c.sent[m.TID]; !ok {
			t.c.sent[m.TID] = time.Now()
		}
		t.c.mu.Unlock()
	}
	_, err := t.c.conn.WriteToUDPAddrPort(b, to)
	return err
}

func newTracedClient(cfg dht.Config) (*tracedClient, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	conn.SetReadBuffer(1 << 20)
	c := &tracedClient{conn: conn, stop: make(chan struct{}), sent: map[uint32]time.Time{}}
	c.Node, err = dht.New(cfg, tracedTransport{c})
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.wg.Add(2)
	go c.readLoop()
	go c.tickLoop()
	return c, nil
}

func (c *tracedClient) readLoop() {
	defer c.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := time.Now()
		if m, err := wire.Decode(buf[:n]); err == nil && (m.Kind == wire.KindReply || m.Kind == wire.KindError) {
			c.mu.Lock()
			if t, ok := c.sent[m.TID]; ok {
				delete(c.sent, m.TID)
				if c.on {
					c.rtt = append(c.rtt, now.Sub(t))
				}
			}
			c.mu.Unlock()
		}
		c.Node.HandlePacket(buf[:n], from)
	}
}

func (c *tracedClient) tickLoop() {
	defer c.wg.Done()
	t := time.NewTimer(c.Node.NextTick())
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		case <-c.Node.Wake():
			t.Stop()
		}
		c.Node.Tick()
		t.Reset(c.Node.NextTick())
	}
}

// trace starts or stops recording answer times.
func (c *tracedClient) trace(on bool) {
	c.mu.Lock()
	c.on = on
	c.mu.Unlock()
}

func (c *tracedClient) rtts() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.rtt...)
}

func (c *tracedClient) Close() {
	c.Node.Close()
	close(c.stop)
	c.conn.Close()
	c.wg.Wait()
}
