package dht

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/internal/testenv"
)

// goNetwork starts n Go nodes on loopback, each bootstrapped from the first.
func goNetwork(t *testing.T, n int, mk func(i int) Config) []*UDPNode {
	t.Helper()
	var nodes []*UDPNode
	for i := 0; i < n; i++ {
		cfg := Config{}
		if mk != nil {
			cfg = mk(i)
		}
		u, err := ListenUDP(cfg, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		if i > 0 {
			u.Bootstrap(nodes[0].Addr())
		}
		nodes = append(nodes, u)
	}
	// Wait until every node knows every other (small network).
	waitFor(t, 10*time.Second, "routing tables filled", func() bool {
		for _, u := range nodes {
			if u.Stats().Nodes < n-1 {
				return false
			}
		}
		return true
	})
	return nodes
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGoPutGetListen(t *testing.T) {
	nodes := goNetwork(t, 5, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key := wire.HashKey("pollution_level")

	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	events, err := nodes[4].Listen(lctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}

	v := &wire.Value{Data: []byte("42 ug/m3"), UserType: "text/plain"}
	res, err := nodes[1].Put(ctx, key, v)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored < 3 {
		t.Fatalf("stored on %d nodes", res.Stored)
	}
	got, err := nodes[3].Get(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Values) != 1 || !bytes.Equal(got.Values[0].Data, v.Data) || got.Values[0].ID != v.ID {
		t.Fatalf("get: %+v", got.Values)
	}
	select {
	case ev := <-events:
		if ev.Expired || !bytes.Equal(ev.Value.Data, v.Data) {
			t.Fatalf("listen event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("listener heard nothing")
	}

	// A 3 KB value crosses fragmented.
	big := &wire.Value{Data: bytes.Repeat([]byte("0123456789"), 300)}
	if _, err := nodes[2].Put(ctx, key, big); err != nil {
		t.Fatal(err)
	}
	got, err = nodes[0].Get(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, g := range got.Values {
		found = found || bytes.Equal(g.Data, big.Data)
	}
	if !found || len(got.Values) != 2 {
		t.Fatalf("big value not found: %d values", len(got.Values))
	}
}

func TestIgnoresOwnIDAndOtherNetwork(t *testing.T) {
	var sent [][]byte
	tr := transportFunc(func(b []byte, to netip.AddrPort) error { sent = append(sent, append([]byte(nil), b...)); return nil })
	n, err := New(Config{Network: 7}, tr)
	if err != nil {
		t.Fatal(err)
	}
	from := netip.MustParseAddrPort("127.0.0.1:5000")
	ping := func(id wire.ID, netID uint32) []byte {
		m := wire.Message{Kind: wire.KindQuery, Method: wire.Ping, TID: 9, UA: wire.UserAgent, ID: id, Network: netID}
		return m.Marshal()
	}
	n.HandlePacket(ping(n.ID(), 7), from)
	n.HandlePacket(ping(wire.ID{1}, 0), from)
	n.HandlePacket([]byte{0x85, 0xa1}, from)
	if len(sent) != 0 {
		t.Fatalf("answered %d ignored messages", len(sent))
	}
	n.HandlePacket(ping(wire.ID{1}, 7), from)
	var pong *wire.Message
	for _, b := range sent {
		m, err := wire.Decode(b)
		if err == nil && m.Kind == wire.KindReply && m.TID == 9 {
			pong = m
		}
	}
	if pong == nil || pong.Network != 7 || pong.SeenAddr != from.Addr() {
		t.Fatalf("no pong in same network: %v", pong)
	}
}

type transportFunc func([]byte, netip.AddrPort) error

func (f transportFunc) Send(b []byte, to netip.AddrPort) error { return f(b, to) }

// Nodes on IPv6 loopback exchange n6 node lists and values.
func TestIPv6(t *testing.T) {
	var nodes []*UDPNode
	for i := 0; i < 3; i++ {
		u, err := ListenUDP(Config{}, "[::1]:0")
		if err != nil {
			testenvSkipNoV6(t, err)
		}
		t.Cleanup(func() { u.Close() })
		if i > 0 {
			u.Bootstrap(nodes[0].Addr())
		}
		nodes = append(nodes, u)
	}
	waitFor(t, 10*time.Second, "IPv6 tables filled", func() bool {
		return nodes[1].Stats().Nodes >= 2 && nodes[2].Stats().Nodes >= 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := wire.HashKey("v6")
	if _, err := nodes[1].Put(ctx, key, &wire.Value{Data: []byte("over ::1")}); err != nil {
		t.Fatal(err)
	}
	r, err := nodes[2].Get(ctx, key, nil)
	if err != nil || len(r.Values) != 1 || string(r.Values[0].Data) != "over ::1" {
		t.Fatalf("get over IPv6: %v %+v", err, r)
	}
}

func testenvSkipNoV6(t *testing.T, err error) {
	t.Helper()
	testenv.Missing(t, "IPv6 loopback is not available: %v", err)
}
