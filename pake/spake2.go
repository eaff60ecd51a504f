// Package pake implements SPAKE2 (RFC 9382) over edwards25519, the
// password-authenticated key exchange behind DEL's one-off code phrases.
//
// Two parties who share a low-entropy password (the code phrase) each send
// one message and derive the same key only if their passwords match; an
// eavesdropper learns nothing that allows an offline guess, and an active
// attacker gets one guess per run. Key confirmation (RFC 9382 §4) tells each
// side whether the other derived the same key.
//
// Group and constants: edwards25519 (filippo.io/edwards25519), cofactor h = 8.
// M and N are points of unknown discrete logarithm, derived by hashing a
// seed (see derivePoint; they are recomputed and checked by the tests):
// SHA-256(seed || counter) for counter = 0, 1, … until the bytes decode to
// a point, which is then multiplied by the cofactor.
//
// Protocol (A is the side that starts, B the one that answers; idA and idB
// are their identities, here DEL peer ids):
//
//	w  = SHA-512("del/spake2/v1/w" || password) reduced mod L
//	A: x random, pA = x·G + w·M                 → pA
//	B: y random, pB = y·G + w·N                 → pB
//	A: K = h·x·(pB − w·N)     B: K = h·y·(pA − w·M)
//	TT = len‖idA ‖ len‖idB ‖ len‖pA ‖ len‖pB ‖ len‖K ‖ len‖w   (lengths: 8-byte LE)
//	Ke ‖ Ka = SHA-512(TT)  (32 bytes each)
//	KcA ‖ KcB = HKDF-SHA-256(Ka, info "ConfirmationKeys"), 32 bytes each
//	cA = HMAC-SHA-256(KcA, TT), cB = HMAC-SHA-256(KcB, TT)
//
// Ke is the shared secret. Binding idA and idB into TT means a successful
// confirmation also authenticates who is talking: both sides agree on both
// ids, which DEL then pins in TLS.
package pake

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"

	"filippo.io/edwards25519"
)

// Role is A (starts) or B (answers).
type Role int

// Roles.
const (
	A Role = iota
	B
)

var (
	// M and N are the SPAKE2 constants for A and B.
	M = derivePoint("del SPAKE2 edwards25519 point M")
	N = derivePoint("del SPAKE2 edwards25519 point N")
)

// derivePoint hashes seed to a point of the prime-order subgroup.
func derivePoint(seed string) *edwards25519.Point {
	for ctr := 0; ctr < 256; ctr++ {
		h := sha256.Sum256(append([]byte(seed), byte(ctr)))
		p, err := new(edwards25519.Point).SetBytes(h[:])
		if err != nil {
			continue
		}
		p.MultByCofactor(p)
		if p.Equal(edwards25519.NewIdentityPoint()) == 1 {
			continue
		}
		return p
	}
	panic("pake: no point for seed " + seed)
}

// ErrBadMessage is returned for a message that is not a valid point or
// yields the identity.
var ErrBadMessage = errors.New("pake: bad message")

// ErrWrongPassword is returned when key confirmation fails: the other side
// used another password (or other identities).
var ErrWrongPassword = errors.New("pake: key confirmation failed (wrong code?)")

// State is one side of an exchange.
type State struct {
	role     Role
	w        *edwards25519.Scalar
	x        *edwards25519.Scalar
	msg      []byte // our message
	ke       []byte
	kcA, kcB []byte
	tt       []byte
}

// New starts an exchange as role with the shared password. It returns the
// state and the message to send.
func New(role Role, password []byte) (*State, []byte, error) {
	wh := sha512.Sum512(append([]byte("del/spake2/v1/w"), password...))
	w, err := edwards25519.NewScalar().SetUniformBytes(wh[:])
	if err != nil {
		return nil, nil, err
	}
	var r [64]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, nil, err
	}
	x, err := edwards25519.NewScalar().SetUniformBytes(r[:])
	if err != nil {
		return nil, nil, err
	}
	blind := M
	if role == B {
		blind = N
	}
	p := new(edwards25519.Point).ScalarBaseMult(x)
	p.Add(p, new(edwards25519.Point).ScalarMult(w, blind))
	s := &State{role: role, w: w, x: x, msg: p.Bytes()}
	return s, s.msg, nil
}

// Finish takes the other side's message and the two identities (the same
// idA, idB on both sides) and derives the keys. It returns our confirmation
// MAC, to send.
func (s *State) Finish(peerMsg, idA, idB []byte) (confirm []byte, err error) {
	q, err := new(edwards25519.Point).SetBytes(peerMsg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMessage, err)
	}
	blind := N
	if s.role == B {
		blind = M
	}
	t := new(edwards25519.Point).Subtract(q, new(edwards25519.Point).ScalarMult(s.w, blind))
	t.MultByCofactor(t)
	k := new(edwards25519.Point).ScalarMult(s.x, t)
	if k.Equal(edwards25519.NewIdentityPoint()) == 1 {
		return nil, ErrBadMessage
	}
	pA, pB := s.msg, peerMsg
	if s.role == B {
		pA, pB = peerMsg, s.msg
	}
	var tt []byte
	for _, f := range [][]byte{idA, idB, pA, pB, k.Bytes(), s.w.Bytes()} {
		tt = binary.LittleEndian.AppendUint64(tt, uint64(len(f)))
		tt = append(tt, f...)
	}
	h := sha512.Sum512(tt)
	s.tt, s.ke = tt, h[:32]
	kc, err := hkdf.Key(sha256.New, h[32:], nil, "ConfirmationKeys", 64)
	if err != nil {
		return nil, err
	}
	s.kcA, s.kcB = kc[:32], kc[32:]
	mine := s.kcA
	if s.role == B {
		mine = s.kcB
	}
	return mac(mine, tt), nil
}

// Verify checks the other side's confirmation MAC and returns the shared
// key on success.
func (s *State) Verify(peerConfirm []byte) ([]byte, error) {
	if s.tt == nil {
		return nil, errors.New("pake: Verify before Finish")
	}
	theirs := s.kcB
	if s.role == B {
		theirs = s.kcA
	}
	if !hmac.Equal(peerConfirm, mac(theirs, s.tt)) {
		return nil, ErrWrongPassword
	}
	return s.ke, nil
}

func mac(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
