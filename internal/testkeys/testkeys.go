// Package testkeys gives tests ready-made RSA-4096 identities, because
// generating one takes seconds. The keys in testdata are for tests only.
package testkeys

import (
	"crypto/rsa"
	"crypto/x509"
	"embed"
	"encoding/pem"
	"fmt"
	"sync"
	"testing"

	"github.com/del-share/del/identity"
)

//go:embed testdata/*.pem
var keys embed.FS

// Count is how many distinct identities are available.
const Count = 6

var (
	mu    sync.Mutex
	cache = map[int]*identity.Identity{}
)

// Identity returns test identity i (0 <= i < Count). The same i always has
// the same key and so the same peer id.
func Identity(t testing.TB, i int) *identity.Identity {
	t.Helper()
	ident, err := Get(i)
	if err != nil {
		t.Fatal(err)
	}
	return ident
}

// Get is Identity for code without a testing.TB (benchmarks, helpers).
func Get(i int) (*identity.Identity, error) {
	mu.Lock()
	defer mu.Unlock()
	if id, ok := cache[i]; ok {
		return id, nil
	}
	b, err := keys.ReadFile(fmt.Sprintf("testdata/key%d.pem", i))
	if err != nil {
		return nil, fmt.Errorf("testkeys: no key %d: %w", i, err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ident, err := identity.FromKey(fmt.Sprintf("test-%d", i), k.(*rsa.PrivateKey), nil)
	if err != nil {
		return nil, err
	}
	cache[i] = ident
	return ident, nil
}

// Home creates a device state folder under dir holding test identity i, as
// `del` would after its first run, and returns the identity.
func Home(t testing.TB, dir string, i int) *identity.Identity {
	t.Helper()
	ident := Identity(t, i)
	if err := identity.Save(dir, ident); err != nil {
		t.Fatal(err)
	}
	return ident
}
