package peer

import "github.com/del-share/del/peer/link"

// The link layer (pinned TLS 1.3, session certificates, channels) lives in
// package link, which does not pull in the DHT and ICE; these names keep
// peer's API whole for the programs that use both.

// ALPN is the TLS application protocol DEL links negotiate.
const ALPN = link.ALPN

// SessionFile is where PrepareIn keeps the session certificate.
const SessionFile = link.SessionFile

type (
	// Link is an authenticated, multiplexed connection to one peer.
	Link = link.Link
	// Config says who we are and whom we accept.
	Config = link.Config
	// WrongPeerError says which id was expected and which was presented.
	WrongPeerError = link.WrongPeerError
)

var (
	// ErrWrongPeer is wrapped by WrongPeerError.
	ErrWrongPeer = link.ErrWrongPeer
	// ErrClosed is returned by a closed link.
	ErrClosed = link.ErrClosed
	// Client runs the TLS client side of a link over a connection.
	Client = link.Client
	// Server runs the TLS server side of a link over a connection.
	Server = link.Server
	// Finish half-closes a channel and waits for the peer's close.
	Finish = link.Finish
	// Prepare makes the session certificate ahead of the first link.
	Prepare = link.Prepare
	// PrepareIn is Prepare with the certificate kept in a folder.
	PrepareIn = link.PrepareIn
)
