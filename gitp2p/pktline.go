package gitp2p

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// pkt-line limits (gitprotocol-common(5), "pkt-line Format").
const (
	// MaxPacketLen is the largest pkt-line, its 4-byte length included.
	MaxPacketLen = 65520
	// MaxPayload is the largest payload of one pkt-line.
	MaxPayload = MaxPacketLen - 4
	// MaxSidebandData is the largest side-band-64k payload after the band byte.
	MaxSidebandData = MaxPayload - 1
	// SmallSidebandData is the largest payload of the old side-band (1000-byte packets).
	SmallSidebandData = 1000 - 5
)

// Kind tells a data packet from the special packets.
type Kind uint8

const (
	// Data is an ordinary packet: 4 hex digits of total length, then the payload.
	Data Kind = iota
	// Flush is "0000": the end of a list or of a message.
	Flush
	// Delim is "0001": a section separator (protocol v2).
	Delim
	// ResponseEnd is "0002": the end of a response (protocol v2 stateless).
	ResponseEnd
)

func (k Kind) String() string {
	switch k {
	case Data:
		return "data"
	case Flush:
		return "flush"
	case Delim:
		return "delim"
	case ResponseEnd:
		return "response-end"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Side-band channels (gitprotocol-pack(5), "Packfile Data").
const (
	BandData     = 1
	BandProgress = 2
	BandError    = 3
)

// Errors of the codec. Wrapped errors name the offending bytes.
var (
	// ErrBadLength is a length field that is not 4 hex digits, or is 3 ("0003").
	ErrBadLength = errors.New("pkt-line: bad length")
	// ErrTooLong is a packet or payload over MaxPacketLen.
	ErrTooLong = errors.New("pkt-line: longer than 65520 bytes")
	// ErrBadSideband is a side-band packet without a band byte or with an unknown band.
	ErrBadSideband = errors.New("pkt-line: bad side-band packet")
)

func unhex(c byte) (int, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}

// ParseHeader decodes the 4-byte length of a pkt-line. It returns the kind
// and, for Data, the payload length (0-65516).
func ParseHeader(h []byte) (Kind, int, error) {
	if len(h) < 4 {
		return 0, 0, io.ErrUnexpectedEOF
	}
	n := 0
	for _, c := range h[:4] {
		v, ok := unhex(c)
		if !ok {
			return 0, 0, fmt.Errorf("%w: %q", ErrBadLength, h[:4])
		}
		n = n<<4 | v
	}
	switch {
	case n == 0:
		return Flush, 0, nil
	case n == 1:
		return Delim, 0, nil
	case n == 2:
		return ResponseEnd, 0, nil
	case n == 3:
		return 0, 0, fmt.Errorf("%w: %q", ErrBadLength, h[:4])
	case n > MaxPacketLen:
		return 0, 0, fmt.Errorf("%w: %q", ErrTooLong, h[:4])
	}
	return Data, n - 4, nil
}

// Parse decodes the first pkt-line of b. It returns the kind, the payload
// (aliasing b) and the number of bytes used; io.ErrUnexpectedEOF means b
// holds only part of a packet.
func Parse(b []byte) (kind Kind, payload []byte, n int, err error) {
	kind, size, err := ParseHeader(b)
	if err != nil {
		return 0, nil, 0, err
	}
	if len(b) < 4+size {
		return 0, nil, 0, io.ErrUnexpectedEOF
	}
	return kind, b[4 : 4+size], 4 + size, nil
}

const hexDigits = "0123456789abcdef"

func appendLen(dst []byte, n int) []byte {
	return append(dst, hexDigits[n>>12&15], hexDigits[n>>8&15], hexDigits[n>>4&15], hexDigits[n&15])
}

// AppendData appends payload as one data packet.
func AppendData(dst, payload []byte) ([]byte, error) {
	if len(payload) > MaxPayload {
		return dst, fmt.Errorf("%w: payload of %d bytes", ErrTooLong, len(payload))
	}
	return append(appendLen(dst, len(payload)+4), payload...), nil
}

// AppendString appends s as one data packet; s must fit (callers format
// short protocol lines).
func AppendString(dst []byte, s string) []byte {
	if len(s) > MaxPayload {
		panic("gitp2p: protocol line too long")
	}
	return append(appendLen(dst, len(s)+4), s...)
}

// AppendFlush appends "0000".
func AppendFlush(dst []byte) []byte { return append(dst, "0000"...) }

// AppendDelim appends "0001".
func AppendDelim(dst []byte) []byte { return append(dst, "0001"...) }

// AppendResponseEnd appends "0002".
func AppendResponseEnd(dst []byte) []byte { return append(dst, "0002"...) }

// AppendSideband appends data on band as as many packets as needed, each
// carrying at most max bytes of data (MaxSidebandData for side-band-64k,
// SmallSidebandData for side-band). Empty data appends nothing.
func AppendSideband(dst []byte, band byte, data []byte, max int) []byte {
	if max <= 0 || max > MaxSidebandData {
		max = MaxSidebandData
	}
	for len(data) > 0 {
		n := min(len(data), max)
		dst = appendLen(dst, n+5)
		dst = append(dst, band)
		dst = append(dst, data[:n]...)
		data = data[n:]
	}
	return dst
}

// ParseSideband splits a side-band payload into its band and data.
func ParseSideband(payload []byte) (band byte, data []byte, err error) {
	if len(payload) == 0 {
		return 0, nil, fmt.Errorf("%w: empty", ErrBadSideband)
	}
	if b := payload[0]; b < BandData || b > BandError {
		return 0, nil, fmt.Errorf("%w: band %d", ErrBadSideband, b)
	}
	return payload[0], payload[1:], nil
}

// AppendError appends an "ERR <msg>" packet, which a git client shows as
// "remote error: <msg>" and dies on.
func AppendError(dst []byte, msg string) []byte {
	if len(msg) > 1000 {
		msg = msg[:1000]
	}
	return AppendString(dst, "ERR "+msg+"\n")
}

// Reader reads pkt-lines from a stream. The payload returned by Next is
// valid until the next call.
type Reader struct {
	r   *bufio.Reader
	buf [MaxPayload]byte
}

// NewReader reads packets from r. Bytes after the last packet read stay in
// Buffered, for the pack that follows the commands of a push.
func NewReader(r io.Reader) *Reader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &Reader{r: br}
}

// Buffered returns the underlying reader, positioned after the last packet.
func (r *Reader) Buffered() *bufio.Reader { return r.r }

// Next reads one packet. A clean end of stream before a packet is io.EOF;
// a stream cut inside a packet is io.ErrUnexpectedEOF.
func (r *Reader) Next() (Kind, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return 0, nil, err
	}
	kind, size, err := ParseHeader(h[:])
	if err != nil {
		return 0, nil, err
	}
	p := r.buf[:size]
	if _, err := io.ReadFull(r.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return kind, p, nil
}

// Line reads one data packet and returns its text without the trailing LF.
// A flush returns ("", Flush, nil); other special packets are errors here.
func (r *Reader) Line() (string, Kind, error) {
	kind, p, err := r.Next()
	if err != nil {
		return "", kind, err
	}
	switch kind {
	case Data:
		if len(p) > 0 && p[len(p)-1] == '\n' {
			p = p[:len(p)-1]
		}
		return string(p), Data, nil
	case Flush:
		return "", Flush, nil
	}
	return "", kind, fmt.Errorf("pkt-line: unexpected %s packet", kind)
}
