//go:build !linux

package dht

import (
	"net"
	"net/netip"
)

// rawUDP is Linux only (udp_linux.go); elsewhere the net package does the I/O.
type rawUDP struct{}

func newRawUDP(*net.UDPConn) *rawUDP { return nil }

func (*rawUDP) send([]byte, netip.AddrPort) (error, bool) { return nil, false }

func (*rawUDP) readLoop([]byte, func() bool, func([]byte, netip.AddrPort)) error { return nil }
