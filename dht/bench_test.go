package dht

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
)

// BenchmarkPutGet: one put and one get of a 200-byte value on a loopback
// network of 20 Go nodes (UDP), from two client nodes.
func BenchmarkPutGet(b *testing.B) {
	var nodes []*UDPNode
	for i := 0; i < 22; i++ {
		u, err := ListenUDP(Config{}, "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer u.Close()
		if i > 0 {
			u.Bootstrap(nodes[0].Addr())
		}
		nodes = append(nodes, u)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && (nodes[20].Stats().Nodes < 15 || nodes[21].Stats().Nodes < 15) {
		time.Sleep(50 * time.Millisecond)
	}
	ctx := context.Background()
	var recv0 uint64
	for _, u := range nodes[:20] {
		recv0 += u.Stats().Received
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var key wire.ID
		for j := range key {
			key[j] = byte(rand.UintN(256))
		}
		v := &wire.Value{Data: make([]byte, 200)}
		if _, err := nodes[20].Put(ctx, key, v); err != nil {
			b.Fatal(err)
		}
		r, err := nodes[21].Get(ctx, key, nil)
		if err != nil || len(r.Values) != 1 {
			b.Fatalf("get: %v", err)
		}
	}
	b.StopTimer()
	var recv1 uint64
	for _, u := range nodes[:20] {
		recv1 += u.Stats().Received
	}
	b.ReportMetric(float64(recv1-recv0)/float64(b.N), "datagrams-received-by-network/op")
}

// BenchmarkServeFind: one find request handled by a node that knows 200
// peers (decode, routing-table query, token, encode), no sockets.
func BenchmarkServeFind(b *testing.B) {
	n, err := New(Config{RateLimitPerIP: -1, RateLimit: -1}, transportFunc(func([]byte, netip.AddrPort) error { return nil }))
	if err != nil {
		b.Fatal(err)
	}
	now := n.now()
	for i := 0; i < 200; i++ {
		var id wire.ID
		for j := range id {
			id[j] = byte(rand.UintN(256))
		}
		n.tab.insert(id, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4222), true, true, now)
	}
	from := netip.MustParseAddrPort("127.0.0.1:5000")
	n.sourceLocked(from, now).verified = true
	m := wire.Message{Kind: wire.KindQuery, Method: wire.Find, TID: 7, UA: wire.UserAgent, ID: wire.ID{1}, Target: wire.HashKey("t")}
	req := m.Marshal()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n.HandlePacket(req, from)
	}
}
