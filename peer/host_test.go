package peer

import (
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/ice"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/testkeys"
)

// network is a small DHT on loopback: a bootstrap node and one node per
// device, each device online through a Host.
type network struct {
	t     *testing.T
	boot  *dht.UDPNode
	nodes []*dht.UDPNode
}

func newNetwork(t *testing.T) *network {
	t.Helper()
	b, err := dht.ListenUDP(dht.Config{}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &network{t: t, boot: b}
}

func (n *network) host(ident *identity.Identity) *Host {
	n.t.Helper()
	node, err := dht.ListenUDP(dht.Config{Identity: ident}, "127.0.0.1:0")
	if err != nil {
		n.t.Fatal(err)
	}
	n.nodes = append(n.nodes, node)
	node.Bootstrap(n.boot.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.WaitReady(ctx); err != nil {
		n.t.Fatal(err)
	}
	h, err := NewHost(HostConfig{
		Identity: ident, DHT: node.Node,
		ICE: ice.Config{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}},
	})
	if err != nil {
		n.t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { h.Close(); node.Close() })
	return h
}

// echo answers every channel opened on h with "<name>:" and what it read.
func echo(t *testing.T, h *Host) {
	go func() {
		for {
			in, err := h.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				data, _ := io.ReadAll(in.Conn)
				in.Conn.Write(append([]byte(in.Name+":"), data...))
				in.Conn.Close()
			}()
		}
	}()
}

func roundTrip(t *testing.T, h *Host, to identity.ID, channel, msg string) *Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, l, err := h.Dial(ctx, to, channel)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(msg))
	c.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != channel+":"+msg {
		t.Fatalf("echo %q", got)
	}
	return l
}

func TestDialByID(t *testing.T) {
	net := newNetwork(t)
	alice := net.host(testkeys.Identity(t, 0))
	bob := net.host(testkeys.Identity(t, 1))
	echo(t, bob)
	l1 := roundTrip(t, alice, bob.ID(), "file", "hello")
	if l1.Remote != bob.ID() {
		t.Fatalf("link to %s", l1.Remote)
	}
	tm := alice.LastTiming()
	if !strings.HasPrefix(tm.Path, "host-") || tm.Report == nil {
		t.Fatalf("path %q, report %v", tm.Path, tm.Report)
	}
	// A second channel rides the same link.
	l2 := roundTrip(t, alice, bob.ID(), "git/repo", "again")
	if l1 != l2 {
		t.Fatal("second channel opened a second link")
	}
	// And Bob reaches Alice over the link she made, without signaling.
	echo(t, alice)
	bob.mu.Lock()
	back := bob.links[alice.ID()]
	bob.mu.Unlock()
	if back == nil {
		t.Fatal("bob has no link to alice")
	}
	if l := roundTrip(t, bob, alice.ID(), "file", "back"); l != back {
		t.Fatal("bob dialed anew instead of using the link")
	}
}

func TestCrossingDialsMakeOneLink(t *testing.T) {
	net := newNetwork(t)
	alice := net.host(testkeys.Identity(t, 0))
	bob := net.host(testkeys.Identity(t, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var la, lb *Link
	var ea, eb error
	wg.Add(2)
	go func() { defer wg.Done(); la, ea = alice.Link(ctx, bob.ID()) }()
	go func() { defer wg.Done(); lb, eb = bob.Link(ctx, alice.ID()) }()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatalf("alice: %v, bob: %v", ea, eb)
	}
	// One link: a channel Alice opens on hers arrives on Bob's.
	c, err := la.Open(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	in, err := bob.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in.Link != lb {
		t.Fatal("the channel arrived on another link than the one Bob's Link returned")
	}
	alice.mu.Lock()
	na := len(alice.links)
	alice.mu.Unlock()
	if na != 1 {
		t.Fatalf("alice holds %d links", na)
	}
}

// sealed makes a signaling value as a sender would.
func sealed(t *testing.T, from *identity.Identity, to *identity.Identity, sig signal) *wire.Value {
	t.Helper()
	data, _ := json.Marshal(sig)
	v, err := dht.Encrypt(&wire.Value{ID: 7, Data: data, UserType: signalUserType}, from, &to.Key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSignalsIgnored(t *testing.T) {
	net := newNetwork(t)
	aliceID, bobID, carolID := testkeys.Identity(t, 0), testkeys.Identity(t, 1), testkeys.Identity(t, 2)
	bob := net.host(bobID)
	now := time.Now().Unix()
	ok := signal{Kind: "request", From: aliceID.ID.String(), To: bobID.ID.String(), Nonce: "n1", Time: now, ICE: "a=ice-ufrag:abcd\n"}
	cases := []struct {
		name string
		v    *wire.Value
		want string
	}{
		{"signed by another than the sender", sealed(t, carolID, bobID, ok), "signer"},
		{"stale", sealed(t, aliceID, bobID, func() signal { s := ok; s.Nonce = "n2"; s.Time = now - 600; return s }()), "stale"},
		{"for another device", sealed(t, aliceID, carolID, func() signal { s := ok; s.Nonce = "n3"; s.To = carolID.ID.String(); return s }()), "not for us"},
		{"inner to differs", sealed(t, aliceID, bobID, func() signal { s := ok; s.Nonce = "n4"; s.To = carolID.ID.String(); return s }()), "another device"},
	}
	for _, c := range cases {
		if _, _, err := bob.open(c.v); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
	good := sealed(t, aliceID, bobID, ok)
	if _, from, err := bob.open(good); err != nil || from != aliceID.ID {
		t.Fatalf("a good request: from %s, %v", from, err)
	}
	if _, _, err := bob.open(good); err == nil || !strings.Contains(err.Error(), "replayed") {
		t.Fatalf("replay: %v", err)
	}
}

func TestDialRefusesWrongCertificate(t *testing.T) {
	net := newNetwork(t)
	alice := net.host(testkeys.Identity(t, 0))
	mallory := testkeys.Identity(t, 3)
	victim := testkeys.Identity(t, 4)
	// Mallory publishes her certificate under the victim's id.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := net.nodes[0].Put(ctx, wire.ID(victim.ID), dht.CertificateValue(mallory)); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if _, err := alice.Link(short, victim.ID); err == nil {
		t.Fatal("dialed a device whose certificate does not hash to its id")
	}
}

// A device that restarts does not answer a request it already answered.
func TestSeenSignalsSurviveRestart(t *testing.T) {
	net := newNetwork(t)
	aliceID, bobID := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	bob := net.host(bobID)
	seen := t.TempDir() + "/seen"
	mk := func() *Host {
		h, err := NewHost(HostConfig{Identity: bobID, DHT: bob.cfg.DHT, SeenFile: seen})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	req := sealed(t, aliceID, bobID, signal{Kind: "request", From: aliceID.ID.String(), To: bobID.ID.String(),
		Nonce: "once", Time: time.Now().Unix(), ICE: "a=ice-ufrag:abcd\n"})
	if _, _, err := mk().open(req); err != nil {
		t.Fatalf("first time: %v", err)
	}
	if _, _, err := mk().open(req); err == nil || !strings.Contains(err.Error(), "replayed") {
		t.Fatalf("after a restart: %v, want replayed", err)
	}
}
