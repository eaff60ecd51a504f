package turn

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	for in, want := range map[string]Client{
		"turn://alice:secret123@127.0.0.1:3478": {Server: "127.0.0.1:3478", Username: "alice", Password: "secret123"},
		"turn://alice:s%40cret@relay.example":   {Server: "relay.example:3478", Username: "alice", Password: "s@cret"},
		"turns://1735689600:bob:pw@[::1]":       {Server: "[::1]:5349", Username: "1735689600", Password: "bob:pw"},
		"turn://1735689600%3Abob:pw@h:9/":       {Server: "h:9", Username: "1735689600:bob", Password: "pw"},
	} {
		got, err := ParseURL(in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", in, err)
			continue
		}
		if got.Server != want.Server || got.Username != want.Username || got.Password != want.Password {
			t.Errorf("ParseURL(%q) = %s %s %s, want %s %s %s", in, got.Server, got.Username, got.Password, want.Server, want.Username, want.Password)
		}
		if tls := strings.HasPrefix(in, "turns:"); (got.TLSConfig != nil) != tls {
			t.Errorf("ParseURL(%q): TLS %v, want %v", in, got.TLSConfig != nil, tls)
		}
	}
	for _, in := range []string{"", "http://a:b@h:1", "turn://h:1", "turn://:pw@h", "turn://a:b@:1", "turn://a:b@h:1/x", "turn://a:b@h:1?transport=udp"} {
		if _, err := ParseURL(in); err == nil {
			t.Errorf("ParseURL(%q) accepted", in)
		}
	}
	if _, err := ParseURL("http://alice:topsecret@h"); err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error shows the password: %v", err)
	}
}

func FuzzParseURL(f *testing.F) {
	f.Add("turn://alice:secret123@127.0.0.1:3478")
	f.Add("turns://u:p@[::1]")
	f.Add("turn://%zz@h")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseURL(s)
		if err != nil {
			return
		}
		if c.Server == "" || c.Username == "" {
			t.Fatalf("ParseURL(%q) accepted without server or user: %+v", s, c)
		}
	})
}
