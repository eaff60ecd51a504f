package wire

import (
	"errors"
	"fmt"

	"github.com/tinylib/msgp/msgp"
)

// Errors returned by the decoders. Every decoding error wraps ErrMalformed.
var (
	ErrMalformed = errors.New("malformed OpenDHT message")
	ErrTooLarge  = errors.New("value larger than OpenDHT allows")
)

func malformed(what string, err error) error {
	if err == nil {
		return fmt.Errorf("%s: %w", what, ErrMalformed)
	}
	return fmt.Errorf("%s: %v: %w", what, err, ErrMalformed)
}

// readUint reads any msgpack integer that is not negative.
func readUint(b []byte) (uint64, []byte, error) {
	return msgp.ReadUint64Bytes(b)
}

// readBlob reads a bin, or a str (msgpack-c's unpackBlob accepts both).
func readBlob(b []byte) ([]byte, []byte, error) {
	if len(b) == 0 {
		return nil, nil, msgp.ErrShortBytes
	}
	if msgp.NextType(b) == msgp.StrType {
		return msgp.ReadStringZC(b)
	}
	return msgp.ReadBytesZC(b)
}

// readHash reads a 20-byte id packed as bin (or str) of exactly 20 bytes.
func readHash(b []byte) (ID, []byte, error) {
	v, o, err := readBlob(b)
	if err != nil {
		return ID{}, nil, err
	}
	if len(v) != len(ID{}) {
		return ID{}, nil, fmt.Errorf("id of %d bytes, want 20", len(v))
	}
	return ID(v), o, nil
}

// readKey reads a map key; keys that are not str are reported as "" and the
// caller skips their value, as msgpack-c's parser does.
func readKey(b []byte) (string, []byte, error) {
	if len(b) > 0 && msgp.NextType(b) == msgp.StrType {
		k, o, err := msgp.ReadStringZC(b)
		return string(k), o, err
	}
	o, err := msgp.Skip(b)
	return "", o, err
}

// readUintArray reads an array of non-negative integers.
func readUintArray(b []byte) ([]uint64, []byte, error) {
	n, b, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil {
		return nil, nil, err
	}
	if int(n) > len(b) {
		return nil, nil, msgp.ErrShortBytes
	}
	out := make([]uint64, 0, n)
	for i := uint32(0); i < n; i++ {
		var u uint64
		u, b, err = readUint(b)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, u)
	}
	return out, b, nil
}

func appendUintArray(b []byte, a []uint64) []byte {
	b = msgp.AppendArrayHeader(b, uint32(len(a)))
	for _, u := range a {
		b = msgp.AppendUint64(b, u)
	}
	return b
}

func appendKV(b []byte, key string) []byte { return msgp.AppendString(b, key) }

func bool2int(v bool) uint32 {
	if v {
		return 1
	}
	return 0
}
