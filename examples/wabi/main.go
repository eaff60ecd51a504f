// Command wabi is the pollution-sensor demo from the DHT article: sensors
// put signed JSON readings {"lvl_percent", "lat", "long"} under the key
// InfoHash("pollution_level"); a viewer listens on that key and prints the
// latest reading of every location. A reading that is not well-formed (bad
// JSON, missing or out-of-range fields, unsigned) is reported and ignored.
//
//	wabi sensor --bootstrap 127.0.0.1:4222 --lat 59.91 --long 10.75 --home DIR
//	wabi viewer --bootstrap 127.0.0.1:4222
//
// Each sensor keeps one value id and raises its sequence number with every
// reading, so storing nodes replace the previous reading (OpenDHT's edit
// policy for signed values) instead of piling them up.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
)

// Key is where readings go.
var Key = wire.HashKey("pollution_level")

// Reading is one sensor measurement.
type Reading struct {
	Level float64 `json:"lvl_percent"`
	Lat   float64 `json:"lat"`
	Long  float64 `json:"long"`
}

// ParseReading checks a value as the viewer does.
func ParseReading(v *wire.Value) (Reading, error) {
	var r Reading
	if !v.Signed() {
		return r, errors.New("reading is not signed")
	}
	if err := dht.Verify(v); err != nil {
		return r, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(v.Data, &raw); err != nil {
		return r, fmt.Errorf("not JSON: %v", err)
	}
	for _, k := range []string{"lvl_percent", "lat", "long"} {
		if _, ok := raw[k]; !ok {
			return r, fmt.Errorf("missing %q", k)
		}
	}
	if err := json.Unmarshal(v.Data, &r); err != nil {
		return r, fmt.Errorf("bad field: %v", err)
	}
	switch {
	case math.IsNaN(r.Level) || r.Level < 0 || r.Level > 100:
		return r, fmt.Errorf("lvl_percent %v out of 0..100", r.Level)
	case r.Lat < -90 || r.Lat > 90:
		return r, fmt.Errorf("lat %v out of range", r.Lat)
	case r.Long < -180 || r.Long > 180:
		return r, fmt.Errorf("long %v out of range", r.Long)
	}
	return r, nil
}

// Sensor publishes readings from one identity under one value id.
type Sensor struct {
	Node *dht.Node
	ID   *identity.Identity
	Lat  float64
	Long float64

	vid uint64
	seq uint16
}

// Publish signs and puts one reading, replacing the previous one.
func (s *Sensor) Publish(ctx context.Context, level float64) error {
	if s.vid == 0 {
		s.vid = rand.Uint64() | 1
	}
	data, err := json.Marshal(Reading{Level: level, Lat: s.Lat, Long: s.Long})
	if err != nil {
		return err
	}
	v := &wire.Value{ID: s.vid, Seq: s.seq, Data: data, UserType: "application/json"}
	s.seq++
	if err := dht.Sign(v, s.ID); err != nil {
		return err
	}
	_, err = s.Node.Put(ctx, Key, v)
	return err
}

// Viewer keeps the latest reading per location and prints changes.
type Viewer struct {
	Out    io.Writer
	latest map[string]Reading
}

func location(r Reading) string { return fmt.Sprintf("%.4f,%.4f", r.Lat, r.Long) }

// Handle processes one listen event.
func (vw *Viewer) Handle(ev dht.Event) {
	if ev.Refreshed {
		return // the same reading, kept alive
	}
	if vw.latest == nil {
		vw.latest = map[string]Reading{}
	}
	who := "unsigned"
	if ev.Value.Signed() {
		who = dht.OwnerID(ev.Value).String()[:8]
	}
	r, err := ParseReading(ev.Value)
	if err != nil {
		if !ev.Expired {
			fmt.Fprintf(vw.Out, "malformed reading from %s ignored: %v\n", who, err)
		}
		return
	}
	loc := location(r)
	if ev.Expired {
		if old, ok := vw.latest[loc]; ok && old == r {
			delete(vw.latest, loc)
			fmt.Fprintf(vw.Out, "location %s: no current reading (sensor %s went quiet)\n", loc, who)
		}
		return
	}
	vw.latest[loc] = r
	fmt.Fprintf(vw.Out, "location %s: %.1f%% (sensor %s)\n", loc, r.Level, who)
}

// Summary lists the latest reading of every location, sorted.
func (vw *Viewer) Summary() []string {
	var out []string
	for loc, r := range vw.latest {
		out = append(out, fmt.Sprintf("%s %.1f%%", loc, r.Level))
	}
	sort.Strings(out)
	return out
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "sensor" && os.Args[1] != "viewer") {
		fmt.Fprintln(os.Stderr, "usage: wabi sensor|viewer --bootstrap HOST:PORT [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	boot := fs.String("bootstrap", os.Getenv("DEL_BOOTSTRAP"), "bootstrap node IP:PORT")
	listen := fs.String("listen", "127.0.0.1:0", "UDP address to bind")
	lat := fs.Float64("lat", 59.91, "sensor latitude")
	long := fs.Float64("long", 10.75, "sensor longitude")
	every := fs.Duration("interval", 5*time.Second, "time between readings")
	home := fs.String("home", "", "sensor identity folder (created on first run)")
	fs.Parse(os.Args[2:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], *boot, *listen, *home, *lat, *long, *every); err != nil {
		fmt.Fprintln(os.Stderr, "wabi:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mode, boot, listen, home string, lat, long float64, every time.Duration) error {
	var boots []netip.AddrPort
	for _, s := range strings.Split(boot, ",") {
		if s = strings.TrimSpace(s); s != "" {
			a, err := netip.ParseAddrPort(s)
			if err != nil {
				return fmt.Errorf("bootstrap %q: %w", s, err)
			}
			boots = append(boots, a)
		}
	}
	if len(boots) == 0 {
		return errors.New("need --bootstrap IP:PORT")
	}
	n, err := dht.ListenUDP(dht.Config{}, listen)
	if err != nil {
		return err
	}
	defer n.Close()
	n.Bootstrap(boots...)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = n.WaitReady(wctx)
	cancel()
	if err != nil {
		return err
	}
	if mode == "viewer" {
		events, err := n.Listen(ctx, Key, nil)
		if err != nil {
			return err
		}
		fmt.Println("watching", Key)
		vw := &Viewer{Out: os.Stdout}
		for ev := range events {
			vw.Handle(ev)
		}
		return nil
	}
	if home == "" {
		return errors.New("a sensor needs --home DIR for its identity")
	}
	ident, created, err := identity.LoadOrCreate(home)
	if err != nil {
		return err
	}
	if created {
		fmt.Println("new sensor identity", ident.ID)
	}
	s := &Sensor{Node: n.Node, ID: ident, Lat: lat, Long: long}
	level := 20 + rand.Float64()*30
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		level = math.Max(0, math.Min(100, level+rand.NormFloat64()*3))
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := s.Publish(pctx, level)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "wabi: put:", err)
		} else {
			fmt.Printf("reading %.1f%% at %.4f,%.4f\n", level, lat, long)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
