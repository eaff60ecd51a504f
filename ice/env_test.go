package ice

import (
	"context"
	"net/netip"
	"testing"
)

func TestApplyEnv(t *testing.T) {
	t.Setenv("DEL_INTERFACES", "lo")
	t.Setenv("DEL_STUN", "127.0.0.1:3478, [::1]:3479")
	t.Setenv("DEL_TURN", "turn://alice:secret@127.0.0.1:5000")
	var cfg Config
	if err := ApplyEnv(context.Background(), &cfg); err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:3478"), netip.MustParseAddrPort("[::1]:3479"),
		netip.MustParseAddrPort("127.0.0.1:5000"), // the TURN server is a STUN server too
	}
	if len(cfg.Interfaces) != 1 || cfg.Interfaces[0] != "lo" || cfg.Relay == nil || len(cfg.STUN) != len(want) {
		t.Fatalf("cfg %+v", cfg)
	}
	for i := range want {
		if cfg.STUN[i] != want[i] {
			t.Errorf("STUN[%d] = %s, want %s", i, cfg.STUN[i], want[i])
		}
	}
	for _, bad := range [][2]string{{"DEL_STUN", "no-port"}, {"DEL_TURN", "http://x"}} {
		t.Setenv("DEL_STUN", "")
		t.Setenv("DEL_TURN", "")
		t.Setenv(bad[0], bad[1])
		if err := ApplyEnv(context.Background(), &Config{}); err == nil {
			t.Errorf("%s=%s accepted", bad[0], bad[1])
		}
	}
	// unset: nothing changes
	t.Setenv("DEL_INTERFACES", "")
	t.Setenv("DEL_STUN", "")
	t.Setenv("DEL_TURN", "")
	c := Config{Interfaces: []string{"x"}}
	if err := ApplyEnv(context.Background(), &c); err != nil || len(c.Interfaces) != 1 || c.Relay != nil || c.STUN != nil {
		t.Errorf("unset environment changed cfg: %v %+v", err, c)
	}
}
