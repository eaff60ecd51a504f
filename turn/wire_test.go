package turn

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// The attributes DEL reads and writes survive an encode/decode round trip,
// and readMessage stops at the end of the message (RFC 6062 §4.4: what
// follows a ConnectionBind answer is the peer's data).
func TestCodecRoundTrip(t *testing.T) {
	peer := netip.MustParseAddrPort("198.51.100.9:4242")
	m, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication),
		connectionID(0xdeadbeef), xorAddr{stun.AttrXORPeerAddress, peer}, lifetime(600*time.Second),
		requestedTransport(protoTCP), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	n, err := frameLen(m.Raw)
	if err != nil || n != len(m.Raw) {
		t.Fatalf("frameLen = %d, %v; want %d", n, err, len(m.Raw))
	}
	got, err := readMessage(bytes.NewReader(append(m.Raw, "trailing peer bytes"...)))
	if err != nil {
		t.Fatal(err)
	}
	if cid, err := getConnectionID(got); err != nil || cid != 0xdeadbeef {
		t.Errorf("CONNECTION-ID %x, %v", cid, err)
	}
	if p, err := getXORAddr(got, stun.AttrXORPeerAddress); err != nil || p != peer {
		t.Errorf("XOR-PEER-ADDRESS %v, %v", p, err)
	}
	if l, err := getLifetime(got); err != nil || l != 600*time.Second {
		t.Errorf("LIFETIME %v, %v", l, err)
	}
	if v, _ := got.Get(stun.AttrRequestedTransport); !bytes.Equal(v, []byte{6, 0, 0, 0}) {
		t.Errorf("REQUESTED-TRANSPORT %x", v)
	}
}

// RFC 5769 §2.1: a sample request; frameLen and the decoder accept it.
func TestFrameLenRFC5769(t *testing.T) {
	raw, _ := hex.DecodeString("000100582112a442b7e7a701bc34d686fa87dfae" +
		"802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36" +
		"000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2" +
		"80280004e57a3bcf")
	n, err := frameLen(raw)
	if err != nil || n != len(raw) {
		t.Fatalf("frameLen = %d, %v; want %d", n, err, len(raw))
	}
	m, err := decodeMessage(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := stun.NewShortTermIntegrity("VOkJxbRl1RmTxUk/WvJxBt").Check(m); err != nil {
		t.Errorf("RFC 5769 integrity: %v", err)
	}
}

func TestFrameLenRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"short":      make([]byte, 19),
		"no-cookie":  make([]byte, 20),
		"channel":    append([]byte{0x40, 0x00, 0x00, 0x04}, make([]byte, 20)...),
		"odd-length": {0x00, 0x01, 0x00, 0x03, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
	} {
		if _, err := frameLen(b); !errors.Is(err, ErrNotSTUN) {
			t.Errorf("%s: frameLen err %v, want ErrNotSTUN", name, err)
		}
	}
}

// FuzzReadMessage feeds arbitrary streams to the client's frame reader and
// attribute getters: errors, never panics; what it accepts re-encodes to
// the same bytes.
func FuzzReadMessage(f *testing.F) {
	m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication),
		connectionID(7), xorAddr{stun.AttrXORPeerAddress, netip.MustParseAddrPort("[2001:db8::1]:9")}, stun.Fingerprint)
	f.Add(m.Raw)
	e := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse),
		stun.CodeStaleNonce, stun.NewNonce("abc"), stun.NewRealm("r"))
	f.Add(e.Raw)
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(m.Raw[:25])
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := readMessage(bytes.NewReader(b))
		if err != nil {
			return
		}
		n, _ := frameLen(b)
		if !bytes.Equal(msg.Raw, b[:n]) {
			t.Fatalf("decoded message is not the frame")
		}
		getConnectionID(msg)
		getLifetime(msg)
		getXORAddr(msg, stun.AttrXORPeerAddress)
		getXORAddr(msg, stun.AttrXORRelayedAddress)
		errorOf(msg)
	})
}

// FuzzServerControl sends arbitrary bytes on a control connection to a live
// server: the server never dies, and a fresh client can still allocate.
func FuzzServerControl(f *testing.F) {
	valid := stun.MustBuild(append(allocateRequest(), stun.Fingerprint)...)
	f.Add(valid.Raw)
	f.Add([]byte{0x40, 0x01, 0xff, 0xfc})
	f.Add(append(valid.Raw[:20:20], 1, 2, 3))
	s := startServer(f, func(c *ServerConfig) { c.HandshakeTimeout = 200 * time.Millisecond })
	f.Fuzz(func(t *testing.T, b []byte) {
		c := dialRaw(t, s.Addr())
		c.Write(b)
		c.Close()
		probe := dialRaw(t, s.Addr())
		resp := rawRequest(t, probe, stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		if resp.Type != stun.BindingSuccess {
			t.Fatalf("server answers %v after garbage", resp.Type)
		}
	})
}
