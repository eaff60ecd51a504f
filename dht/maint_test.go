package dht

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
)

// A peer that stops answering gets three sends of a request (about 1 s and
// 2 s apart) and is then expired: lookups and replies leave it out.
func TestSilentPeerExpires(t *testing.T) {
	s := newSimNet(7)
	a := s.add(t)
	s.add(t)
	c := s.add(t)
	for i := 0; i < 3; i++ {
		s.advance(time.Second)
	}
	cAddr := s.addrs[2]
	if p := a.tab.get(c.ID()); p == nil || p.expired() {
		t.Fatal("a does not know c")
	}
	s.remove(2) // c goes silent
	// Sends of each request from a to c, by tid.
	sends := map[uint32][]time.Time{}
	var first uint32
	s.onLost = func(p simPkt) {
		if p.to != cAddr || p.from != s.addrs[0] {
			return
		}
		m, err := wire.Decode(p.b)
		if err != nil {
			t.Fatal(err)
		}
		if len(sends) == 0 {
			first = m.TID
		}
		sends[m.TID] = append(sends[m.TID], s.clock.Now())
	}
	// a keeps asking c (lookups, then maintenance pings after 10 minutes
	// of silence) until c's first request expires.
	for i := 0; i < 11*60*4 && (len(sends) == 0 || s.clock.Now().Sub(sends[first][0]) < 10*time.Second); i++ {
		s.advance(250 * time.Millisecond)
	}
	got := sends[first]
	if len(got) != maxAttempts {
		t.Fatalf("%d sends of one request to the silent peer, want %d", len(got), maxAttempts)
	}
	if d := got[1].Sub(got[0]); d < time.Second || d > 1500*time.Millisecond {
		t.Errorf("first retry after %v, want 1-1.25 s", d)
	}
	if d := got[2].Sub(got[1]); d < 2*time.Second || d > 3*time.Second {
		t.Errorf("second retry after %v, want 2-2.75 s", d)
	}
	for tid, ts := range sends {
		if len(ts) > maxAttempts {
			t.Errorf("request %d sent %d times", tid, len(ts))
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.tab.get(c.ID()); p != nil && !p.expired() {
		t.Fatal("silent peer not expired")
	}
	for _, p := range a.tab.closest(c.ID(), 8, 0) {
		if p.id == c.ID() {
			t.Fatal("expired peer still returned by closest")
		}
	}
}

// A listener hears a value, and hears it expire when its TTL runs out on
// the storing nodes, with the listen refreshed every 20 s meanwhile.
func TestListenHearsExpiry(t *testing.T) {
	s := newSimNet(8)
	for i := 0; i < 6; i++ {
		s.add(t)
	}
	listener := s.nodes[s.addrs[5]]
	key := wire.HashKey("expiring")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := listener.Listen(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.run()
	s.advance(time.Second)
	putter := s.nodes[s.addrs[1]]
	v := &wire.Value{Type: TypeIceCandidates, Data: []byte("cand"), ID: 77}
	done := false
	putter.mu.Lock()
	putter.putLocked(key, v, func(*PutResult, error) { done = true })
	putter.mu.Unlock()
	s.waitOp(func() bool { return done })

	next := func() Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return Event{}
		}
	}
	ev := next()
	if ev.Expired || ev.Value.ID != 77 || !bytes.Equal(ev.Value.Data, v.Data) {
		t.Fatalf("first event %+v", ev)
	}
	start := s.clock.Now()
	for s.clock.Now().Sub(start) < 30*time.Second {
		s.advance(5 * time.Second)
		select {
		case ev := <-events:
			t.Fatalf("event before expiry: %+v", ev)
		default:
		}
	}
	for s.clock.Now().Sub(start) < 70*time.Second {
		s.advance(5 * time.Second)
	}
	ev = next()
	if !ev.Expired || ev.Value.ID != 77 {
		t.Fatalf("want expiry, got %+v", ev)
	}
}

func TestTokens(t *testing.T) {
	now := time.Unix(1e9, 0)
	var seed byte
	tok := newTokens(func(b []byte) {
		for i := range b {
			seed++
			b[i] = seed
		}
	}, now)
	a := netip.MustParseAddrPort("127.0.0.1:4000")
	b := netip.MustParseAddrPort("127.0.0.1:4001")
	t1 := tok.make(a)
	if len(t1) != 32 || !tok.valid(t1, a) || tok.valid(t1, b) {
		t.Fatal("token not bound to its address")
	}
	tok.maintain(now.Add(46 * time.Minute)) // rotation due within 15-45 min
	if !tok.valid(t1, a) {
		t.Fatal("token of the previous secret refused")
	}
	tok.maintain(now.Add(92 * time.Minute))
	if tok.valid(t1, a) {
		t.Fatal("token two rotations old accepted")
	}
}

// captureNode is a node whose datagrams are recorded instead of sent.
func captureNode(t *testing.T, cfg Config) (*Node, *[]sentPkt) {
	var sent []sentPkt
	n, err := New(cfg, transportFunc(func(b []byte, to netip.AddrPort) error {
		sent = append(sent, sentPkt{append([]byte{}, b...), to})
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return n, &sent
}

type sentPkt struct {
	b  []byte
	to netip.AddrPort
}

func decodeAll(t *testing.T, pk []sentPkt) []*wire.Message {
	var out []*wire.Message
	for _, p := range pk {
		m, err := wire.Decode(p.b)
		if err != nil {
			t.Fatalf("node sent an undecodable datagram: %v", err)
		}
		out = append(out, m)
	}
	return out
}

// An unverified source gets at most 8× the bytes it sent: a small get for a
// big value is answered without the value, and with it once the source has
// answered our ping.
func TestAntiAmplification(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	n, sent := captureNode(t, Config{Clock: clock})
	key := wire.HashKey("big")
	big := &wire.Value{ID: 5, Data: bytes.Repeat([]byte{7}, 3000)}
	n.st.put(key, big, clock.Now(), netip.MustParseAddr("10.0.0.9"), clock.Now())

	src := netip.MustParseAddrPort("127.0.0.1:5555")
	other := wire.ID{9, 9}
	get := wire.Message{Kind: wire.KindQuery, Method: wire.Get, TID: 100, UA: wire.UserAgent, ID: other, Hash: key}
	req := get.Marshal()
	n.HandlePacket(req, src)
	total := 0
	var ping *wire.Message
	for i, m := range decodeAll(t, *sent) {
		total += len((*sent)[i].b)
		if m.Kind == wire.KindReply && (len(m.Values) > 0 || m.Fragmented()) {
			t.Fatal("value sent to an unverified source")
		}
		if m.Kind == wire.KindQuery && m.Method == wire.Ping {
			ping = m
		}
	}
	if total > amplification*len(req) {
		t.Fatalf("sent %d bytes for a %d-byte request", total, len(req))
	}
	if ping == nil {
		t.Fatal("source was not pinged for verification")
	}
	pong := wire.Message{Kind: wire.KindReply, TID: ping.TID, UA: wire.UserAgent, ID: other, SeenAddr: src.Addr()}
	n.HandlePacket(pong.Marshal(), src)
	*sent = nil
	get.TID = 102
	n.HandlePacket(get.Marshal(), src)
	var header *wire.Message
	parts := 0
	for _, m := range decodeAll(t, *sent) {
		if m.Kind == wire.KindReply && m.TID == 102 {
			header = m
		}
		if m.Kind == wire.KindPart {
			parts++
		}
	}
	if header == nil || !header.Fragmented() || parts != 3 {
		t.Fatalf("verified source did not get the value: header %v, %d parts", header, parts)
	}
}

// One IP gets at most 1024 requests answered per second.
func TestRateLimitPerIP(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	n, sent := captureNode(t, Config{Clock: clock})
	from := netip.MustParseAddrPort("127.0.0.1:6000")
	for i := 0; i < 3000; i++ {
		m := wire.Message{Kind: wire.KindQuery, Method: wire.Ping, TID: uint32(i + 1), UA: wire.UserAgent, ID: wire.ID{1}}
		n.HandlePacket(m.Marshal(), from)
	}
	pongs := 0
	for _, m := range decodeAll(t, *sent) {
		if m.Kind == wire.KindReply {
			pongs++
		}
	}
	if pongs != 1024 {
		t.Fatalf("%d pongs, want 1024", pongs)
	}
	// Another IP is not affected, and the limit resets after a second.
	m := wire.Message{Kind: wire.KindQuery, Method: wire.Ping, TID: 1, UA: wire.UserAgent, ID: wire.ID{2}}
	*sent = nil
	n.HandlePacket(m.Marshal(), netip.MustParseAddrPort("127.0.0.2:6000"))
	clock.Add(time.Second)
	n.HandlePacket(m.Marshal(), from)
	if got := len(decodeAll(t, *sent)); got < 2 {
		t.Fatalf("%d answers after the limit", got)
	}
}

// Put with a wrong token gets 401, and an unsigned value cannot be replaced
// by different content under the same id.
func TestPutRules(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	n, sent := captureNode(t, Config{Clock: clock})
	from := netip.MustParseAddrPort("127.0.0.1:7000")
	key := wire.HashKey("k")
	put := func(tok []byte, v *wire.Value) *wire.Message {
		*sent = nil
		m := wire.Message{Kind: wire.KindQuery, Method: wire.Put, TID: 11, UA: wire.UserAgent, ID: wire.ID{3}, Hash: key, Token: tok}
		m.Values = []*wire.Value{v}
		n.HandlePacket(m.Marshal(), from)
		for _, r := range decodeAll(t, *sent) {
			if r.TID == 11 {
				return r
			}
		}
		t.Fatal("no answer to put")
		return nil
	}
	if r := put(make([]byte, 32), &wire.Value{ID: 1, Data: []byte("a")}); r.Kind != wire.KindError || r.ErrCode != wire.CodeUnauthorized {
		t.Fatalf("wrong token: %+v", r)
	}
	tok := n.tok.make(from)
	if r := put(tok, &wire.Value{ID: 1, Data: []byte("a")}); r.Kind != wire.KindReply || r.VID != 1 {
		t.Fatalf("put: %+v", r)
	}
	if r := put(tok, &wire.Value{ID: 1, Data: []byte("b")}); r.Kind != wire.KindReply || r.VID != 1 {
		t.Fatalf("edit is acked anyway: %+v", r)
	}
	vals := n.st.get(key, nil, clock.Now())
	if len(vals) != 1 || string(vals[0].Data) != "a" {
		t.Fatalf("unsigned value was edited: %+v", vals)
	}
}

// An announced value outlives its TTL: the publisher puts it again before
// it expires. A value put once is gone after its TTL.
func TestAnnounceRefreshes(t *testing.T) {
	s := newSimNet(9)
	for i := 0; i < 8; i++ {
		s.add(t)
	}
	pub := s.nodes[s.addrs[2]]
	kept, once := wire.HashKey("kept"), wire.HashKey("once")
	pub.mu.Lock()
	pub.announceLocked(kept, &wire.Value{Data: []byte("kept")})
	done := false
	pub.putLocked(once, &wire.Value{Data: []byte("once")}, func(*PutResult, error) { done = true })
	pub.mu.Unlock()
	s.waitOp(func() bool { return done })
	start := s.clock.Now()
	for s.clock.Now().Sub(start) < 25*time.Minute {
		s.advance(5 * time.Second)
	}
	get := func(key wire.ID) int {
		var res *GetResult
		g := s.nodes[s.addrs[6]]
		g.mu.Lock()
		g.getLocked(key, nil, func(r *GetResult, _ error) { res = r })
		g.mu.Unlock()
		s.waitOp(func() bool { return res != nil })
		if res == nil {
			t.Fatal("get did not finish")
		}
		return len(res.Values)
	}
	if n := get(kept); n != 1 {
		t.Fatalf("announced value: %d values after 25 min", n)
	}
	if n := get(once); n != 0 {
		t.Fatalf("value put once still there after 25 min (%d)", n)
	}
}

// A listener hears a refresh when the publisher announces its value again,
// once even though several storing nodes report it.
func TestListenHearsRefresh(t *testing.T) {
	s := newSimNet(10)
	for i := 0; i < 8; i++ {
		s.add(t)
	}
	listener := s.nodes[s.addrs[7]]
	key := wire.HashKey("refreshing")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := listener.ListenRefreshes(ctx, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := listener.Listen(ctx, key, nil) // no Refreshed events here
	if err != nil {
		t.Fatal(err)
	}
	s.run()
	s.advance(time.Second)
	pub := s.nodes[s.addrs[1]]
	pub.mu.Lock()
	pub.announceLocked(key, &wire.Value{Type: TypeIceCandidates, Data: []byte("c"), ID: 5})
	pub.mu.Unlock()
	s.run()
	next := func() Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return Event{}
		}
	}
	if ev := next(); ev.Expired || ev.Refreshed || ev.Value.ID != 5 {
		t.Fatalf("first event %+v", ev)
	}
	if ev := <-plain; ev.Expired || ev.Refreshed || ev.Value.ID != 5 {
		t.Fatalf("first plain event %+v", ev)
	}
	// Type 5 lives 1 min; Announce puts it again 30 s later.
	start := s.clock.Now()
	for s.clock.Now().Sub(start) < 40*time.Second {
		s.advance(5 * time.Second)
	}
	if ev := next(); !ev.Refreshed || ev.Value.ID != 5 {
		t.Fatalf("want a refresh, got %+v", ev)
	}
	// A duplicate would already be queued: the pump delivers it at once.
	select {
	case ev := <-events:
		t.Fatalf("extra event %+v", ev)
	case ev := <-plain:
		t.Fatalf("plain listener got %+v", ev)
	case <-time.After(200 * time.Millisecond):
	}
}

// Headers announcing fragmented values cannot make a node hold unbounded
// reassembly state.
func TestReassemblyBounds(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	n, _ := captureNode(t, Config{Clock: clock, RateLimitPerIP: -1, RateLimit: -1})
	from := netip.MustParseAddrPort("127.0.0.1:9000")
	put := func(tid uint32, sizes []uint64) {
		m := wire.Message{Kind: wire.KindQuery, Method: wire.Put, TID: tid, UA: wire.UserAgent, ID: wire.ID{4},
			Hash: wire.HashKey("k"), Token: n.tok.make(from), ValueSizes: sizes}
		n.HandlePacket(m.Marshal(), from)
	}
	many := make([]uint64, 5000)
	for i := range many {
		many[i] = 100
	}
	put(1, many)
	put(2, []uint64{60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000})
	if len(n.partials) != 0 {
		t.Fatalf("%d reassemblies for oversized headers", len(n.partials))
	}
	for i := 0; i < 200; i++ {
		put(uint32(10+i), []uint64{1000})
	}
	if len(n.partials) != maxPartialsPerIP {
		t.Fatalf("%d reassemblies from one IP, want %d", len(n.partials), maxPartialsPerIP)
	}
	// A fragmented reply to nothing we asked is not reassembled.
	r := wire.Message{Kind: wire.KindReply, TID: 999, UA: wire.UserAgent, ID: wire.ID{5}, ValueSizes: []uint64{700}}
	n.HandlePacket(r.Marshal(), netip.MustParseAddrPort("127.0.0.2:9000"))
	if len(n.partials) != maxPartialsPerIP {
		t.Fatal("unsolicited fragmented reply started a reassembly")
	}
	clock.Add(11 * time.Second)
	n.Tick()
	if len(n.partials) != 0 {
		t.Fatalf("%d reassemblies left after the timeout", len(n.partials))
	}
}
