package dht

import (
	"crypto/rsa"
	"encoding/hex"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/testkeys"
	"github.com/tinylib/msgp/msgp"
)

func TestSignedEditPolicy(t *testing.T) {
	now := time.Unix(1e9, 0)
	st := newStore(0)
	key := wire.HashKey("k")
	src := netip.MustParseAddr("127.0.0.1")
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	signed := func(who int, seq uint16, data string) *wire.Value {
		v := &wire.Value{ID: 9, Seq: seq, Data: []byte(data)}
		id := alice
		if who == 1 {
			id = bob
		}
		if err := Sign(v, id); err != nil {
			t.Fatal(err)
		}
		return v
	}
	v0 := signed(0, 0, "first")
	if st.put(key, v0, now, src, now) != putStored {
		t.Fatal("first value not stored")
	}
	if r := st.put(key, signed(0, 0, "first"), now, src, now); r != putRefreshed && r != putRejected {
		t.Fatalf("same seq, new signature: %v", r)
	}
	if st.put(key, signed(1, 5, "bob's"), now, src, now) != putRejected {
		t.Fatal("another owner replaced the value")
	}
	if st.put(key, signed(0, 1, "second"), now, src, now) != putEdited {
		t.Fatal("newer seq from the owner did not replace the value")
	}
	if st.put(key, signed(0, 0, "replay"), now, src, now) != putRejected {
		t.Fatal("older seq replaced the value")
	}
	got := st.get(key, nil, now)
	if len(got) != 1 || string(got[0].Data) != "second" {
		t.Fatalf("stored %+v", got)
	}
}

func TestCertificateOnlyAtKeyID(t *testing.T) {
	ident := testkeys.Identity(t, 2)
	cv := CertificateValue(ident)
	if !storable(wire.ID(ident.ID), cv) {
		t.Fatal("certificate refused at its key id")
	}
	if storable(wire.HashKey("elsewhere"), cv) {
		t.Fatal("certificate accepted at another key")
	}
	cert, err := ParseCertificateValue(cv)
	if err != nil || !cert.Equal(ident.Cert) {
		t.Fatalf("certificate round trip: %v", err)
	}
}

func TestStorageQuotaEvictsBiggestSource(t *testing.T) {
	now := time.Unix(1e9, 0)
	st := newStore(2000)
	key := wire.HashKey("k")
	greedy, modest := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	st.put(key, &wire.Value{ID: 1000, Data: make([]byte, 300)}, now, modest, now)
	for i := 0; i < 10; i++ {
		st.put(key, &wire.Value{ID: uint64(i + 1), Data: make([]byte, 300)}, now.Add(time.Duration(i)*time.Second), greedy, now)
	}
	if st.total > 2000 {
		t.Fatalf("storage %d bytes over the 2000-byte limit", st.total)
	}
	ids := map[uint64]bool{}
	for _, v := range st.get(key, nil, now) {
		ids[v.ID] = true
	}
	if !ids[1000] {
		t.Fatal("the modest source's value was evicted")
	}
	if ids[1] || !ids[10] {
		t.Fatalf("wrong values evicted: %v", ids)
	}
}

func TestSignVerifyEncryptDecrypt(t *testing.T) {
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	v := &wire.Value{ID: 3, Data: []byte("hello"), UserType: "text/plain"}
	if err := Sign(v, alice); err != nil {
		t.Fatal(err)
	}
	if err := Verify(v); err != nil || OwnerID(v) != wire.ID(alice.ID) {
		t.Fatalf("verify: %v", err)
	}
	v.Data = []byte("hellO")
	if Verify(v) == nil {
		t.Fatal("tampered value verified")
	}
	for _, size := range []int{10, 3000} {
		pv := &wire.Value{ID: 4, Data: make([]byte, size)}
		ev, err := Encrypt(pv, alice, &bob.Key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		// A signed body never fits one RSA-4096 block: RSA(key) || IV || AES-GCM || tag,
		// the layout libopendht produces (256+12+n+16 for RSA-2048).
		if want := 512 + 12 + len(pv.AppendDat(nil)) + 16; len(ev.Cypher) != want {
			t.Errorf("cypher %d bytes, want %d", len(ev.Cypher), want)
		}
		dv, err := Decrypt(ev, bob)
		if err != nil {
			t.Fatal(err)
		}
		if len(dv.Data) != size || OwnerID(dv) != wire.ID(alice.ID) || dv.To != wire.ID(bob.ID) {
			t.Fatalf("decrypted %+v", dv)
		}
		if _, err := Decrypt(ev, alice); err == nil {
			t.Fatal("decrypted with the wrong key")
		}
	}
}

func TestRSAOnlyForSmallPlaintext(t *testing.T) {
	bob := testkeys.Identity(t, 1)
	c, err := rsaEncrypt(&bob.Key.PublicKey, []byte("tiny"))
	if err != nil || len(c) != 512 {
		t.Fatalf("%d bytes, %v", len(c), err)
	}
	p, err := rsaDecrypt(bob.Key, c)
	if err != nil || string(p) != "tiny" {
		t.Fatalf("%q %v", p, err)
	}
}

// A certificate with a negative serial number (GnuTLS makes them half of the
// time; this one was published by python3-opendht) still yields its key and
// id, which crypto/x509 alone refuses.
func TestCertificateNegativeSerial(t *testing.T) {
	h, err := os.ReadFile("testdata/opendht-cert-negative-serial.msgpack.hex")
	if err != nil {
		t.Fatal(err)
	}
	data, err := hex.DecodeString(strings.TrimSpace(string(h)))
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _, err := msgp.ReadBytesZC(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.ParseCertPEM(pemBytes); err == nil {
		t.Log("crypto/x509 now accepts negative serial numbers")
	}
	v := &wire.Value{ID: 1, Type: TypeCertificate, Data: data}
	cert, err := ParseCertificateValue(v)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := wire.ParseID("d474497adcb98a4d35ee09ba5bec1e1124bf417e")
	if wire.ID(identity.IDOfCert(cert)) != want || !storable(want, v) {
		t.Fatalf("key id %s, want %s", identity.IDOfCert(cert), want)
	}
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		t.Fatalf("public key %T", cert.PublicKey)
	}
}

// Memory per stored 200-byte value on a storing node (dhtnode: ~0.9 kB).
func TestMemoryPerStoredValue(t *testing.T) {
	const count = 20000
	st := newStore(0)
	now := time.Unix(1e9, 0)
	src := netip.MustParseAddr("10.0.0.1")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < count; i++ {
		var key wire.ID
		key[0], key[1], key[2] = byte(i), byte(i>>8), byte(i>>16)
		st.put(key, &wire.Value{ID: uint64(i + 1), Data: make([]byte, 200)}, now, src, now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / count
	t.Logf("%.0f bytes of heap per stored 200-byte value (one key each)", per)
	if st.count() != count {
		t.Fatalf("%d stored", st.count())
	}
	if per > 1024 {
		t.Errorf("%.0f bytes per stored value, want under 1 KiB", per)
	}
	runtime.KeepAlive(st)
}
