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

func makeToken(secret [8]byte, addr netip.AddrPort) [32]byte {
	// One SHA-256 over a stack buffer: no allocation on the request path.
	var buf [8 + 16 + 2]byte
	b := append(buf[:0], secret[:]...)
	a := addr.Addr().Unmap()
	if a.Is4() {
		ip := a.As4()
		b = append(b, ip[:]...)
	} else {
		ip := a.As16()
		b = append(b, ip[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, addr.Port())
	return sha256.Sum256(b)
}

func (t *tokens) make(addr netip.AddrPort) []byte {
	tok := makeToken(t.cur, addr)
	return tok[:]
}

func (t *tokens) valid(tok []byte, addr netip.AddrPort) bool {
	cur, prev := makeToken(t.cur, addr), makeToken(t.prev, addr)
	return hmac.Equal(tok, cur[:]) || hmac.Equal(tok, prev[:])
}
