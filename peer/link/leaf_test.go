package link

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/testkeys"
)

// Each side presents an Ed25519 session certificate signed by its identity:
// the peer id and RemoteCert are the identity's, and no RSA signature is made
// per connection.
func TestSessionCertificateChain(t *testing.T) {
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	c, s := connect(t, Config{Identity: alice, Expect: bob.ID}, Config{Identity: bob, Expect: alice.ID})
	if c.err != nil || s.err != nil {
		t.Fatalf("client %v, server %v", c.err, s.err)
	}
	for _, x := range []struct {
		l    *Link
		want *identity.Identity
	}{{c.link, bob}, {s.link, alice}} {
		st := x.l.ConnectionState()
		if len(st.PeerCertificates) != 2 || st.PeerCertificates[0].PublicKeyAlgorithm != x509.Ed25519 {
			t.Fatalf("peer presented %d certificates, first with key %v; want an Ed25519 session certificate and the identity",
				len(st.PeerCertificates), st.PeerCertificates[0].PublicKeyAlgorithm)
		}
		if x.l.Remote != x.want.ID || !x.l.RemoteCert.Equal(x.want.Cert) {
			t.Fatalf("remote %s / certificate %q, want the identity of %s", x.l.Remote, x.l.RemoteCert.Subject, x.want.ID)
		}
	}
}

// dialWith runs a raw TLS client presenting cert against a peer server that
// accepts anyone, and returns the server's error.
func dialWith(t *testing.T, cert tls.Certificate, server Config) error {
	t.Helper()
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		l, err := Server(ctx, b, server)
		if l != nil {
			l.Close()
		}
		done <- err
	}()
	go func() {
		defer a.Close()
		tc := tls.Client(a, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
			NextProtos: []string{ALPN}, Certificates: []tls.Certificate{cert}})
		tc.HandshakeContext(ctx)
		io.Copy(io.Discard, tc)
	}()
	return <-done
}

// Mallory's session key, presented with Alice's identity certificate, does
// not make Mallory Alice.
func TestForeignSessionCertificateRefused(t *testing.T) {
	alice, bob, mallory := testkeys.Identity(t, 0), testkeys.Identity(t, 1), testkeys.Identity(t, 2)
	own, err := sessionCertificate(mallory, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged := own
	forged.Certificate = [][]byte{own.Certificate[0], alice.Cert.Raw}
	err = dialWith(t, forged, Config{Identity: bob})
	if err == nil || !strings.Contains(err.Error(), "not signed by its identity") {
		t.Fatalf("server: %v, want a refusal of the forged chain", err)
	}
	// Mallory's own chain is fine: she is Mallory.
	if err := dialWith(t, own, Config{Identity: bob}); err != nil {
		t.Fatalf("mallory's own chain: %v", err)
	}
}

// A session certificate is only good for its lifetime.
func TestExpiredSessionCertificateRefused(t *testing.T) {
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	old, err := sessionCertificate(alice, time.Now().Add(-sessionLifetime-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	err = dialWith(t, old, Config{Identity: bob})
	if err == nil || !strings.Contains(err.Error(), "not now") {
		t.Fatalf("server: %v, want an expired session certificate refused", err)
	}
	// The next link makes a fresh one.
	c, s := connect(t, Config{Identity: alice, Expect: bob.ID}, Config{Identity: bob})
	if c.err != nil || s.err != nil {
		t.Fatalf("after renewal: client %v, server %v", c.err, s.err)
	}
}

// A peer presenting only its identity certificate, as earlier versions
// did, is still accepted under its id.
func TestIdentityCertificateAloneAccepted(t *testing.T) {
	alice, bob := testkeys.Identity(t, 0), testkeys.Identity(t, 1)
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		l   *Link
		err error
	}
	done := make(chan res, 1)
	go func() {
		l, err := Server(ctx, b, Config{Identity: bob, Expect: alice.ID})
		done <- res{l, err}
	}()
	tc := tls.Client(a, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN}, Certificates: []tls.Certificate{alice.TLSCertificate()}})
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(tc, ack[:]); err != nil || ack[0] != linkAccepted {
		t.Fatalf("accept byte %#x, %v", ack[0], err)
	}
	r := <-done
	if r.err != nil || r.l.Remote != alice.ID {
		t.Fatalf("server: %v", r.err)
	}
	r.l.Close()
	tc.Close()
}

var _ net.Conn = (*tls.Conn)(nil)

func forgetSessions() {
	sessionMu.Lock()
	clear(sessionCache)
	sessionMu.Unlock()
}

// A session certificate kept on disk is reused by the next process (no RSA
// signature), only by the identity that made it, and only while valid.
func TestSessionCertificateKeptOnDisk(t *testing.T) {
	alice, mallory := testkeys.Identity(t, 0), testkeys.Identity(t, 2)
	dir := t.TempDir()
	forgetSessions()
	PrepareIn(alice, dir)
	path := filepath.Join(dir, SessionFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %o, want 600", path, st.Mode().Perm())
	}
	first, _ := sessionCertificate(alice, time.Now())

	forgetSessions() // a new process
	PrepareIn(alice, dir)
	again, _ := sessionCertificate(alice, time.Now())
	if !bytes.Equal(again.Certificate[0], first.Certificate[0]) {
		t.Fatal("the next process made a new session certificate instead of reusing the saved one")
	}
	// It links.
	c, s := connect(t, Config{Identity: alice}, Config{Identity: testkeys.Identity(t, 1), Expect: alice.ID})
	if c.err != nil || s.err != nil {
		t.Fatalf("with the reused certificate: client %v, server %v", c.err, s.err)
	}

	// Another identity does not take Alice's file: it makes its own.
	forgetSessions()
	PrepareIn(mallory, dir)
	m, _ := sessionCertificate(mallory, time.Now())
	if bytes.Equal(m.Certificate[0], first.Certificate[0]) || !bytes.Equal(m.Certificate[1], mallory.Cert.Raw) {
		t.Fatal("another identity reused a session certificate it did not sign")
	}

	// A certificate near its end is replaced.
	forgetSessions()
	old, _ := sessionCertificate(alice, time.Now().Add(-sessionLifetime+sessionRenew/2))
	if err := saveSession(path, old); err != nil {
		t.Fatal(err)
	}
	forgetSessions()
	PrepareIn(alice, dir)
	fresh, _ := sessionCertificate(alice, time.Now())
	if bytes.Equal(fresh.Certificate[0], old.Certificate[0]) {
		t.Fatal("a session certificate about to expire was reused")
	}
}
