package ice

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/pion/stun/v4"
)

// Connectivity-check messages (RFC 8445 §7.2.2, §7.3): pure builders and
// parsers over pion/stun. A check is a Binding request with
//
//	USERNAME        "<recipient ufrag>:<sender ufrag>" (§7.2.2)
//	PRIORITY        the priority a peer-reflexive candidate would have (§7.1.1)
//	ICE-CONTROLLING or ICE-CONTROLLED with the sender's 64-bit tie-breaker
//	USE-CANDIDATE   (controlling only) to nominate (§8.1.1)
//	MESSAGE-INTEGRITY  short-term credential: the recipient's password
//	FINGERPRINT
//
// and the success response carries XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY
// keyed by the responder's password, and FINGERPRINT.

// Errors of check parsing. Each maps to a reaction in checkError.
var (
	ErrNotSTUN         = errors.New("ice: not a STUN message")
	ErrNoFingerprint   = errors.New("ice: STUN message without valid FINGERPRINT")
	ErrNoIntegrity     = errors.New("ice: STUN request without USERNAME or MESSAGE-INTEGRITY")
	ErrUnknownUsername = errors.New("ice: unknown USERNAME")
	ErrBadIntegrity    = errors.New("ice: MESSAGE-INTEGRITY mismatch")
	ErrNoRole          = errors.New("ice: check without ICE-CONTROLLING or ICE-CONTROLLED")
)

// checkError maps a request-parsing error to the RFC 5389 §10.1.2 / RFC 8445
// §7.3 reaction: an error code to answer with, or 0 to drop silently.
func checkError(err error) stun.ErrorCode {
	switch {
	case errors.Is(err, ErrNoIntegrity), errors.Is(err, ErrNoRole):
		return stun.CodeBadRequest
	case errors.Is(err, ErrUnknownUsername), errors.Is(err, ErrBadIntegrity):
		return stun.CodeUnauthorized
	}
	return 0 // not STUN, no fingerprint, not a request: drop
}

type checkRequest struct {
	tx           [stun.TransactionIDSize]byte
	username     string
	priority     uint32
	controlling  bool
	tieBreaker   uint64
	useCandidate bool
}

type uint32Attr struct {
	t stun.AttrType
	v uint32
}

func (a uint32Attr) AddTo(m *stun.Message) error {
	m.Add(a.t, binary.BigEndian.AppendUint32(nil, a.v))
	return nil
}

type uint64Attr struct {
	t stun.AttrType
	v uint64
}

func (a uint64Attr) AddTo(m *stun.Message) error {
	m.Add(a.t, binary.BigEndian.AppendUint64(nil, a.v))
	return nil
}

type flagAttr stun.AttrType

func (a flagAttr) AddTo(m *stun.Message) error {
	m.Add(stun.AttrType(a), nil)
	return nil
}

// buildCheck encodes a Binding request; pwd is the recipient's password.
func buildCheck(r checkRequest, pwd string) ([]byte, error) {
	role := stun.AttrICEControlled
	if r.controlling {
		role = stun.AttrICEControlling
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(r.tx), stun.BindingRequest,
		stun.NewUsername(r.username),
		uint32Attr{stun.AttrPriority, r.priority},
		uint64Attr{role, r.tieBreaker},
	}
	if r.useCandidate {
		setters = append(setters, flagAttr(stun.AttrUseCandidate))
	}
	setters = append(setters, stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	m, err := stun.Build(setters...)
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

// decodeSTUN decodes b and checks its FINGERPRINT.
func decodeSTUN(b []byte) (*stun.Message, error) {
	if !stun.IsMessage(b) {
		return nil, ErrNotSTUN
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSTUN, err)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		return nil, ErrNoFingerprint
	}
	return m, nil
}

// parseCheck validates a Binding request addressed to an agent with the
// given credentials (RFC 8445 §7.3, RFC 5389 §10.1.2).
func parseCheck(m *stun.Message, localUfrag, localPwd string) (checkRequest, error) {
	var r checkRequest
	r.tx = m.TransactionID
	if m.Type != stun.BindingRequest {
		return r, fmt.Errorf("%w: %s is not a Binding request", ErrNotSTUN, m.Type)
	}
	u, err := m.Get(stun.AttrUsername)
	if err != nil || !m.Contains(stun.AttrMessageIntegrity) {
		return r, ErrNoIntegrity
	}
	r.username = string(u)
	recipient, _, ok := strings.Cut(r.username, ":")
	if !ok || recipient != localUfrag {
		return r, ErrUnknownUsername
	}
	if err := stun.NewShortTermIntegrity(localPwd).Check(m); err != nil {
		return r, ErrBadIntegrity
	}
	if v, err := m.Get(stun.AttrPriority); err == nil && len(v) == 4 {
		r.priority = binary.BigEndian.Uint32(v)
	} else {
		return r, fmt.Errorf("%w: no PRIORITY", ErrNoRole)
	}
	if v, err := m.Get(stun.AttrICEControlling); err == nil && len(v) == 8 {
		r.controlling, r.tieBreaker = true, binary.BigEndian.Uint64(v)
	} else if v, err := m.Get(stun.AttrICEControlled); err == nil && len(v) == 8 {
		r.tieBreaker = binary.BigEndian.Uint64(v)
	} else {
		return r, ErrNoRole
	}
	r.useCandidate = m.Contains(stun.AttrUseCandidate)
	return r, nil
}

// buildSuccess answers a check; pwd is our (the responder's) password.
func buildSuccess(tx [stun.TransactionIDSize]byte, mapped netip.AddrPort, pwd string) ([]byte, error) {
	m, err := stun.Build(stun.NewTransactionIDSetter(tx), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(mapped.Addr().Unmap().AsSlice()), Port: int(mapped.Port())},
		stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

// buildError answers with an error code. 401/400 carry no integrity (we do
// not know or trust the key); 487 is integrity-protected (RFC 8445 §7.3.1.1).
func buildError(tx [stun.TransactionIDSize]byte, code stun.ErrorCode, pwd string) ([]byte, error) {
	setters := []stun.Setter{stun.NewTransactionIDSetter(tx), stun.BindingError, code}
	if pwd != "" {
		setters = append(setters, stun.NewShortTermIntegrity(pwd))
	}
	setters = append(setters, stun.Fingerprint)
	m, err := stun.Build(setters...)
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

type checkResponse struct {
	tx     [stun.TransactionIDSize]byte
	ok     bool
	code   stun.ErrorCode
	mapped netip.AddrPort
}

// parseResponse validates a response to one of our checks; pwd is the
// peer's password. Error responses other than 487 are accepted without
// integrity (a 401 cannot carry it).
func parseResponse(m *stun.Message, pwd string) (checkResponse, error) {
	r := checkResponse{tx: m.TransactionID}
	switch m.Type {
	case stun.BindingSuccess:
		if err := stun.NewShortTermIntegrity(pwd).Check(m); err != nil {
			return r, ErrBadIntegrity
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(m); err == nil {
			if a, ok := netip.AddrFromSlice(xa.IP); ok {
				r.mapped = netip.AddrPortFrom(a.Unmap(), uint16(xa.Port))
			}
		}
		r.ok = true
	case stun.BindingError:
		var ec stun.ErrorCodeAttribute
		if err := ec.GetFrom(m); err != nil {
			return r, fmt.Errorf("%w: error response without ERROR-CODE", ErrNotSTUN)
		}
		r.code = ec.Code
		if r.code == stun.CodeRoleConflict {
			if err := stun.NewShortTermIntegrity(pwd).Check(m); err != nil {
				return r, ErrBadIntegrity
			}
		}
	default:
		return r, fmt.Errorf("%w: unexpected %s", ErrNotSTUN, m.Type)
	}
	return r, nil
}
