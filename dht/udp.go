package dht

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// UDPNode is a Node that owns a UDP socket: one goroutine reads datagrams,
// one runs the timers (sleeping until the next one is due, at most 1 s);
// Close stops both and waits for them.
type UDPNode struct {
	*Node
	conn *net.UDPConn
	raw  *rawUDP
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

type udpTransport struct {
	conn *net.UDPConn
	raw  *rawUDP // nil: the net package does the I/O
}

func (t udpTransport) Send(b []byte, to netip.AddrPort) error {
	if t.raw != nil {
		if err, ok := t.raw.send(b, to); ok {
			return err
		}
	}
	_, err := t.conn.WriteToUDPAddrPort(b, to)
	return err
}

// ListenUDP binds addr ("127.0.0.1:0" in tests) and runs a node on it.
func ListenUDP(cfg Config, addr string) (*UDPNode, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dht listen %s: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("dht listen %s: %w", addr, err)
	}
	_ = conn.SetReadBuffer(1 << 20)
	raw := newRawUDP(conn)
	n, err := New(cfg, udpTransport{conn, raw})
	if err != nil {
		conn.Close()
		return nil, err
	}
	u := &UDPNode{Node: n, conn: conn, raw: raw, stop: make(chan struct{})}
	u.wg.Add(2)
	go u.readLoop()
	go u.tickLoop()
	return u, nil
}

// Addr is the bound address.
func (u *UDPNode) Addr() netip.AddrPort {
	return normAddr(u.conn.LocalAddr().(*net.UDPAddr).AddrPort())
}

func (u *UDPNode) readLoop() {
	defer u.wg.Done()
	buf := make([]byte, 64<<10)
	if u.raw != nil {
		stopped := func() bool {
			select {
			case <-u.stop:
				return true
			default:
				return false
			}
		}
		u.raw.readLoop(buf, stopped, u.Node.HandlePacket)
		return
	}
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		u.Node.HandlePacket(buf[:n], from)
	}
}

func (u *UDPNode) tickLoop() {
	defer u.wg.Done()
	if tt := newTickTimer(); tt != nil {
		u.tickLoopTimerfd(tt)
		return
	}
	t := time.NewTimer(u.Node.NextTick())
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			return
		case <-t.C:
		case <-u.Node.Wake():
			t.Stop()
		}
		u.Node.Tick()
		t.Reset(u.Node.NextTick())
	}
}

// tickLoopTimerfd is tickLoop on a timerfd (Linux): a goroutine that
// waits for Wake makes the timer fire at once.
func (u *UDPNode) tickLoopTimerfd(tt *tickTimer) {
	// woken says a wake came since the last tick began, so that arming
	// the timer after the tick does not undo it.
	var mu sync.Mutex
	woken := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-u.stop:
				tt.close()
				return
			case <-u.Node.Wake():
				mu.Lock()
				woken = true
				tt.set(0)
				mu.Unlock()
			}
		}
	}()
	defer func() { <-done }()
	tt.set(u.Node.NextTick())
	for tt.wait() == nil {
		mu.Lock()
		woken = false
		mu.Unlock()
		u.Node.Tick()
		d := u.Node.NextTick()
		mu.Lock()
		if woken {
			d = 0
		}
		tt.set(d)
		mu.Unlock()
	}
}

// Close stops the node and closes the socket. It is safe to call twice.
func (u *UDPNode) Close() error {
	u.once.Do(func() {
		u.Node.Close()
		close(u.stop)
		u.conn.Close()
		u.wg.Wait()
	})
	return nil
}
