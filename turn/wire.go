package turn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"
)

// STUN header size (RFC 8489 §5) and the largest frame accepted on a
// control or data connection before ConnectionBind. TURN messages are small;
// 64 KiB covers a STUN length field's whole range.
const (
	headerSize   = 20
	maxFrameSize = headerSize + 0xffff
)

// TURN transport protocol numbers for REQUESTED-TRANSPORT (RFC 8656 §18.7).
const (
	protoUDP = 17
	protoTCP = 6
)

// Errors of the wire codec.
var (
	ErrNotSTUN     = errors.New("turn: not a STUN message")
	ErrMissingAttr = errors.New("turn: missing attribute")
)

// frameLen returns the length of the whole STUN message whose 20-byte header
// starts b (RFC 8489 §5: the length field excludes the header and is a
// multiple of 4), or ErrNotSTUN. It is how both ends cut a TCP stream into
// messages (RFC 8656 §3.1: over TCP, messages are sent back to back).
func frameLen(b []byte) (int, error) {
	if len(b) < headerSize || !stun.IsMessage(b) {
		return 0, ErrNotSTUN
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 {
		return 0, fmt.Errorf("%w: length %d is not a multiple of 4", ErrNotSTUN, n)
	}
	return headerSize + n, nil
}

// decodeMessage parses one complete STUN message. It never keeps b.
func decodeMessage(b []byte) (*stun.Message, error) {
	if _, err := frameLen(b); err != nil {
		return nil, err
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSTUN, err)
	}
	return m, nil
}

// requestedTransport is REQUESTED-TRANSPORT (RFC 8656 §18.7): protocol, then
// three reserved bytes.
type requestedTransport byte

func (t requestedTransport) AddTo(m *stun.Message) error {
	m.Add(stun.AttrRequestedTransport, []byte{byte(t), 0, 0, 0})
	return nil
}

// lifetime is LIFETIME (RFC 8656 §18.2): seconds, 32 bits.
type lifetime time.Duration

func (l lifetime) AddTo(m *stun.Message) error {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, uint32(time.Duration(l)/time.Second))
	m.Add(stun.AttrLifetime, v)
	return nil
}

func getLifetime(m *stun.Message) (time.Duration, error) {
	v, err := m.Get(stun.AttrLifetime)
	if err != nil {
		return 0, fmt.Errorf("%w LIFETIME", ErrMissingAttr)
	}
	if len(v) != 4 {
		return 0, fmt.Errorf("turn: LIFETIME of %d bytes", len(v))
	}
	return time.Duration(binary.BigEndian.Uint32(v)) * time.Second, nil
}

// connectionID is CONNECTION-ID (RFC 6062 §6.2.1): 32 bits naming a peer
// data connection between Connect/ConnectionAttempt and ConnectionBind.
type connectionID uint32

func (c connectionID) AddTo(m *stun.Message) error {
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, uint32(c))
	m.Add(stun.AttrConnectionID, v)
	return nil
}

func getConnectionID(m *stun.Message) (connectionID, error) {
	v, err := m.Get(stun.AttrConnectionID)
	if err != nil {
		return 0, fmt.Errorf("%w CONNECTION-ID", ErrMissingAttr)
	}
	if len(v) != 4 {
		return 0, fmt.Errorf("turn: CONNECTION-ID of %d bytes", len(v))
	}
	return connectionID(binary.BigEndian.Uint32(v)), nil
}

// xorAddr is an XOR-encoded address attribute of type t (XOR-PEER-ADDRESS,
// XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS; RFC 8489 §14.2).
type xorAddr struct {
	t    stun.AttrType
	addr netip.AddrPort
}

func (a xorAddr) AddTo(m *stun.Message) error {
	x := stun.XORMappedAddress{IP: net.IP(a.addr.Addr().Unmap().AsSlice()), Port: int(a.addr.Port())}
	return x.AddToAs(m, a.t)
}

func getXORAddr(m *stun.Message, t stun.AttrType) (netip.AddrPort, error) {
	var x stun.XORMappedAddress
	if err := x.GetFromAs(m, t); err != nil {
		return netip.AddrPort{}, fmt.Errorf("turn: %v: %w", t, err)
	}
	ip, ok := netip.AddrFromSlice(x.IP)
	if !ok || x.Port < 0 || x.Port > 0xffff {
		return netip.AddrPort{}, fmt.Errorf("turn: bad %v", t)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(x.Port)), nil
}

// errorOf returns the TURN error carried by an error response, or nil for
// any other class.
func errorOf(m *stun.Message) *Error {
	if m.Type.Class != stun.ClassErrorResponse {
		return nil
	}
	e := &Error{Method: m.Type.Method.String()}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		e.Code, e.Reason = 0, "error response without ERROR-CODE"
		return e
	}
	e.Code, e.Reason = int(ec.Code), string(ec.Reason)
	return e
}

// TURN and STUN error codes a caller may branch on (RFC 8489 §14.8,
// RFC 8656 §18.8 and §6, RFC 6062 §6.3).
const (
	CodeBadRequest            = 400
	CodeUnauthorized          = 401
	CodeForbidden             = 403
	CodeAllocationMismatch    = 437
	CodeStaleNonce            = 438
	CodeWrongCredentials      = 441
	CodeConnectionExists      = 446
	CodeConnectionTimeout     = 447
	CodeQuotaReached          = 486
	CodeInsufficientCapacity  = 508
	CodeUnsupportedTransport  = 442
	CodeAddressFamilyMismatch = 443
)

// Error is a TURN error response (RFC 8656 §6.4): the method it answered,
// the code and the reason phrase.
type Error struct {
	Method string
	Code   int
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("turn: %s: error %d %s", e.Method, e.Code, e.Reason)
}

// IsCode reports whether err is, or wraps, a TURN error response with code.
func IsCode(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
