//go:build !linux

package dht

import (
	"net"
	"net/netip"
	"time"
)

// rawUDP is Linux only (udp_linux.go); elsewhere the net package does the I/O.
type rawUDP struct{}

func newRawUDP(*net.UDPConn) *rawUDP { return nil }

func (*rawUDP) send([]byte, netip.AddrPort) (error, bool) { return nil, false }

func (*rawUDP) readLoop([]byte, func() bool, func([]byte, netip.AddrPort)) error { return nil }

// tickTimer is Linux only; elsewhere the timer loop uses a Go timer.
type tickTimer struct{}

func newTickTimer() *tickTimer { return nil }

func (*tickTimer) set(time.Duration) {}

func (*tickTimer) wait() error { return nil }

func (*tickTimer) close() {}
