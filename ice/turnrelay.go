package ice

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/del-share/del/turn"
)

// TURNRelay makes the relayed candidate with the project's TURN-TCP
// client (RFC 6062): one allocation per agent.
func TURNRelay(c *turn.Client) RelayFunc {
	return func(ctx context.Context) (RelayAllocation, error) {
		a, err := c.Allocate(ctx)
		if err != nil {
			return nil, err
		}
		return turnAlloc{a}, nil
	}
}

type turnAlloc struct{ a *turn.Allocation }

func (t turnAlloc) Addr() netip.AddrPort   { return t.a.RelayedAddr() }
func (t turnAlloc) Mapped() netip.AddrPort { return t.a.MappedAddr() }
func (t turnAlloc) Accept() (net.Conn, error) {
	return t.a.Accept()
}
func (t turnAlloc) Close() error { return t.a.Close() }

// Permit asks for each IP on its own: a server refuses a whole
// CreatePermission when one address is in a denied range (a peer's private
// host address, typically), and the others must still get through. The
// requests go out together: one round trip to the server, not one per
// address, before the peer's checks can get in.
func (t turnAlloc) Permit(ips []netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errs := make([]error, len(ips))
	var wg sync.WaitGroup
	for i, ip := range ips {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = t.a.Permit(ctx, ip)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
