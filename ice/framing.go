package ice

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
)

// RFC 4571 §2 framing: every packet on an ICE-TCP connection (STUN checks
// and, after selection, application data) is preceded by its length as a
// 16-bit unsigned big-endian integer.
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	-----------------------------------------------------------------
//	|             LENGTH            |  packet (LENGTH bytes) ...
//	-----------------------------------------------------------------

// MaxFrame is the largest payload a frame can carry.
const MaxFrame = 0xffff

// Errors of the framing codec.
var (
	ErrFrameTooLarge = errors.New("ice: frame larger than the limit")
	ErrShortFrame    = errors.New("ice: incomplete frame")
)

// AppendFrame appends p framed as one RFC 4571 packet. It refuses payloads
// longer than MaxFrame.
func AppendFrame(b, p []byte) ([]byte, error) {
	if len(p) > MaxFrame {
		return b, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(p))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	return append(b, p...), nil
}

// ParseFrame splits the first frame off b. It returns the payload (a
// sub-slice of b) and the rest, ErrShortFrame if b does not hold a whole
// frame, or ErrFrameTooLarge if the announced length exceeds limit.
func ParseFrame(b []byte, limit int) (payload, rest []byte, err error) {
	if len(b) < 2 {
		return nil, b, ErrShortFrame
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > limit {
		return nil, b, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, n, limit)
	}
	if len(b) < 2+n {
		return nil, b, ErrShortFrame
	}
	return b[2 : 2+n], b[2+n:], nil
}

// peekFrame returns the next whole frame of r without consuming it; on any
// error (a read deadline included) nothing is consumed, so reading can
// resume later on the same reader. r must be sized ≥ 2+limit.
func peekFrame(r *bufio.Reader, limit int) ([]byte, error) {
	h, err := r.Peek(2)
	if err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(h))
	if n > limit {
		return nil, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, n, limit)
	}
	b, err := r.Peek(2 + n)
	if err != nil {
		return nil, err
	}
	return b[2:], nil
}
