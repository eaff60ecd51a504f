package dht

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
	"github.com/tinylib/msgp/msgp"
)

// Value types registered by default in OpenDHT (default_types.cpp), with
// the time a storing node keeps them (§12). Unknown types get USER_DATA's.
const (
	TypeUserData      = 0
	TypeDhtMessage    = 1
	TypeIPService     = 2
	TypeImMessage     = 3
	TypeTrustRequest  = 4
	TypeIceCandidates = 5
	TypeCertificate   = 8
)

// TTL returns how long a node stores a value of type t.
func TTL(t uint16) time.Duration {
	switch t {
	case TypeDhtMessage, TypeImMessage:
		return 5 * time.Minute
	case TypeIPService:
		return 15 * time.Minute
	case TypeTrustRequest, TypeCertificate:
		return 7 * 24 * time.Hour
	case TypeIceCandidates:
		return time.Minute
	}
	return 10 * time.Minute
}

// Errors of value checks.
var (
	ErrBadSignature = errors.New("bad value signature")
	ErrNotForUs     = errors.New("encrypted value is for another recipient")
	ErrDecrypt      = errors.New("cannot decrypt value")
)

// Sign makes v a value signed by ident (Value::sign): the owner is ident's
// public key, the signature RSASSA-PKCS1-v1_5 with SHA-512 over the
// canonical msgpack body, exactly what OpenDHT verifies.
func Sign(v *wire.Value, ident *identity.Identity) error {
	if v.Encrypted() {
		return errors.New("cannot sign an encrypted value")
	}
	der, err := x509.MarshalPKIXPublicKey(&ident.Key.PublicKey)
	if err != nil {
		return err
	}
	v.Owner = der
	sum := sha512.Sum512(v.AppendBody(nil))
	sig, err := rsa.SignPKCS1v15(rand.Reader, ident.Key, crypto.SHA512, sum[:])
	if err != nil {
		return fmt.Errorf("sign value: %w", err)
	}
	v.Signature = sig
	return nil
}

// ownerKey parses the owner of a signed value.
func ownerKey(v *wire.Value) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(v.Owner)
	if err != nil {
		return nil, fmt.Errorf("value owner: %w", err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("value owner is %T, OpenDHT signs with RSA only", k)
	}
	return rk, nil
}

// Verify checks the signature of a signed value; unsigned values pass.
func Verify(v *wire.Value) error {
	if !v.Signed() {
		return nil
	}
	k, err := ownerKey(v)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	sum := sha512.Sum512(v.AppendBody(nil))
	if err := rsa.VerifyPKCS1v15(k, crypto.SHA512, sum[:], v.Signature); err != nil {
		return ErrBadSignature
	}
	return nil
}

// OwnerID returns the public-key id of a signed value's owner.
func OwnerID(v *wire.Value) wire.ID { return wire.ID(sha1.Sum(v.Owner)) }

// KeyID returns OpenDHT's public-key id of an RSA key.
func KeyID(k *rsa.PublicKey) wire.ID {
	der, _ := x509.MarshalPKIXPublicKey(k)
	return wire.ID(sha1.Sum(der))
}

// Encrypt seals v for the holder of to, as Value::encrypt does: set the
// recipient, sign with from, then encrypt the packed {"body","sig"} with
// RSA-PKCS#1 v1.5, adding AES-256-GCM when it does not fit in one RSA block
// (§13). The result has v's id and only a cypher.
func Encrypt(v *wire.Value, from *identity.Identity, to *rsa.PublicKey) (*wire.Value, error) {
	if v.Encrypted() {
		return nil, errors.New("value is already encrypted")
	}
	v.To = KeyID(to)
	if err := Sign(v, from); err != nil {
		return nil, err
	}
	plain := v.AppendDat(nil)
	c, err := rsaEncrypt(to, plain)
	if err != nil {
		return nil, err
	}
	return &wire.Value{ID: v.ID, Cypher: c}, nil
}

func rsaEncrypt(to *rsa.PublicKey, plain []byte) ([]byte, error) {
	k := to.Size()
	if len(plain) <= k-11 {
		return rsa.EncryptPKCS1v15(rand.Reader, to, plain)
	}
	keyLen := 32
	for keyLen > k-11 {
		keyLen -= 8
	}
	aesKey := make([]byte, keyLen)
	if _, err := rand.Read(aesKey); err != nil {
		return nil, err
	}
	head, err := rsa.EncryptPKCS1v15(rand.Reader, to, aesKey)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(aesKey)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	out := append(head, iv...)
	return gcm.Seal(out, iv, plain, nil), nil
}

func rsaDecrypt(key *rsa.PrivateKey, c []byte) ([]byte, error) {
	k := key.Size()
	if len(c) < k {
		return nil, ErrDecrypt
	}
	if len(c) == k {
		return rsa.DecryptPKCS1v15(nil, key, c)
	}
	aesKey, err := rsa.DecryptPKCS1v15(nil, key, c[:k])
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(aesKey)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	rest := c[k:]
	if len(rest) < gcm.NonceSize()+gcm.Overhead() {
		return nil, ErrDecrypt
	}
	return gcm.Open(nil, rest[:gcm.NonceSize()], rest[gcm.NonceSize():], nil)
}

// Decrypt opens a value encrypted for ident and checks, as Value::decrypt
// does, that it names ident as recipient and carries a valid signature.
func Decrypt(v *wire.Value, ident *identity.Identity) (*wire.Value, error) {
	if !v.Encrypted() {
		return v, nil
	}
	plain, err := rsaDecrypt(ident.Key, v.Cypher)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	out := &wire.Value{ID: v.ID, Priority: v.Priority}
	rest, err := out.ParseDat(plain)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: bad plaintext", ErrDecrypt)
	}
	if out.To != wire.ID(ident.ID) {
		return nil, ErrNotForUs
	}
	if !out.Signed() {
		return nil, fmt.Errorf("%w: unsigned", ErrDecrypt)
	}
	if err := Verify(out); err != nil {
		return nil, err
	}
	return out, nil
}

// CertificateValue is the value by which OpenDHT publishes an identity: id
// 1, type 8, data = msgpack bin(PEM certificate), stored at the public-key
// id (§12).
func CertificateValue(ident *identity.Identity) *wire.Value {
	return &wire.Value{ID: 1, Type: TypeCertificate, Data: msgp.AppendBytes(nil, ident.CertPEM())}
}

// ParseCertificateValue reads the certificate out of a type-8 value.
func ParseCertificateValue(v *wire.Value) (*x509.Certificate, error) {
	if v.Type != TypeCertificate {
		return nil, fmt.Errorf("value type %d is not a certificate", v.Type)
	}
	pemBytes, _, err := msgp.ReadBytesZC(v.Data)
	if err != nil {
		return nil, fmt.Errorf("certificate value: %w", err)
	}
	cert, err := identity.ParseCertPEM(pemBytes)
	if err == nil {
		return cert, nil
	}
	// GnuTLS gives certificates random serial numbers, negative half of the
	// time, which crypto/x509 refuses. The key is all we need: read the
	// SubjectPublicKeyInfo out of the DER ourselves.
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, err
	}
	spki, serr := certSPKI(blk.Bytes)
	if serr != nil {
		return nil, fmt.Errorf("%v; reading its key: %w", err, serr)
	}
	pub, perr := x509.ParsePKIXPublicKey(spki)
	if perr != nil {
		return nil, perr
	}
	return &x509.Certificate{Raw: blk.Bytes, RawSubjectPublicKeyInfo: spki, PublicKey: pub, PublicKeyAlgorithm: x509.RSA}, nil
}

// certSPKI returns the DER SubjectPublicKeyInfo of a certificate:
// Certificate = SEQUENCE { tbs SEQUENCE { [0] version OPTIONAL, serial,
// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }.
func certSPKI(der []byte) ([]byte, error) {
	var outer asn1.RawValue
	if _, err := asn1.Unmarshal(der, &outer); err != nil {
		return nil, err
	}
	var tbs asn1.RawValue
	if _, err := asn1.Unmarshal(outer.Bytes, &tbs); err != nil {
		return nil, err
	}
	rest := tbs.Bytes
	var fields []asn1.RawValue
	for len(rest) > 0 && len(fields) < 8 {
		var f asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &f); err != nil {
			return nil, err
		}
		fields = append(fields, f)
	}
	if len(fields) > 0 && fields[0].Class == asn1.ClassContextSpecific && fields[0].Tag == 0 {
		fields = fields[1:]
	}
	if len(fields) < 6 {
		return nil, errors.New("short TBSCertificate")
	}
	return fields[5].FullBytes, nil
}
