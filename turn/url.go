package turn

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
)

// Default ports (RFC 8656 §3.1 / RFC 7065): turn 3478, turns 5349.
const (
	DefaultPort    = "3478"
	DefaultTLSPort = "5349"
)

// ParseURL makes a Client from DEL's TURN server notation
// turn://USER:PASS@HOST[:PORT] (DEL_TURN, --turn), or turns://… for TLS.
// A missing port is 3478 (turn) or 5349 (turns). Percent-escapes in USER
// and PASS are decoded.
func ParseURL(s string) (*Client, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("turn: server URL: %w", err)
	}
	c := &Client{}
	port := DefaultPort
	switch u.Scheme {
	case "turn":
	case "turns":
		port = DefaultTLSPort
		c.TLSConfig = &tls.Config{}
	default:
		return nil, fmt.Errorf("turn: server URL %q: scheme must be turn or turns", redact(u))
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("turn: server URL %q: no host", redact(u))
	}
	if u.Port() != "" {
		port = u.Port()
	}
	if u.User == nil || u.User.Username() == "" {
		return nil, fmt.Errorf("turn: server URL %q: no USER:PASS@", redact(u))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("turn: server URL %q: unexpected path, query or fragment", redact(u))
	}
	c.Server = net.JoinHostPort(u.Hostname(), port)
	c.Username = u.User.Username()
	c.Password, _ = u.User.Password()
	return c, nil
}

// redact hides the password of u for error messages.
func redact(u *url.URL) string { return u.Redacted() }
