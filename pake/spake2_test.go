package pake

import (
	"bytes"
	"errors"
	"testing"

	"filippo.io/edwards25519"
)

func exchange(t *testing.T, pwA, pwB string, idB2 []byte) (keyA, keyB []byte, errA, errB error) {
	t.Helper()
	idA, idB := []byte("alice-id"), []byte("bob-id")
	if idB2 == nil {
		idB2 = idB
	}
	a, ma, err := New(A, []byte(pwA))
	if err != nil {
		t.Fatal(err)
	}
	b, mb, err := New(B, []byte(pwB))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := a.Finish(mb, idA, idB)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.Finish(ma, idA, idB2)
	if err != nil {
		t.Fatal(err)
	}
	keyA, errA = a.Verify(cb)
	keyB, errB = b.Verify(ca)
	return
}

func TestSameCodeSameKey(t *testing.T) {
	ka, kb, ea, eb := exchange(t, "42-lemon-otter-crisp", "42-lemon-otter-crisp", nil)
	if ea != nil || eb != nil {
		t.Fatalf("confirmation failed: %v / %v", ea, eb)
	}
	if !bytes.Equal(ka, kb) || len(ka) != 32 {
		t.Fatalf("keys differ: %x / %x", ka, kb)
	}
	// A second run with the same code gives another key.
	kc, _, _, _ := exchange(t, "42-lemon-otter-crisp", "42-lemon-otter-crisp", nil)
	if bytes.Equal(ka, kc) {
		t.Fatal("two runs gave the same key")
	}
}

func TestWrongCodeFailsBothSides(t *testing.T) {
	_, _, ea, eb := exchange(t, "42-lemon-otter-crisp", "42-lemon-otter-crips", nil)
	if !errors.Is(ea, ErrWrongPassword) || !errors.Is(eb, ErrWrongPassword) {
		t.Fatalf("wrong code: %v / %v", ea, eb)
	}
}

func TestIdentitiesAreBound(t *testing.T) {
	_, _, ea, eb := exchange(t, "7-a-b-c", "7-a-b-c", []byte("mallory-id"))
	if ea == nil || eb == nil {
		t.Fatal("confirmation passed although the sides disagree on who B is")
	}
}

func TestBadMessages(t *testing.T) {
	a, _, _ := New(A, []byte("pw"))
	if _, err := a.Finish([]byte{1, 2, 3}, []byte("a"), []byte("b")); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("short message: %v", err)
	}
	// The identity point (and small-order points) cannot be used to force K.
	id := edwards25519.NewIdentityPoint().Bytes()
	a2, _, _ := New(A, []byte("pw"))
	if _, err := a2.Finish(id, []byte("a"), []byte("b")); err == nil {
		// pB = identity gives K = -h·x·w·N ≠ identity, which is fine;
		// what matters is that confirmation then fails for the attacker.
		if _, err := a2.Verify(make([]byte, 32)); !errors.Is(err, ErrWrongPassword) {
			t.Fatalf("forged confirmation accepted: %v", err)
		}
	}
}

func TestConstantsDerivation(t *testing.T) {
	if M.Equal(N) == 1 {
		t.Fatal("M == N")
	}
	// Recomputing gives the same points, in the prime-order subgroup.
	for _, c := range []struct {
		p    *edwards25519.Point
		seed string
	}{{M, "del SPAKE2 edwards25519 point M"}, {N, "del SPAKE2 edwards25519 point N"}} {
		if derivePoint(c.seed).Equal(c.p) != 1 {
			t.Fatalf("%s: derivation is not stable", c.seed)
		}
		l := new(edwards25519.Point).ScalarMult(edwards25519.NewScalar(), c.p)
		if l.Equal(edwards25519.NewIdentityPoint()) != 1 {
			t.Fatal("0·P is not the identity")
		}
	}
}

func FuzzFinish(f *testing.F) {
	_, msg, _ := New(B, []byte("pw"))
	f.Add(msg)
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 32))
	f.Fuzz(func(t *testing.T, m []byte) {
		a, _, _ := New(A, []byte("pw"))
		if _, err := a.Finish(m, []byte("a"), []byte("b")); err == nil {
			if _, err := a.Verify(make([]byte, 32)); err == nil {
				t.Fatal("a zero confirmation verified")
			}
		}
	})
}
