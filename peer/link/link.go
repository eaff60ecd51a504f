// Package link turns any byte stream between two devices (a direct TCP
// connection, an ICE-selected pair, a TURN relay) into an authenticated,
// multiplexed link. Package peer finds devices and reaches them (DHT
// signaling, ICE) and re-exports this API; a program that only needs a link
// (git-remote-del) imports this package alone, without the DHT and ICE.
//
// Protocol flow on one net.Conn:
//
//  1. TLS 1.3 (RFC 8446), no older version. Both sides present a session
//     certificate signed by their identity certificate (leaf.go). There is
//     no CA: each side checks that chain and computes the peer id of the
//     identity certificate (SHA-1 of its SubjectPublicKeyInfo), and compares
//     it with the id it expects. A mismatch aborts the handshake, so no
//     application byte is exchanged with the wrong device. The handshake
//     proves possession of the session key, the chain that the identity
//     made it. The server then sends one byte, 0xDE, once it has accepted the
//     client's certificate: in TLS 1.3 the client's handshake completes
//     before the server has judged it, and this keeps a refused client from
//     believing it is connected.
//  2. A yamux session (github.com/libp2p/go-yamux, the maintained yamux with
//     pooled buffers and receive-window auto-tuning) over the TLS stream; the
//     side that dialed the TCP connection is the yamux client. The TLS
//     records of one multiplexer write leave in one network write
//     (coalesce.go).
//  3. Channels: each yamux stream starts with one header written by the
//     opener, a byte n (1..255) followed by n bytes of channel name ("file",
//     "git/<repo>"). The acceptor dispatches on the name.
package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/del-share/del/identity"
	"github.com/libp2p/go-yamux/v5"
)

// ALPN is the TLS application protocol DEL links negotiate.
const ALPN = "del/1"

// linkAccepted is the byte the TLS server sends once it has accepted the
// client's certificate.
const linkAccepted = 0xDE

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// ErrWrongPeer is returned (wrapped) when the other side presents a
// certificate whose id is not the expected one.
var ErrWrongPeer = errors.New("peer presented another id")

// ErrClosed is returned (wrapped) by the methods of a closed or broken Link.
var ErrClosed = yamux.ErrSessionShutdown

// WrongPeerError names both ids of a pinning failure.
type WrongPeerError struct {
	Want, Got identity.ID
}

func (e *WrongPeerError) Error() string {
	return fmt.Sprintf("peer presented id %s, expected %s", e.Got, e.Want)
}

func (e *WrongPeerError) Unwrap() error { return ErrWrongPeer }

// Config says who we are and whom we accept.
type Config struct {
	// Identity is this device. Required.
	Identity *identity.Identity
	// Expect is the id the other side must have. The zero ID accepts any
	// device (a receiver that does not know its sender yet); the link's
	// Remote then tells who it was, for the caller's consent policy.
	Expect identity.ID
	// HandshakeTimeout bounds the TLS handshake; zero means 30 s.
	HandshakeTimeout time.Duration
	// Time is the clock used for certificate checks; nil means time.Now.
	Time func() time.Time
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("peer: Config.Identity is required")
	}
	return nil
}

// Link is an authenticated, multiplexed connection to one peer.
type Link struct {
	Local, Remote identity.ID
	RemoteCert    *x509.Certificate

	tls  *tls.Conn
	sess *yamux.Session

	closeOnce sync.Once
	closeErr  error
}

// Client runs the TLS client side over conn (the side that dialed) and
// returns the link. conn is closed on error.
func Client(ctx context.Context, conn net.Conn, cfg Config) (*Link, error) {
	return handshake(ctx, conn, cfg, true)
}

// Server runs the TLS server side over conn (the side that accepted) and
// returns the link. conn is closed on error.
func Server(ctx context.Context, conn net.Conn, cfg Config) (*Link, error) {
	return handshake(ctx, conn, cfg, false)
}

func handshake(ctx context.Context, conn net.Conn, cfg Config, client bool) (*Link, error) {
	if err := cfg.validate(); err != nil {
		conn.Close()
		return nil, err
	}
	var remote identity.ID
	var remoteCert *x509.Certificate
	now := cfg.Time
	if now == nil {
		now = time.Now
	}
	verify := func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		cert, err := peerIdentity(rawCerts, now())
		if err != nil {
			return err
		}
		got := identity.IDOfCert(cert)
		if !cfg.Expect.IsZero() && got != cfg.Expect {
			return &WrongPeerError{Want: cfg.Expect, Got: got}
		}
		remote, remoteCert = got, cert
		return nil
	}
	own, err := sessionCertificate(cfg.Identity, now())
	if err != nil {
		conn.Close()
		return nil, err
	}
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{own},
		NextProtos:   []string{ALPN},
		// There is no CA: the certificate is checked against the pinned id
		// in VerifyPeerCertificate, which crypto/tls calls in both roles.
		InsecureSkipVerify:    true,
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verify,
		Time:                  cfg.Time,
		ServerName:            "del",
	}
	raw := newRecordBatcher(conn)
	var tconn *tls.Conn
	if client {
		tconn = tls.Client(raw, tc)
	} else {
		tconn = tls.Server(raw, tc)
	}
	timeout := cfg.HandshakeTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tconn.HandshakeContext(hctx); err != nil {
		conn.Close()
		var wp *WrongPeerError
		if errors.As(err, &wp) {
			return nil, wp
		}
		return nil, fmt.Errorf("peer: TLS handshake: %w", err)
	}
	if remoteCert == nil {
		conn.Close()
		return nil, errors.New("peer: TLS handshake finished without a peer certificate")
	}
	// In TLS 1.3 the client finishes its handshake before the server has
	// checked the client's certificate. The server's one-byte "accepted"
	// makes both sides agree on the outcome before any channel opens.
	tconn.SetDeadline(deadlineOf(hctx))
	var ack [1]byte
	if client {
		if _, err = io.ReadFull(tconn, ack[:]); err == nil && ack[0] != linkAccepted {
			err = fmt.Errorf("unexpected byte %#x", ack[0])
		}
		if err != nil {
			err = fmt.Errorf("peer %s refused the link: %w", remote, err)
		}
	} else {
		ack[0] = linkAccepted
		_, err = tconn.Write(ack[:])
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("peer: %w", err)
	}
	tconn.SetDeadline(time.Time{})
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	ycfg.ConnectionWriteTimeout = 30 * time.Second
	// Full-size TLS records: a message fills one 16 KiB record or more; a
	// file transfer's 512 KiB DATA frame (plus its header) is one message,
	// one hand-off between the multiplexer's goroutines and ours.
	ycfg.MaxMessageSize = 1 << 20
	// No read buffer of its own: crypto/tls already holds each decrypted
	// record, and a bufio.Reader between them copied about a quarter of all
	// payload bytes once more (receiver time -4 to -5 %, context switches
	// -15 %, in alternating runs of both orders).
	ycfg.ReadBufSize = 0
	// Start with a window that keeps a fast link busy; yamux grows it (up
	// to MaxStreamWindowSize) once it has measured the round-trip time.
	ycfg.InitialStreamWindowSize = 4 << 20
	var sess *yamux.Session
	batched := &batchedTLS{Conn: tconn, raw: raw}
	if client {
		sess, err = yamux.Client(batched, ycfg, nil)
	} else {
		sess, err = yamux.Server(batched, ycfg, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("peer: multiplexer: %w", err)
	}
	return &Link{
		Local:      cfg.Identity.ID,
		Remote:     remote,
		RemoteCert: remoteCert,
		tls:        tconn,
		sess:       sess,
	}, nil
}

// Open opens a channel with the given name.
func (l *Link) Open(ctx context.Context, name string) (net.Conn, error) {
	if len(name) == 0 || len(name) > 255 {
		return nil, fmt.Errorf("peer: channel name %q must be 1-255 bytes", name)
	}
	st, err := l.sess.OpenStream(ctx)
	if err != nil {
		return nil, l.wrap(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		st.SetWriteDeadline(dl)
	}
	hdr := append([]byte{byte(len(name))}, name...)
	if _, err := st.Write(hdr); err != nil {
		st.Close()
		return nil, fmt.Errorf("peer: open channel %q: %w", name, l.wrap(err))
	}
	st.SetWriteDeadline(time.Time{})
	return &channel{Stream: st, name: name}, nil
}

// Accept waits for the peer to open a channel and returns it with its name.
func (l *Link) Accept(ctx context.Context) (string, net.Conn, error) {
	type res struct {
		st  *yamux.Stream
		err error
	}
	ch := make(chan res, 1)
	go func() {
		st, err := l.sess.AcceptStream()
		ch <- res{st, err}
	}()
	var r res
	select {
	case r = <-ch:
	case <-ctx.Done():
		// The goroutine ends when the session closes or a stream arrives;
		// a stream that arrives after we gave up is closed.
		go func() {
			if r := <-ch; r.st != nil {
				r.st.Close()
			}
		}()
		return "", nil, ctx.Err()
	}
	if r.err != nil {
		return "", nil, l.wrap(r.err)
	}
	st := r.st
	if dl, ok := ctx.Deadline(); ok {
		st.SetReadDeadline(dl)
	}
	var n [1]byte
	if _, err := io.ReadFull(st, n[:]); err != nil {
		st.Close()
		return "", nil, fmt.Errorf("peer: read channel header: %w", err)
	}
	name := make([]byte, n[0])
	if _, err := io.ReadFull(st, name); err != nil || n[0] == 0 {
		st.Close()
		return "", nil, fmt.Errorf("peer: read channel name: %v", err)
	}
	st.SetReadDeadline(time.Time{})
	return string(name), &channel{Stream: st, name: string(name)}, nil
}

// Close closes every channel and the underlying connection. It is safe to
// call more than once.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.sess.Close()
	})
	return l.closeErr
}

// Done is closed when the link is gone (closed or broken).
func (l *Link) Done() <-chan struct{} { return l.sess.CloseChan() }

// ConnectionState reports the TLS state, for summaries and tests.
func (l *Link) ConnectionState() tls.ConnectionState { return l.tls.ConnectionState() }

// RemoteAddr is the network address of the other side.
func (l *Link) RemoteAddr() net.Addr { return l.tls.RemoteAddr() }

func (l *Link) wrap(err error) error {
	return fmt.Errorf("peer: %w", err)
}

// channel is one named stream. CloseWrite half-closes it (the peer reads EOF)
// while reads go on, which request/response protocols rely on; Close closes
// both directions.
type channel struct {
	*yamux.Stream
	name string
}

// Name returns the channel's name.
func (c *channel) Name() string { return c.name }

// Finish ends a channel politely: it half-closes it, waits (at most timeout)
// for the peer to close its side, then closes it. Whoever speaks last in a
// request/response protocol uses it so that its last bytes are delivered
// before the link goes away.
func Finish(ch net.Conn, timeout time.Duration) error {
	defer ch.Close()
	if cw, ok := ch.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return err
		}
	}
	ch.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, ch)
	return err
}
