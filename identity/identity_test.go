package identity_test

import (
	"crypto/sha1"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/testkeys"
)

func TestIDIsSHA1OfSPKI(t *testing.T) {
	ident := testkeys.Identity(t, 0)
	der, err := x509.MarshalPKIXPublicKey(&ident.Key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ident.ID, identity.ID(sha1.Sum(der)); got != want {
		t.Fatalf("id %s, want SHA-1 of SPKI %s", got, want)
	}
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(ident.ID.String()) {
		t.Fatalf("id %q is not 40 lowercase hex digits", ident.ID)
	}
	if identity.IDOfCert(ident.Cert) != ident.ID {
		t.Fatal("certificate id differs from key id")
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home")
	want := testkeys.Home(t, dir, 1)
	st, err := os.Stat(filepath.Join(dir, identity.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", st.Mode().Perm())
	}
	got, err := identity.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != want.ID {
		t.Fatalf("loaded id %s, want %s", got.ID, want.ID)
	}
	if err := identity.Save(dir, testkeys.Identity(t, 2)); err == nil {
		t.Fatal("Save replaced an existing identity")
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		_, err := identity.Load(t.TempDir())
		if !errors.Is(err, identity.ErrNoIdentity) {
			t.Fatalf("err %v, want ErrNoIdentity", err)
		}
	})
	t.Run("readable by others", func(t *testing.T) {
		dir := t.TempDir()
		testkeys.Home(t, dir, 0)
		if err := os.Chmod(filepath.Join(dir, identity.KeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := identity.Load(dir)
		if !errors.Is(err, identity.ErrInsecureKey) {
			t.Fatalf("err %v, want ErrInsecureKey", err)
		}
	})
	t.Run("corrupted key", func(t *testing.T) {
		dir := t.TempDir()
		testkeys.Home(t, dir, 0)
		p := filepath.Join(dir, identity.KeyFile)
		b, _ := os.ReadFile(p)
		b[len(b)/2] ^= 0x55
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := identity.Load(dir)
		if !errors.Is(err, identity.ErrCorrupt) {
			t.Fatalf("err %v, want ErrCorrupt", err)
		}
		// LoadOrCreate must not paper over it with a fresh identity.
		if _, created, err := identity.LoadOrCreate(dir); err == nil || created {
			t.Fatalf("LoadOrCreate on a corrupted key: created=%v err=%v", created, err)
		}
		after, _ := os.ReadFile(p)
		if string(after) != string(b) {
			t.Fatal("corrupted key file was rewritten")
		}
	})
	t.Run("certificate of another key", func(t *testing.T) {
		dir := t.TempDir()
		testkeys.Home(t, dir, 0)
		other := testkeys.Identity(t, 1)
		if err := os.WriteFile(filepath.Join(dir, identity.CertFile), other.CertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := identity.Load(dir); !errors.Is(err, identity.ErrCorrupt) {
			t.Fatalf("err %v, want ErrCorrupt", err)
		}
	})
}

func TestParseID(t *testing.T) {
	id := testkeys.Identity(t, 0).ID
	for _, s := range []string{id.String(), regexp.MustCompile(`[a-f]`).ReplaceAllStringFunc(id.String(), func(s string) string { return string(s[0] - 32) })} {
		got, err := identity.ParseID(s)
		if err != nil || got != id {
			t.Fatalf("ParseID(%q) = %v, %v", s, got, err)
		}
	}
	for _, bad := range []string{"", "abc", id.String()[:39] + "g", id.String() + "0"} {
		if _, err := identity.ParseID(bad); !errors.Is(err, identity.ErrBadID) {
			t.Fatalf("ParseID(%q) err %v, want ErrBadID", bad, err)
		}
	}
}
