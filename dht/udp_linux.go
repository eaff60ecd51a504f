//go:build linux

package dht

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// Linux: datagrams are read and written with raw, non-blocking recvfrom and
// sendto on the socket's descriptor, inside syscall.RawConn callbacks (which
// still park on the runtime's poller when nothing is to be read).
//
// Why: the net package's reads and writes go through the runtime's
// entersyscall, which wakes the runtime's monitor thread (sysmon) whenever
// it sleeps, that is once per datagram burst on an idle node; the monitor
// then runs a 20 µs sleep before going back to its deep sleep. On a loopback
// network of many processes on a few cores that doubled the context
// switches per request (measured with dht/internal/dhtbench: 68 vs 38 per
// operation for dhtnode) and the CPU time per operation. Non-blocking calls
// do not need entersyscall.

type rawUDP struct {
	rc  syscall.RawConn
	fam int // AF_INET or AF_INET6

	// The send arguments live here and sendFn is made once, so that a
	// send allocates nothing (a closure or a socket address escaping to
	// the heap per datagram cost fresh pages, thus page faults).
	mu     sync.Mutex
	b      []byte
	sa     syscall.RawSockaddrAny
	saLen  uintptr
	err    error
	sendFn func(fd uintptr) bool
}

func newRawUDP(c *net.UDPConn) *rawUDP {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	fam := 0
	rc.Control(func(fd uintptr) {
		sa, err := syscall.Getsockname(int(fd))
		if err != nil {
			return
		}
		switch sa.(type) {
		case *syscall.SockaddrInet4:
			fam = syscall.AF_INET
		case *syscall.SockaddrInet6:
			fam = syscall.AF_INET6
		}
	})
	if fam == 0 {
		return nil
	}
	r := &rawUDP{rc: rc, fam: fam}
	r.sendFn = r.sendTo
	return r
}

// sendTo is the RawConn.Write callback of send.
func (r *rawUDP) sendTo(fd uintptr) bool {
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&r.b[0])), uintptr(len(r.b)),
			syscall.MSG_DONTWAIT, uintptr(unsafe.Pointer(&r.sa)), r.saLen)
		switch e {
		case 0:
			r.err = nil
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until writable
		default:
			r.err = e
			return true
		}
	}
}

// sockaddr fills sa for to; ok is false when the socket's family cannot
// reach it (an IPv6 address on an IPv4 socket).
func (r *rawUDP) sockaddr(to netip.AddrPort, sa *syscall.RawSockaddrAny) (size uintptr, ok bool) {
	port := to.Port()
	ip := to.Addr()
	if r.fam == syscall.AF_INET {
		ip = ip.Unmap()
		if !ip.Is4() {
			return 0, false
		}
		s4 := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		s4.Family = syscall.AF_INET
		putPort(&s4.Port, port)
		s4.Addr = ip.As4()
		return syscall.SizeofSockaddrInet4, true
	}
	s6 := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
	s6.Family = syscall.AF_INET6
	putPort(&s6.Port, port)
	s6.Addr = ip.As16() // an IPv4 address becomes ::ffff:a.b.c.d
	return syscall.SizeofSockaddrInet6, true
}

// send writes one datagram; handled is false when the caller should use the
// net package instead.
func (r *rawUDP) send(b []byte, to netip.AddrPort) (err error, handled bool) {
	if len(b) == 0 {
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	size, ok := r.sockaddr(to, &r.sa)
	if !ok {
		return nil, false
	}
	r.b, r.saLen, r.err = b, size, nil
	werr := r.rc.Write(r.sendFn)
	r.b = nil
	if werr != nil {
		return werr, true
	}
	return r.err, true
}

// readLoop reads datagrams into buf and hands each to handle until the
// socket is closed or stop says so. It returns the error that ended it.
func (r *rawUDP) readLoop(buf []byte, stop func() bool, handle func([]byte, netip.AddrPort)) error {
	var rerr error
	var sa syscall.RawSockaddrAny
	read := func(fd uintptr) bool {
		for {
			if stop() {
				return true
			}
			salen := uint32(syscall.SizeofSockaddrAny)
			n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
				syscall.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)))
			switch e {
			case 0:
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // park until readable
			default:
				// An ICMP error queued on the socket, for instance: go on.
				continue
			}
			if from, ok := addrOf(&sa); ok {
				handle(buf[:n], from)
			}
		}
	}
	for !stop() {
		// read is made once: a closure per wake-up would be garbage.
		if err := r.rc.Read(read); err != nil {
			rerr = err
			break
		}
	}
	return rerr
}

func addrOf(sa *syscall.RawSockaddrAny) (netip.AddrPort, bool) {
	switch sa.Addr.Family {
	case syscall.AF_INET:
		s4 := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), getPort(&s4.Port)), true
	case syscall.AF_INET6:
		s6 := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), getPort(&s6.Port)), true
	}
	return netip.AddrPort{}, false
}

// Ports in socket addresses are in network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// tickTimer is a timerfd waited on through the runtime's poller. The timer
// loop uses it instead of a Go timer: the runtime's monitor thread sleeps
// until the next Go timer, so with a Go timer every tick of an idle node
// woke two threads (and the monitor slept again in two steps); a timerfd
// wakes only the thread that runs the tick.
type tickTimer struct {
	f  *os.File
	rc syscall.RawConn
}

func newTickTimer() *tickTimer {
	const clockMonotonic = 1
	fd, _, e := syscall.RawSyscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e != 0 {
		return nil
	}
	f := os.NewFile(fd, "dht-timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	return &tickTimer{f: f, rc: rc}
}

// set arms the timer to fire once after d.
func (t *tickTimer) set(d time.Duration) {
	var spec [2]syscall.Timespec // interval, value
	spec[1] = syscall.NsecToTimespec(max(int64(d), 1))
	t.rc.Control(func(fd uintptr) {
		syscall.RawSyscall6(syscall.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	})
}

// wait blocks until the timer fired; it fails once the timer is closed.
func (t *tickTimer) wait() error {
	var buf [8]byte
	return t.rc.Read(func(fd uintptr) bool {
		_, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), 8)
		return e != syscall.EAGAIN
	})
}

func (t *tickTimer) close() { t.f.Close() }
