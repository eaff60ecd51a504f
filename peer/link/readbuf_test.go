package link

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// scriptedConn hands out data in reads of the scripted sizes (the last size
// repeating), then err.
type scriptedConn struct {
	net.Conn
	data  []byte
	sizes []int
	err   error
	// errWithData: the read that brings the last bytes also returns err.
	errWithData bool
	reads       int
}

func (c *scriptedConn) Read(p []byte) (int, error) {
	c.reads++
	if len(c.data) == 0 {
		return 0, c.err
	}
	n := c.sizes[0]
	if len(c.sizes) > 1 {
		c.sizes = c.sizes[1:]
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	if len(c.data) == 0 && c.errWithData {
		return n, c.err
	}
	return n, nil
}

func readAllIn(t testing.TB, r io.Reader, sizes []int) ([]byte, error) {
	t.Helper()
	var out []byte
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(p)
		if n < 0 || n > len(p) {
			t.Fatalf("read returned %d for a %d-byte buffer", n, len(p))
		}
		out = append(out, p[:n]...)
		if err != nil {
			return out, err
		}
		if i > 1<<24 {
			t.Fatal("no end")
		}
	}
}

// TestBulkReaderKeepsTheStream: whatever the sizes of the network's reads
// and of the caller's, the bytes come out whole and in order, then the
// network's error; the buffer is taken for a burst and given back after it.
func TestBulkReaderKeepsTheStream(t *testing.T) {
	data := make([]byte, 3*bulkReadSize+12345)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	for _, tc := range []struct {
		name     string
		net, app []int
	}{
		{"records", []int{17 << 10}, []int{17 << 10}},
		{"bulk then small", []int{17 << 10, bulkReadSize, bulkReadSize, 100, 5}, []int{5, 17 << 10}},
		{"tiny", []int{1, 3, 7}, []int{2, 1, 5000}},
		{"large reads", []int{1 << 20}, []int{1 << 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, withData := range []bool{false, true} {
				c := &scriptedConn{data: data, sizes: tc.net, err: io.EOF, errWithData: withData}
				b := &bulkReader{conn: c}
				got, err := readAllIn(t, b, tc.app)
				if !errors.Is(err, io.EOF) {
					t.Fatalf("error %v, want EOF", err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("got %d bytes, want %d; first difference at %d", len(got), len(data), firstDiff(got, data))
				}
				if b.buf != nil {
					t.Error("buffer kept after the stream ended")
				}
			}
		})
	}
}

// TestBulkReaderSavesReads: records of 16 KiB arriving in bulk take one
// read(2) per 512 KiB instead of one per record, and a burst's buffer goes
// back once a short read shows the burst is over.
func TestBulkReaderSavesReads(t *testing.T) {
	data := make([]byte, 8*bulkReadSize)
	c := &scriptedConn{data: data, sizes: []int{1 << 30}, err: io.EOF}
	b := &bulkReader{conn: c}
	got, err := readAllIn(t, b, []int{16<<10 + 22})
	if err != io.EOF || len(got) != len(data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	if c.reads > 8+3 {
		t.Errorf("%d reads of the connection for %d bytes", c.reads, len(data))
	}

	small := &scriptedConn{data: make([]byte, 100), sizes: []int{50}, err: io.EOF}
	b = &bulkReader{conn: small}
	p := make([]byte, 16<<10)
	if _, err := b.Read(p); err != nil || b.bulk || b.buf != nil {
		t.Fatalf("small messages: err %v, bulk %v, buffer %v", err, b.bulk, b.buf != nil)
	}
	burst := &scriptedConn{data: make([]byte, 16<<10+2*bulkReadSize+10), sizes: []int{16 << 10, bulkReadSize, bulkReadSize, 10}, err: io.EOF}
	b = &bulkReader{conn: burst}
	for burst.reads < 3 {
		if _, err := b.Read(p); err != nil {
			t.Fatal(err)
		}
	}
	if b.buf == nil {
		t.Fatal("no buffer during a burst")
	}
	for len(burst.data) > 0 || b.r < b.w {
		if _, err := b.Read(p); err != nil {
			t.Fatal(err)
		}
	}
	if b.buf != nil {
		t.Error("buffer kept after the burst's short read was handed out")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// FuzzBulkReader: any pattern of network and caller read sizes keeps the
// byte stream and ends with the network's error.
func FuzzBulkReader(f *testing.F) {
	f.Add([]byte{1, 2, 3}, []byte{4, 5}, uint32(70000), false)
	f.Add([]byte{255, 255, 0, 7}, []byte{16, 1}, uint32(2<<20), true)
	f.Fuzz(func(t *testing.T, netSizes, appSizes []byte, total uint32, withData bool) {
		total %= 3 << 20
		scale := func(in []byte) []int {
			var out []int
			for _, v := range in {
				// small sizes and sizes around the bulk thresholds
				out = append(out, 1+int(v)*int(v)*16)
			}
			if len(out) == 0 {
				out = []int{16 << 10}
			}
			return out
		}
		data := make([]byte, total)
		for i := range data {
			data[i] = byte(i * 7)
		}
		c := &scriptedConn{data: data, sizes: scale(netSizes), err: io.ErrUnexpectedEOF, errWithData: withData}
		got, err := readAllIn(t, &bulkReader{conn: c}, scale(appSizes))
		if err != io.ErrUnexpectedEOF || !bytes.Equal(got, data) {
			t.Fatalf("%d of %d bytes, %v", len(got), len(data), err)
		}
	})
}
