package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// sample is one datagram captured against dhtnode 2.4.12 (testdata/opendht-samples.txt).
type sample struct {
	title string
	raw   []byte
}

func loadSamples(t testing.TB) []sample {
	t.Helper()
	f, err := os.Open("testdata/opendht-samples.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sample
	title := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, ">>") || strings.HasPrefix(line, "<<") {
			title = line
		}
		if h, ok := strings.CutPrefix(line, "hex: "); ok {
			raw, err := hex.DecodeString(h)
			if err != nil {
				t.Fatalf("%s: %v", title, err)
			}
			out = append(out, sample{title, raw})
		}
	}
	if len(out) < 40 {
		t.Fatalf("only %d samples", len(out))
	}
	return out
}

// TestGoldenRoundTrip decodes every captured datagram and re-encodes it: the
// bytes must be identical to what dhtnode (or the raw client speaking its
// format) sent.
func TestGoldenRoundTrip(t *testing.T) {
	for _, s := range loadSamples(t) {
		m, err := Decode(s.raw)
		if err != nil {
			t.Errorf("%s: decode: %v", s.title, err)
			continue
		}
		if got := m.Marshal(); !bytes.Equal(got, s.raw) {
			t.Errorf("%s: re-encoded differs\n got %x\nwant %x", s.title, got, s.raw)
		}
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustID(t *testing.T, s string) ID {
	t.Helper()
	id, err := ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestGoldenFields checks what the decoder reads out of a few samples.
func TestGoldenFields(t *testing.T) {
	pollution := mustID(t, "c6c7e2b17b27367a841b2795a76c49b3fb81590e")
	if HashKey("pollution_level") != pollution {
		t.Fatalf("HashKey(pollution_level) = %s", HashKey("pollution_level"))
	}

	t.Run("find reply", func(t *testing.T) {
		m, err := Decode(mustHex(t, "84a17284a26964c414ee1b99aa3db2f03f58e808c51d5464566b2316d8a27361c4047f000001a26e34c434c544f1ff1a6e638dec82040f413c5c3cc05c37bf7f000001107fad6c25f83fa498ca1326afa16b4ac8b84a3142947f0000011080a5746f6b656ec4207a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487ca174ce0b88a173a179a172a176a4524e4731"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind != KindReply || m.TID != 193503603 || m.UA != "RNG1" {
			t.Errorf("kind %v tid %d ua %q", m.Kind, m.TID, m.UA)
		}
		if m.ID != mustID(t, "ee1b99aa3db2f03f58e808c51d5464566b2316d8") {
			t.Errorf("id %s", m.ID)
		}
		if m.SeenAddr != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("sa %s", m.SeenAddr)
		}
		want := []Node{
			{mustID(t, "c544f1ff1a6e638dec82040f413c5c3cc05c37bf"), netip.MustParseAddrPort("127.0.0.1:4223")},
			{mustID(t, "ad6c25f83fa498ca1326afa16b4ac8b84a314294"), netip.MustParseAddrPort("127.0.0.1:4224")},
		}
		if len(m.Nodes4) != 2 || m.Nodes4[0] != want[0] || m.Nodes4[1] != want[1] {
			t.Errorf("n4 %v", m.Nodes4)
		}
		if hex.EncodeToString(m.Token) != "7a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487c" {
			t.Errorf("token %x", m.Token)
		}
	})

	t.Run("put", func(t *testing.T) {
		m, err := Decode(mustHex(t, "85a16184a26964c414805f7e1ea418f7ce15eb0a1f2fa3d3292dff9307a168c414c6c7e2b17b27367a841b2795a76c49b3fb81590ea676616c7565739182a26964cf1c2f164e5bf965f7a364617481a4626f647983a47479706500a464617461c40631372070706da57574797065aa746578742f706c61696ea5746f6b656ec4207a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487ca171a3707574a174ce0b88a175a179a171a176a4524e4731"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind != KindQuery || m.Method != Put || m.Hash != pollution {
			t.Fatalf("%+v", m)
		}
		if len(m.Values) != 1 {
			t.Fatalf("values %d", len(m.Values))
		}
		v := m.Values[0]
		if v.ID != 2030866482773714423 || string(v.Data) != "17 ppm" || v.UserType != "text/plain" || v.Type != 0 || v.Signed() || v.Encrypted() {
			t.Errorf("value %+v", v)
		}
	})

	t.Run("error", func(t *testing.T) {
		m, err := Decode(mustHex(t, "85a16592cd0191b450757420776974682077726f6e6720746f6b656ea17281a26964c414ee1b99aa3db2f03f58e808c51d5464566b2316d8a174ce0b88a176a179a165a176a4524e4731"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind != KindError || m.ErrCode != CodeUnauthorized || m.ErrMsg != "Put with wrong token" {
			t.Errorf("%+v", m)
		}
	})

	t.Run("fragmented update header", func(t *testing.T) {
		m, err := Decode(mustHex(t, "85a16186a26964c414ee1b99aa3db2f03f58e808c51d5464566b2316d8a2766501a168c414c6c7e2b17b27367a841b2795a76c49b3fb81590ea3736964cd0309a676616c756573963e2dcd047acd047acd06b23ca5746f6b656ec4207a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487ca171a6757064617465a174ce0e889098a179a171a176a4524e4731"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Method != Update || m.SID != 777 || m.Version != 1 || !m.Fragmented() {
			t.Fatalf("%+v", m)
		}
		want := []uint64{62, 45, 1146, 1146, 1714, 60}
		if len(m.ValueSizes) != len(want) {
			t.Fatalf("sizes %v", m.ValueSizes)
		}
		for i := range want {
			if m.ValueSizes[i] != want[i] {
				t.Fatalf("sizes %v", m.ValueSizes)
			}
		}
		// The first two parts as captured; the reassembled values are the
		// plain "42 ug/m3" and "43 ug/m3" values.
		r := NewReassembly(&Message{ValueSizes: []uint64{62, 45}})
		for _, h := range []string{
			"83a179a170a174ce0e889098a170810082a16f00a164c43e82a26964cfec6265b94151cf3aa364617481a4626f647983a47479706500a464617461c40834322075672f6d33a57574797065aa746578742f706c61696e",
			"83a179a170a174ce0e889098a170810182a16f00a164c42d82a26964cf5dd083c7a40a3b32a364617481a4626f647982a47479706500a464617461c40834332075672f6d33",
		} {
			p, err := Decode(mustHex(t, h))
			if err != nil || p.Kind != KindPart || p.TID != 243830936 {
				t.Fatalf("part %v %+v", err, p)
			}
			if !r.Add(p) {
				t.Fatal("part not taken")
			}
		}
		if !r.Complete() {
			t.Fatal("not complete")
		}
		got := r.Message().Values
		if len(got) != 2 || string(got[0].Data) != "42 ug/m3" || string(got[1].Data) != "43 ug/m3" || got[0].ID != 17033288587007872826 {
			t.Fatalf("values %+v", got)
		}
	})

	t.Run("expired push", func(t *testing.T) {
		m, err := Decode(mustHex(t, "85a16184a26964c414ee1b99aa3db2f03f58e808c51d5464566b2316d8a3736964cd0309a5746f6b656ec4207a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487ca2726591cf1c2f164e5bf965f7a179a171a176a4524e4731a171a6757064617465a174ce0e88909c"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Method != Update || len(m.Refreshed) != 1 || m.Refreshed[0] != 2030866482773714423 || m.SID != 777 {
			t.Fatalf("%+v", m)
		}
	})

	t.Run("select reply", func(t *testing.T) {
		q := &Query{Select: []uint64{1, 5}}
		m := Message{Kind: KindQuery, Method: Get, TID: 193503612, UA: UserAgent,
			ID: mustID(t, "805f7e1ea418f7ce15eb0a1f2fa3d3292dff9307"), Hash: pollution, Query: q}
		want := "85a16183a26964c414805f7e1ea418f7ce15eb0a1f2fa3d3292dff9307a168c414c6c7e2b17b27367a841b2795a76c49b3fb81590ea17182a173920105a17790a171a3676574a174ce0b88a17ca179a171a176a4524e4731"
		if got := hex.EncodeToString(m.Marshal()); got != want {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	})
}

// TestFragmentPut builds the captured 3000-byte fragmented put: header with
// "values":[3038] and three parts of 1280, 1280 and 478 bytes.
func TestFragmentPut(t *testing.T) {
	data := bytes.Repeat([]byte{0x5a}, 3000)
	v := &Value{ID: 5413818333028499626, Data: data}
	m := Message{Kind: KindQuery, Method: Put, TID: 193503611, UA: UserAgent,
		ID: mustID(t, "805f7e1ea418f7ce15eb0a1f2fa3d3292dff9307"), Hash: HashKey("pollution_level"),
		Token: mustHex(t, "7a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487c")}
	packed := m.SetValues([]*Value{v})
	want := "85a16184a26964c414805f7e1ea418f7ce15eb0a1f2fa3d3292dff9307a168c414c6c7e2b17b27367a841b2795a76c49b3fb81590ea676616c75657391cd0bdea5746f6b656ec4207a90fde659e741d744be6e599d7daf2e235acb833bf8ac1a53fa5f322e09487ca171a3707574a174ce0b88a17ba179a171a176a4524e4731"
	if got := hex.EncodeToString(m.Marshal()); got != want {
		t.Fatalf("header\n got %s\nwant %s", got, want)
	}
	parts := AppendParts(m.TID, 0, packed)
	if len(parts) != 3 || len(parts[0]) != 1305 || len(parts[1]) != 1307 || len(parts[2]) != 505 {
		t.Fatalf("parts: %d, sizes %d %d %d", len(parts), len(parts[0]), len(parts[1]), len(parts[2]))
	}
	// The captured first part starts like this (its value data differs).
	if !bytes.HasPrefix(parts[0], mustHex(t, "83a179a170a174ce0b88a17ba170810082a16f00a164c50500"+"82a26964cf4b21bf171aa940aaa364617481a4626f647982a47479706500a464617461c50bb8")) {
		t.Fatalf("part 0 prefix %x", parts[0][:80])
	}
	h, err := Decode(m.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	r := NewReassembly(h)
	for _, p := range parts {
		pm, err := Decode(p)
		if err != nil {
			t.Fatal(err)
		}
		r.Add(pm)
	}
	if !r.Complete() {
		t.Fatal("incomplete")
	}
	got := r.Message()
	if len(got.Values) != 1 || !bytes.Equal(got.Values[0].Data, data) || got.Values[0].ID != v.ID {
		t.Fatal("reassembled value differs")
	}
}
