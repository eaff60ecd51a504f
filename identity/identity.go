// Package identity holds a device's long-term key pair and certificate, and
// the peer id derived from them.
//
// The format is OpenDHT's (see ../shared/reference/opendht-wire.md §13): an
// RSA-4096 private key and a self-signed X.509 certificate. The peer id is
// OpenDHT's public-key id, SHA-1 of the DER SubjectPublicKeyInfo, printed as
// 40 lowercase hex digits. Because the id is a hash of the key, anyone who
// holds an id can check a presented certificate against it with no CA.
//
// On disk, a device's state folder holds identity.key (PKCS#8 PEM, mode 0600)
// and identity.crt (PEM). A key file that cannot be parsed, that does not match
// the certificate, or that others can read is an error: the identity is never
// regenerated behind the user's back, because a new key is a new device.
package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// KeyBits is the RSA modulus size of new identities, OpenDHT's default.
const KeyBits = 4096

// File names inside a device's state folder.
const (
	KeyFile  = "identity.key"
	CertFile = "identity.crt"
)

// ID is a peer id: SHA-1 of a public key's DER SubjectPublicKeyInfo (an
// OpenDHT InfoHash).
type ID [20]byte

// String returns the id as 40 lowercase hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for logs and progress lines.
func (id ID) Short() string { return id.String()[:8] }

// IsZero reports whether id is the zero id.
func (id ID) IsZero() bool { return id == ID{} }

// ErrBadID is returned by ParseID for text that is not 40 hex digits.
var ErrBadID = errors.New("peer id must be 40 hex digits")

// ParseID parses 40 hex digits, either case.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("%q: %w", s, ErrBadID)
	}
	if _, err := hex.Decode(id[:], []byte(strings.ToLower(s))); err != nil {
		return id, fmt.Errorf("%q: %w", s, ErrBadID)
	}
	return id, nil
}

// IDOf returns the peer id of a public key.
func IDOf(pub crypto.PublicKey) (ID, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ID{}, fmt.Errorf("marshal public key: %w", err)
	}
	return ID(sha1.Sum(der)), nil
}

// IDOfCert returns the peer id of a certificate's subject key. It hashes the
// certificate's own SubjectPublicKeyInfo bytes, so the id does not depend on
// how Go would re-encode the key.
func IDOfCert(cert *x509.Certificate) ID {
	return ID(sha1.Sum(cert.RawSubjectPublicKeyInfo))
}

// Identity is a device's key pair and self-signed certificate.
type Identity struct {
	Key  *rsa.PrivateKey
	Cert *x509.Certificate
	ID   ID
}

// LongID is OpenDHT's long id: SHA-256 of the DER SubjectPublicKeyInfo.
func (i *Identity) LongID() [32]byte { return sha256.Sum256(i.Cert.RawSubjectPublicKeyInfo) }

// TLSCertificate returns the identity as a certificate for crypto/tls.
func (i *Identity) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{i.Cert.Raw}, PrivateKey: i.Key, Leaf: i.Cert}
}

// CertPEM returns the certificate in PEM, as OpenDHT publishes it (type 8 values).
func (i *Identity) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.Cert.Raw})
}

// Generate makes a new RSA identity of the given size (KeyBits for real use)
// with a self-signed certificate named name. random may be nil for crypto/rand.
func Generate(name string, bits int, random io.Reader) (*Identity, error) {
	if random == nil {
		random = rand.Reader
	}
	key, err := rsa.GenerateKey(random, bits)
	if err != nil {
		return nil, fmt.Errorf("generate RSA-%d key: %w", bits, err)
	}
	return FromKey(name, key, random)
}

// oidUID is the LDAP userid attribute (RFC 4519), which OpenDHT sets to the
// public-key id in the certificates it generates.
var oidUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}

// FromKey makes a self-signed certificate for an existing key.
func FromKey(name string, key *rsa.PrivateKey, random io.Reader) (*Identity, error) {
	if random == nil {
		random = rand.Reader
	}
	id, err := IDOf(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(random, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	if name == "" {
		name = "del-" + id.Short()
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName: name,
			ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidUID, Value: id.String()}},
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(random, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse own certificate: %w", err)
	}
	return &Identity{Key: key, Cert: cert, ID: id}, nil
}

// ErrNoIdentity is returned by Load when the folder holds no identity yet.
var ErrNoIdentity = errors.New("no identity")

// ErrInsecureKey is returned when the key file can be read by others.
var ErrInsecureKey = errors.New("identity key file is readable by group or others")

// ErrCorrupt is returned for a key or certificate file that cannot be used.
var ErrCorrupt = errors.New("identity file is corrupted")

// Load reads the identity stored in dir. It returns ErrNoIdentity (wrapped)
// when neither file exists; any other problem is an error that names the file.
func Load(dir string) (*Identity, error) {
	keyPath := filepath.Join(dir, KeyFile)
	certPath := filepath.Join(dir, CertFile)
	st, err := os.Stat(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		if _, cerr := os.Stat(certPath); cerr == nil {
			return nil, fmt.Errorf("%s exists but %s is missing: %w", certPath, keyPath, ErrCorrupt)
		}
		return nil, fmt.Errorf("%s: %w", dir, ErrNoIdentity)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o, want 0600 (fix with: chmod 600 %s): %w",
			keyPath, st.Mode().Perm(), keyPath, ErrInsecureKey)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", keyPath, err, ErrCorrupt)
	}
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		// A lost certificate can be remade from the key without changing the id.
		ident, ferr := FromKey("", key, nil)
		if ferr != nil {
			return nil, ferr
		}
		if werr := writeFileAtomic(certPath, ident.CertPEM(), 0o644); werr != nil {
			return nil, werr
		}
		return ident, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", certPath, err, ErrCorrupt)
	}
	certKey, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || !certKey.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to the key in %s: %w", certPath, keyPath, ErrCorrupt)
	}
	return &Identity{Key: key, Cert: cert, ID: IDOfCert(cert)}, nil
}

// LoadOrCreate loads the identity in dir, creating dir and a new identity
// when there is none. It never replaces an identity that exists but is broken.
func LoadOrCreate(dir string) (ident *Identity, created bool, err error) {
	ident, err = Load(dir)
	if err == nil || !errors.Is(err, ErrNoIdentity) {
		return ident, false, err
	}
	ident, err = Generate("", KeyBits, nil)
	if err != nil {
		return nil, false, err
	}
	if err := Save(dir, ident); err != nil {
		return nil, false, err
	}
	return ident, true, nil
}

// Save writes ident into dir (created with mode 0700 if missing). It refuses
// to replace an existing key file.
func Save(dir string, ident *Identity) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	keyPath := filepath.Join(dir, KeyFile)
	if _, err := os.Lstat(keyPath); err == nil {
		return fmt.Errorf("%s already exists; refusing to replace an identity", keyPath)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ident.Key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, CertFile), ident.CertPEM(), 0o644)
}

func parseKey(b []byte) (*rsa.PrivateKey, error) {
	blk, rest := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, errors.New("trailing data after the PEM block")
	}
	var k any
	var err error
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
	}
	if err != nil {
		return nil, err
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want RSA (OpenDHT identities are RSA)", k)
	}
	if err := rk.Validate(); err != nil {
		return nil, err
	}
	return rk, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// ParseCertPEM parses the first certificate of a PEM chain, such as an
// OpenDHT certificate value.
func ParseCertPEM(b []byte) (*x509.Certificate, error) { return parseCert(b) }

// writeFileAtomic writes data to a temporary file beside path and renames it
// into place, so a crash never leaves a truncated identity.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	ok = true
	return nil
}
