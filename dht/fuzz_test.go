package dht

import (
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
)

// FuzzHandlePacket: no datagram crashes a node, whatever state it is in.
func FuzzHandlePacket(f *testing.F) {
	raw, err := os.ReadFile("wire/testdata/opendht-samples.txt")
	if err != nil {
		f.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if h, ok := strings.CutPrefix(strings.TrimSpace(line), "hex: "); ok {
			if b, err := hex.DecodeString(h); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		clock := &fakeClock{t: time.Unix(1e9, 0)}
		n, err := New(Config{Clock: clock}, transportFunc(func([]byte, netip.AddrPort) error { return nil }))
		if err != nil {
			t.Fatal(err)
		}
		from := netip.MustParseAddrPort("127.0.0.1:4222")
		// Give the node some state: a peer, a stored value, a listener.
		ping := wire.Message{Kind: wire.KindQuery, Method: wire.Ping, TID: 2, UA: wire.UserAgent, ID: wire.HashKey("peer")}
		n.HandlePacket(ping.Marshal(), from)
		key := wire.HashKey("pollution_level")
		n.st.put(key, &wire.Value{ID: 1, Data: []byte("x")}, clock.Now(), from.Addr(), clock.Now())
		n.HandlePacket(b, from)
		n.HandlePacket(b, netip.MustParseAddrPort("[::1]:4222"))
		clock.Add(11 * time.Second)
		n.Tick()
	})
}
