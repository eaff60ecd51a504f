package ice

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
)

// Description is what one agent tells the other, by any means (the DHT,
// a file, a pipe): its credentials and candidates. It is independent of
// the transport; Marshal/ParseDescription give it a text form made of the
// SDP attribute lines of RFC 8839 §5:
//
//	a=ice-ufrag:<4..256 ice-chars>
//	a=ice-pwd:<22..256 ice-chars>
//	a=candidate:... (one per candidate, see Candidate.String)
//
// Lines are separated by "\n" (a trailing "\r" is accepted); unknown lines
// are ignored so the format can grow; non-TCP candidates are skipped.
type Description struct {
	Ufrag, Pwd string
	Candidates []Candidate
}

// ErrDescription is returned for a malformed description.
var ErrDescription = errors.New("ice: malformed description")

// MaxDescription bounds a description's text (and so its candidate count).
const MaxDescription = 64 << 10

// Marshal encodes d as text.
func (d Description) Marshal() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "a=ice-ufrag:%s\na=ice-pwd:%s\n", d.Ufrag, d.Pwd)
	for _, c := range d.Candidates {
		b.WriteString("a=")
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// ParseDescription decodes the text form.
func ParseDescription(b []byte) (Description, error) {
	var d Description
	if len(b) > MaxDescription {
		return d, fmt.Errorf("%w: %d bytes", ErrDescription, len(b))
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		switch {
		case strings.HasPrefix(line, "a=ice-ufrag:"):
			d.Ufrag = strings.TrimPrefix(line, "a=ice-ufrag:")
		case strings.HasPrefix(line, "a=ice-pwd:"):
			d.Pwd = strings.TrimPrefix(line, "a=ice-pwd:")
		case strings.HasPrefix(line, "a=candidate:"):
			c, err := ParseCandidate(line)
			if errors.Is(err, ErrNotTCP) {
				continue
			}
			if err != nil {
				return d, fmt.Errorf("%w: %w", ErrDescription, err)
			}
			d.Candidates = append(d.Candidates, c)
		}
	}
	if !validICEChars(d.Ufrag, 4, 256) {
		return d, fmt.Errorf("%w: ufrag %q", ErrDescription, d.Ufrag)
	}
	if !validICEChars(d.Pwd, 22, 256) {
		return d, fmt.Errorf("%w: bad or missing password", ErrDescription)
	}
	return d, nil
}

func validICEChars(s string, lo, hi int) bool {
	if len(s) < lo || len(s) > hi {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '+' || ch == '/') {
			return false
		}
	}
	return true
}

const iceChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"

// randomICEString returns n random ice-chars (RFC 8445 §5.3: ufrag at
// least 24 bits of randomness, password at least 128).
func randomICEString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	for i := range b {
		b[i] = iceChars[int(b[i])%len(iceChars)]
	}
	return string(b)
}
