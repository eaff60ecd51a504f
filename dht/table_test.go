package dht

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
)

func idWithPrefix(self wire.ID, shared int, r *rand.Rand) wire.ID {
	var id wire.ID
	for i := range id {
		id[i] = byte(r.UintN(256))
	}
	for b := 0; b < shared; b++ {
		mask := byte(0x80 >> (b % 8))
		id[b/8] = id[b/8]&^mask | self[b/8]&mask
	}
	mask := byte(0x80 >> (shared % 8))
	id[shared/8] = id[shared/8]&^mask | (^self[shared/8])&mask
	return id
}

func addrN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4222)
}

// The bucket holding our own id splits when full; another full bucket keeps
// its live nodes and drops the newcomer, but replaces an expired node.
func TestTableSplitAndReplace(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var self wire.ID
	self[0] = 0x5a
	now := time.Unix(1e9, 0)
	tab := newTable(self, now)

	// Fill with nodes sharing 0 bits (the far half): the single bucket,
	// which holds our id, splits when a 9th node arrives.
	for i := 0; i < BucketSize; i++ {
		if tab.insert(idWithPrefix(self, 0, r), addrN(i), true, true, now) == nil {
			t.Fatalf("node %d refused", i)
		}
	}
	if len(tab.buckets) != 1 {
		t.Fatalf("%d buckets before the split", len(tab.buckets))
	}
	near := idWithPrefix(self, 5, r)
	if tab.insert(near, addrN(100), true, true, now) == nil {
		t.Fatal("node close to us refused")
	}
	if len(tab.buckets) < 2 || len(tab.buckets[0].peers) != BucketSize {
		t.Fatalf("no split: %d buckets", len(tab.buckets))
	}
	// Bucket 0 (far half) is full and does not hold our id: a newcomer is dropped.
	newcomer := idWithPrefix(self, 0, r)
	if tab.insert(newcomer, addrN(200), true, true, now) != nil {
		t.Fatal("full far bucket took a newcomer while all its nodes are good")
	}
	// Once one of its nodes is expired, the newcomer replaces it.
	victim := tab.buckets[0].peers[3]
	victim.failures = maxFailures
	if tab.insert(newcomer, addrN(200), true, true, now) == nil {
		t.Fatal("newcomer did not replace an expired node")
	}
	if tab.get(victim.id) != nil || tab.get(newcomer) == nil {
		t.Fatal("replacement did not happen")
	}
	// Our own id is never inserted.
	if tab.insert(self, addrN(300), true, true, now) != nil {
		t.Fatal("own id inserted")
	}
	// Every peer sits in the bucket that matches its shared prefix.
	for i, b := range tab.buckets {
		for _, p := range b.peers {
			if tab.bucketIndex(p.id) != i {
				t.Fatalf("peer %s in bucket %d, belongs to %d", p.id, i, tab.bucketIndex(p.id))
			}
		}
	}
}

func TestRandomIDInBucket(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var self wire.ID
	self[0], self[1] = 0xc3, 0x11
	tab := newTable(self, time.Unix(0, 0))
	for d := 0; d < 5; d++ {
		tab.buckets = append(tab.buckets, &bucket{})
	}
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
	}
	for i := range tab.buckets {
		for j := 0; j < 50; j++ {
			id := tab.randomIDInBucket(i, fill)
			if got := tab.bucketIndex(id); got != i {
				t.Fatalf("random id for bucket %d falls in bucket %d", i, got)
			}
		}
	}
}

func TestClosestOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var self wire.ID
	now := time.Unix(0, 0)
	tab := newTable(self, now)
	for i := 0; i < 200; i++ {
		var id wire.ID
		for j := range id {
			id[j] = byte(r.UintN(256))
		}
		tab.insert(id, addrN(i), true, true, now)
	}
	target := wire.HashKey("x")
	got := tab.closest(target, 8, 0)
	if len(got) != 8 {
		t.Fatalf("%d nodes", len(got))
	}
	for i := 1; i < len(got); i++ {
		if closer(target, got[i].id, got[i-1].id) {
			t.Fatal("not sorted by XOR distance")
		}
	}
	// No known node outside the result is closer than the last one.
	for _, p := range tab.byID {
		in := false
		for _, q := range got {
			in = in || q == p
		}
		if !in && closer(target, p.id, got[7].id) {
			t.Fatalf("closer node %s left out", p.id)
		}
	}
}

// Only good nodes are passed on (OpenDHT's findClosestNodes): a node that
// answered us recently, not one that only queried us, was named by a third
// node, or went silent for more than 10 minutes.
func TestClosestGoodOnly(t *testing.T) {
	var self wire.ID
	now := time.Unix(1000000, 0)
	tab := newTable(self, now)
	id := func(b byte) wire.ID { var x wire.ID; x[0], x[19] = 0x80, b; return x }
	tab.insert(id(1), addrN(1), true, true, now)                      // answered
	tab.insert(id(2), addrN(2), true, false, now)                     // only queried us
	tab.insert(id(3), addrN(3), false, false, now)                    // named by another node
	tab.insert(id(4), addrN(4), true, true, now.Add(-11*time.Minute)) // answered, then silent
	got := tab.closestGood(id(0), 8, 0, now)
	if len(got) != 1 || got[0].id != id(1) {
		t.Fatalf("good nodes %v, want only the one that answered", got)
	}
	if all := tab.closest(id(0), 8, 0); len(all) != 4 {
		t.Fatalf("closest: %d nodes, want all 4 for our own lookups", len(all))
	}
	// The node that queried us becomes good once it answers.
	tab.insert(id(2), addrN(2), true, true, now)
	if got := tab.closestGood(id(0), 8, 0, now); len(got) != 2 {
		t.Fatalf("%d good nodes after the answer, want 2", len(got))
	}
}
