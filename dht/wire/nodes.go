package wire

import (
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
)

// ID is a 160-bit OpenDHT InfoHash: a node id, a key, a public-key id.
type ID [20]byte

// String returns 40 lowercase hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is all zeros (OpenDHT's "no id").
func (id ID) IsZero() bool { return id == ID{} }

// HashKey is OpenDHT's InfoHash::get: SHA-1 of the text (§13).
func HashKey(text string) ID { return ID(sha1.Sum([]byte(text))) }

// ParseKey reads a key given by a user: 40 hex digits are taken as the id
// itself, anything else is hashed with HashKey, as dhtnode does.
func ParseKey(s string) ID {
	if len(s) == 40 {
		var id ID
		if _, err := hex.Decode(id[:], []byte(strings.ToLower(s))); err == nil {
			return id
		}
	}
	return HashKey(s)
}

// ParseID parses exactly 40 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 40 {
		return id, fmt.Errorf("id %q: want 40 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(strings.ToLower(s))); err != nil {
		return id, fmt.Errorf("id %q: %w", s, err)
	}
	return id, nil
}

// Node is one entry of a compact node list.
type Node struct {
	ID   ID
	Addr netip.AddrPort
}

// Record sizes of the compact node lists (§5).
const (
	Node4Size = 20 + 4 + 2
	Node6Size = 20 + 16 + 2
)

// AppendNodes4 appends the 26-byte records id | IPv4 | port (big endian) of
// the IPv4 nodes in ns; others are skipped.
func AppendNodes4(b []byte, ns []Node) []byte {
	for _, n := range ns {
		a := n.Addr.Addr().Unmap()
		if !a.Is4() {
			continue
		}
		b = append(b, n.ID[:]...)
		ip := a.As4()
		b = append(b, ip[:]...)
		b = binary.BigEndian.AppendUint16(b, n.Addr.Port())
	}
	return b
}

// AppendNodes6 appends the 38-byte records id | IPv6 | port of the IPv6
// nodes in ns; others are skipped.
func AppendNodes6(b []byte, ns []Node) []byte {
	for _, n := range ns {
		a := n.Addr.Addr()
		if !a.Is6() || a.Is4In6() {
			continue
		}
		b = append(b, n.ID[:]...)
		ip := a.As16()
		b = append(b, ip[:]...)
		b = binary.BigEndian.AppendUint16(b, n.Addr.Port())
	}
	return b
}

// ParseNodes4 splits an n4 blob into nodes.
func ParseNodes4(b []byte) ([]Node, error) {
	if len(b)%Node4Size != 0 {
		return nil, malformed(fmt.Sprintf("n4 of %d bytes", len(b)), nil)
	}
	out := make([]Node, 0, len(b)/Node4Size)
	for ; len(b) > 0; b = b[Node4Size:] {
		var n Node
		copy(n.ID[:], b)
		n.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[20:24])), binary.BigEndian.Uint16(b[24:]))
		out = append(out, n)
	}
	return out, nil
}

// ParseNodes6 splits an n6 blob into nodes.
func ParseNodes6(b []byte) ([]Node, error) {
	if len(b)%Node6Size != 0 {
		return nil, malformed(fmt.Sprintf("n6 of %d bytes", len(b)), nil)
	}
	out := make([]Node, 0, len(b)/Node6Size)
	for ; len(b) > 0; b = b[Node6Size:] {
		var n Node
		copy(n.ID[:], b)
		n.Addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[20:36])), binary.BigEndian.Uint16(b[36:]))
		out = append(out, n)
	}
	return out, nil
}
