package ice

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// delayConn delays every write by one-way latency d, in order: with the
// TCP connect delayed by 2d as well, a pair behaves as if the path had a
// round-trip time of 2d (the kernel here has no netem).
type delayConn struct {
	net.Conn
	d    time.Duration
	mu   sync.Mutex // guards closed and sends on ch
	ch   chan delayed
	done chan struct{}
	once sync.Once
	shut bool
}

type delayed struct {
	at time.Time
	b  []byte
}

func newDelayConn(c net.Conn, d time.Duration) *delayConn {
	dc := &delayConn{Conn: c, d: d, ch: make(chan delayed, 1024), done: make(chan struct{})}
	go func() {
		defer close(dc.done)
		for it := range dc.ch {
			time.Sleep(time.Until(it.at))
			if _, err := dc.Conn.Write(it.b); err != nil {
				for range dc.ch {
				}
				return
			}
		}
	}()
	return dc
}

func (c *delayConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shut {
		return 0, net.ErrClosed
	}
	c.ch <- delayed{time.Now().Add(c.d), append([]byte(nil), b...)}
	return len(b), nil
}

func (c *delayConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.shut = true
		close(c.ch)
		c.mu.Unlock()
	})
	<-c.done
	return c.Conn.Close()
}

func latencyHook(rtt time.Duration) func(net.Conn, bool) net.Conn {
	return func(c net.Conn, dialed bool) net.Conn {
		if dialed {
			time.Sleep(rtt) // SYN, SYN-ACK
		}
		return newDelayConn(c, rtt/2)
	}
}

// TestRoundTrips measures, with a simulated 200 ms round trip, the time
// from the start of checks to the first application byte at the
// controlling agent (the controlled one writes as soon as it has its
// Conn): regular nomination needs 3 round trips (connect, check,
// check with USE-CANDIDATE), aggressive 2.
func TestRoundTrips(t *testing.T) {
	const rtt = 200 * time.Millisecond
	for _, tt := range []struct {
		nom  Nomination
		name string
		max  float64 // round trips
	}{{Regular, "regular", 3}, {Aggressive, "aggressive", 2}} {
		t.Run(tt.name, func(t *testing.T) {
			hook := latencyHook(rtt)
			ca := Config{Addrs: loopback, Nomination: tt.nom, connHook: hook, TCPTypes: []TCPType{Active, Passive}}
			cb := ca
			cb.TCPTypes = []TCPType{Passive} // one direction only: no crossing checks
			ca.Controlling = true
			errc := make(chan error, 1)
			start := time.Now()
			ra, rb := connectAgentsThen(t, ca, cb, nil, func(c *Conn) {
				_, err := c.Write([]byte{1})
				errc <- err
			})
			if ra.err != nil || rb.err != nil {
				t.Fatal(ra.err, rb.err)
			}
			var b [1]byte
			if _, err := io.ReadFull(ra.conn, b[:]); err != nil {
				t.Fatal(err)
			}
			el := time.Since(start)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			trips := float64(el) / float64(rtt)
			t.Logf("BENCH nomination=%s rtt=%v first_byte=%v round_trips=%.2f checks=%d+%d", tt.name, rtt, el.Round(time.Millisecond), trips, ra.rep.ChecksSent, rb.rep.ChecksSent)
			// gathering, goroutine hops and a shared 2-core machine cost a few ms
			if trips > tt.max+0.5 {
				t.Errorf("first byte after %.2f round trips, want <= %v", trips, tt.max)
			}
		})
	}
}
