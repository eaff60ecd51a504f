package dht

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"time"
)

// tokens mints and checks write tokens (opendht-wire.md §6):
// SHA-256(secret || ip || port), the secret rotating every 15-45 minutes,
// tokens from the current and the previous secret accepted. A token proves
// that the requester receives datagrams at the address it claims.
type tokens struct {
	cur, prev [8]byte
	rotateAt  time.Time
	random    func([]byte)
}

func newTokens(random func([]byte), now time.Time) *tokens {
	t := &tokens{random: random}
	random(t.cur[:])
	random(t.prev[:])
	t.schedule(now)
	return t
}

func (t *tokens) schedule(now time.Time) {
	var r [2]byte
	t.random(r[:])
	span := 30 * time.Minute
	t.rotateAt = now.Add(15*time.Minute + time.Duration(binary.BigEndian.Uint16(r[:]))*span/65536)
}

// maintain rotates the secret when due.
func (t *tokens) maintain(now time.Time) {
	if now.Before(t.rotateAt) {
		return
	}
	t.prev = t.cur
	t.random(t.cur[:])
	t.schedule(now)
}

func makeToken(secret [8]byte, addr netip.AddrPort) []byte {
	h := sha256.New()
	h.Write(secret[:])
	a := addr.Addr().Unmap()
	h.Write(a.AsSlice())
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], addr.Port())
	h.Write(p[:])
	return h.Sum(nil)
}

func (t *tokens) make(addr netip.AddrPort) []byte { return makeToken(t.cur, addr) }

func (t *tokens) valid(tok []byte, addr netip.AddrPort) bool {
	return hmac.Equal(tok, makeToken(t.cur, addr)) || hmac.Equal(tok, makeToken(t.prev, addr))
}
