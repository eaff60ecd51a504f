package transfer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path"
	"strings"
	"testing"
	"time"
)

func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(byte(FrameData), []byte("hello"))
	f.Add(byte(FrameOffer), []byte(`{"v":1,"entries":[]}`))
	f.Add(byte(0), []byte{})
	f.Add(byte(200), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, typ byte, payload []byte) {
		b := AppendFrame(nil, typ, payload)
		gt, gp, err := NewFrameReader(bytes.NewReader(b)).Next()
		if _, known := frameNames[typ]; !known {
			if !errors.Is(err, ErrUnknownFrame) {
				t.Fatalf("unknown type %d: err %v", typ, err)
			}
			return
		}
		if err != nil || gt != typ || !bytes.Equal(gp, payload) {
			t.Fatalf("round trip: %d %q %v", gt, gp, err)
		}
	})
}

func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{FrameData, 0, 0, 0, 2, 'h', 'i'})
	f.Add([]byte{FrameData, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{FrameOffer, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		for {
			_, p, err := fr.Next()
			if err != nil {
				return
			}
			if len(p) > MaxPayload {
				t.Fatalf("payload of %d bytes accepted", len(p))
			}
		}
	})
}

// FuzzFrameReaderInto checks that NextInto, which gathers DATA payloads in
// place into the receiver's write block, reads exactly the frames Next
// reads, with the same payloads and errors, whatever room the block has.
func FuzzFrameReaderInto(f *testing.F) {
	f.Add([]byte{FrameData, 0, 0, 0, 2, 'h', 'i', FrameData, 0, 0, 0, 3, 'a', 'b', 'c'}, uint16(4))
	f.Add([]byte{FrameData, 0, 0, 0, 2, 'h', 'i', FrameOffer, 0, 0, 0, 1, '{'}, uint16(0))
	f.Add([]byte{FrameData, 0xff, 0xff, 0xff, 0xff}, uint16(8))
	f.Fuzz(func(t *testing.T, b []byte, room uint16) {
		want := NewFrameReader(bytes.NewReader(b))
		got := NewFrameReader(bytes.NewReader(b))
		block := make([]byte, 0, int(room))
		for i := 0; ; i++ {
			wt, wp, werr := want.Next()
			gt, gp, gerr := got.NextInto(block)
			if (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
				t.Fatalf("frame %d: Next error %v, NextInto error %v", i, werr, gerr)
			}
			if werr != nil {
				return
			}
			if wt != gt || !bytes.Equal(wp, gp) {
				t.Fatalf("frame %d: Next %d %q, NextInto %d %q", i, wt, wp, gt, gp)
			}
			if gt == FrameData && len(gp) <= cap(block)-len(block) {
				if len(gp) > 0 && &gp[0] != &block[:len(block)+1][len(block)] {
					t.Fatalf("frame %d: a DATA payload that fits was not read in place", i)
				}
				block = block[:len(block)+len(gp)]
			} else {
				block = block[:0]
			}
		}
	})
}

func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../a", "/a", "a/./b", "a//b", "..", "a/..", "c:x", "é/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if CheckPath(p) != nil {
			return
		}
		if c := path.Clean("/root/" + p); !strings.HasPrefix(c, "/root/") || c == "/root" {
			t.Fatalf("accepted %q, which lands at %q", p, c)
		}
	})
}

// FuzzReceive feeds arbitrary bytes to a receiver as if from a sender: it
// must never panic, hang, or write outside its folder.
func FuzzReceive(f *testing.F) {
	offer := AppendFrame(nil, FrameOffer, marshal(Offer{V: Version, Entries: []Entry{{Path: "a", Kind: KindFile, Size: 2, Hash: someHash}}}))
	offer = AppendFrame(offer, FrameOfferEnd, marshal(OfferEnd{Entries: 1, Files: 1, Bytes: 2}))
	f.Add(offer)
	f.Add(append(append([]byte(nil), offer...), AppendFrame(AppendFrame(nil, FrameFileStart, []byte(`{"i":0}`)), FrameData, []byte("xyz"))...))
	f.Add([]byte{FrameOfferEnd, 0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, in []byte) {
		parent := t.TempDir()
		dir := parent + "/in"
		a, b := net.Pipe()
		// net.Pipe has no buffer: write and read in separate goroutines.
		wrote := make(chan struct{})
		go func() {
			a.Write(in)
			close(wrote)
		}()
		go func() {
			// Drain what the receiver says; once the input is written and
			// the receiver has gone quiet, hang up.
			var buf [4096]byte
			for {
				a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				_, err := a.Read(buf[:])
				if err == nil {
					continue
				}
				select {
				case <-wrote:
				default:
					if errors.Is(err, os.ErrDeadlineExceeded) {
						continue
					}
				}
				break
			}
			a.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		Receive(ctx, b, ReceiveOptions{Dir: dir, Decide: accept})
		b.Close()
		if ctx.Err() != nil {
			t.Fatal("receiver hung")
		}
		ents, _ := (&rootLister{parent}).list()
		for _, e := range ents {
			if e != "in" {
				t.Fatalf("wrote %q outside its folder", e)
			}
		}
	})
}

type rootLister struct{ dir string }

func (r *rootLister) list() ([]string, error) {
	var names []string
	ents, err := os.ReadDir(r.dir)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}
