package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/internal/testkeys"
)

// TestWabi runs two sensors and a viewer on a loopback network of Go nodes;
// a malformed reading is reported and ignored; a newer reading replaces the
// older one of the same sensor.
func TestWabi(t *testing.T) {
	var nodes []*dht.UDPNode
	for i := 0; i < 4; i++ {
		u, err := dht.ListenUDP(dht.Config{}, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		if i > 0 {
			u.Bootstrap(nodes[0].Addr())
		}
		nodes = append(nodes, u)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range nodes[1:] {
		if err := u.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	events, err := nodes[3].Listen(ctx, Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	vw := &Viewer{Out: &out}

	oslo := &Sensor{Node: nodes[1].Node, ID: testkeys.Identity(t, 2), Lat: 59.91, Long: 10.75}
	bergen := &Sensor{Node: nodes[2].Node, ID: testkeys.Identity(t, 3), Lat: 60.39, Long: 5.32}
	if err := oslo.Publish(ctx, 31.5); err != nil {
		t.Fatal(err)
	}
	if err := bergen.Publish(ctx, 12); err != nil {
		t.Fatal(err)
	}
	bad := &wire.Value{Data: []byte(`{"lvl_percent": "high"}`)}
	if err := dht.Sign(bad, testkeys.Identity(t, 4)); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].Put(ctx, Key, bad); err != nil {
		t.Fatal(err)
	}
	if err := oslo.Publish(ctx, 33.0); err != nil {
		t.Fatal(err)
	}
	want := []string{"59.9100,10.7500 33.0%", "60.3900,5.3200 12.0%"}
	for !strings.Contains(out.String(), "33.0%") || !strings.Contains(out.String(), "12.0%") || !strings.Contains(out.String(), "malformed") {
		select {
		case ev := <-events:
			vw.Handle(ev)
		case <-ctx.Done():
			t.Fatalf("viewer output so far:\n%s", out.String())
		}
	}
	got := vw.Summary()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("summary %q, want %q\n%s", got, want, out.String())
	}
	if !strings.Contains(out.String(), "malformed reading from") {
		t.Fatalf("malformed reading not reported:\n%s", out.String())
	}
	// The newer Oslo reading replaced the older one on the storing nodes.
	r, err := nodes[0].Get(ctx, Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	osloValues := 0
	for _, v := range r.Values {
		if rd, err := ParseReading(v); err == nil && rd.Lat == 59.91 {
			osloValues++
			if rd.Level != 33 {
				t.Errorf("old Oslo reading still stored: %v", rd)
			}
		}
	}
	if osloValues != 1 {
		t.Errorf("%d Oslo readings stored, want 1", osloValues)
	}
}

func TestParseReadingRejects(t *testing.T) {
	ident := testkeys.Identity(t, 2)
	for _, data := range []string{`not json`, `{"lat":1,"long":2}`, `{"lvl_percent":150,"lat":1,"long":2}`, `{"lvl_percent":5,"lat":91,"long":2}`} {
		v := &wire.Value{ID: 1, Data: []byte(data)}
		if err := dht.Sign(v, ident); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseReading(v); err == nil {
			t.Errorf("%s accepted", data)
		}
	}
	if _, err := ParseReading(&wire.Value{ID: 1, Data: []byte(`{"lvl_percent":5,"lat":1,"long":2}`)}); err == nil {
		t.Error("unsigned reading accepted")
	}
}
