package link

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/del-share/del/identity"
)

// Session certificates.
//
// A device's identity is an RSA-4096 key (OpenDHT's choice). Signing a TLS
// 1.3 CertificateVerify with it costs about 5.5 ms here, once per side and
// one after the other, on every connection. Instead, each process makes a
// short-lived Ed25519 key and a certificate for it signed by the identity
// key (once, ~5.5 ms, off the connection's path when Prepare is called
// early), and presents the chain [session certificate, identity
// certificate]. The peer checks that the session certificate is signed by
// the identity certificate, is within its validity, and takes the peer id
// from the identity certificate — so pinning is unchanged: only the holder
// of the identity key can make a session certificate for that id. TLS then
// proves possession of the Ed25519 key (~50 µs).
//
// A chain of one certificate (the identity certificate itself, as earlier
// versions presented) is accepted as well.

// sessionLifetime bounds how long a session certificate is valid; a process
// makes a new one when less than sessionRenew is left.
const (
	sessionLifetime = 24 * time.Hour
	sessionRenew    = time.Hour
	// clockSkew is how far in the past a session certificate starts, so a
	// peer whose clock is a little behind accepts it.
	clockSkew = time.Hour
)

type sessionCert struct {
	cert           tls.Certificate
	start, expires time.Time
}

var (
	sessionMu    sync.Mutex
	sessionCache = map[*identity.Identity]*sessionCert{}
)

// Prepare makes ident's session certificate now, so that the first link
// does not wait for it. It is safe to call from a goroutine at start-up.
func Prepare(ident *identity.Identity) {
	if ident != nil {
		sessionCertificate(ident, time.Now())
	}
}

// SessionFile is where PrepareIn keeps the session certificate and its key,
// in the device's folder beside the identity (mode 0600).
const SessionFile = "session.pem"

// PrepareIn is Prepare with the session certificate kept in dir
// (SessionFile): a short-lived command (a git remote helper, a one-shot
// send) reuses the one an earlier process made instead of paying an RSA-4096
// signature. A file that is unreadable, not signed by ident, or near the end
// of its validity is replaced; errors only cost a new certificate.
func PrepareIn(ident *identity.Identity, dir string) {
	if ident == nil {
		return
	}
	now := time.Now()
	path := filepath.Join(dir, SessionFile)
	if s, err := loadSession(path, ident, now); err == nil {
		sessionMu.Lock()
		if cur := sessionCache[ident]; cur == nil || cur.expires.Before(s.expires) {
			sessionCache[ident] = s
		}
		sessionMu.Unlock()
		return
	}
	cert, err := sessionCertificate(ident, now)
	if err != nil {
		return
	}
	saveSession(path, cert)
}

// loadSession reads a session certificate file made for ident that is
// valid now and for longer than sessionRenew.
func loadSession(path string, ident *identity.Identity, now time.Time) (*sessionCert, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keyDER, certDER []byte
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		switch blk.Type {
		case "PRIVATE KEY":
			keyDER = blk.Bytes
		case "CERTIFICATE":
			certDER = blk.Bytes
		}
	}
	if keyDER == nil || certDER == nil {
		return nil, errors.New("peer: session file lacks a key or a certificate")
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("peer: session key is not Ed25519")
	}
	leaf, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, err
	}
	if pub, ok := leaf.PublicKey.(ed25519.PublicKey); !ok || !pub.Equal(priv.Public()) {
		return nil, errors.New("peer: session certificate is not for its key")
	}
	if err := ident.Cert.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		return nil, fmt.Errorf("peer: session certificate not signed by this identity: %w", err)
	}
	if now.Before(leaf.NotBefore) || !now.Add(sessionRenew).Before(leaf.NotAfter) {
		return nil, errors.New("peer: session certificate out of date")
	}
	return &sessionCert{
		cert:  tls.Certificate{Certificate: [][]byte{certDER, ident.Cert.Raw}, PrivateKey: priv, Leaf: leaf},
		start: leaf.NotBefore, expires: leaf.NotAfter,
	}, nil
}

// saveSession writes cert's key and session certificate to path, atomically
// and readable by the owner only.
func saveSession(path string, cert tls.Certificate) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})...)
	f, err := os.CreateTemp(filepath.Dir(path), ".session-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr != nil || cerr != nil {
		os.Remove(f.Name())
		return errors.Join(werr, cerr)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// sessionCertificate returns ident's current session certificate chain,
// making one if there is none or it is about to expire.
func sessionCertificate(ident *identity.Identity, now time.Time) (tls.Certificate, error) {
	sessionMu.Lock()
	defer sessionMu.Unlock()
	if s := sessionCache[ident]; s != nil && !now.Before(s.start) && now.Add(sessionRenew).Before(s.expires) {
		return s.cert, nil
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      pkix.Name{CommonName: "del session " + ident.ID.String()},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(sessionLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ident.Cert, pub, ident.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("peer: session certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	s := &sessionCert{
		cert:    tls.Certificate{Certificate: [][]byte{der, ident.Cert.Raw}, PrivateKey: priv, Leaf: leaf},
		start:   tmpl.NotBefore,
		expires: tmpl.NotAfter,
	}
	sessionCache[ident] = s
	return s.cert, nil
}

// peerIdentity checks the certificates a peer presented and returns its
// identity certificate: either the only one, or the second, which must have
// signed the first (its session certificate) and whose validity covers now.
func peerIdentity(rawCerts [][]byte, now time.Time) (*x509.Certificate, error) {
	switch len(rawCerts) {
	case 0:
		return nil, errors.New("peer presented no certificate")
	case 1:
		cert, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return nil, fmt.Errorf("peer certificate: %w", err)
		}
		return cert, nil
	case 2:
	default:
		return nil, fmt.Errorf("peer presented %d certificates, at most 2 are expected", len(rawCerts))
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return nil, fmt.Errorf("peer session certificate: %w", err)
	}
	ident, err := x509.ParseCertificate(rawCerts[1])
	if err != nil {
		return nil, fmt.Errorf("peer identity certificate: %w", err)
	}
	// The identity certificate need not be a CA certificate (OpenDHT's
	// are not always): the binding is checked as a plain signature.
	if err := ident.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		return nil, fmt.Errorf("peer session certificate is not signed by its identity: %w", err)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("peer session certificate is valid from %s to %s, not now (%s)",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return ident, nil
}
