// Package turn is DEL's relay: a TURN server (`del turn`) and a TURN client,
// both for TCP allocations (RFC 6062) over TCP or TLS, used when no direct
// path between two devices works.
//
// The server is pion/turn v5's, configured here: long-term credentials from
// a user table and coturn-compatible REST API credentials (RFC 8489 §9.2,
// draft-uberti-behave-turn-rest-00), denied peer ranges (CVE-2020-26262),
// per-user allocation quota (486), per-allocation bandwidth limit, Prometheus
// counters, slog logs. Its relay address generator (relay.go) never lets two
// allocations share a relayed address, which pion's own generators allow
// through SO_REUSEPORT, and its relayed TCP connections move bytes with
// splice(2) and relay half-closes.
//
// The client is this package's own (pion/stun for the messages): one control
// connection per allocation, requests matched to answers by transaction id,
// 401 and 438 answered by (re)authenticating, ConnectionAttempt indications
// turned into ConnectionBinds in the background.
//
// # Protocol flow (RFC 6062)
//
// Every message below is a STUN message (RFC 8489 §5: 20-byte header with a
// 16-bit length, then TLV attributes) sent back to back on a TCP stream; a
// receiver cuts the stream with the header's length (frameLen).
//
//	client                         server                         peer
//	  | Allocate REQUESTED-TRANSPORT=6 (TCP)  (control connection)
//	  |----------------------------->|
//	  |<-- 401 REALM NONCE ----------|
//	  | Allocate + USERNAME REALM NONCE MESSAGE-INTEGRITY (MD5(user:realm:pass))
//	  |----------------------------->|  binds the relayed address R
//	  |<-- XOR-RELAYED-ADDRESS R, LIFETIME, XOR-MAPPED-ADDRESS
//	  | CreatePermission XOR-PEER-ADDRESS P (per IP, lasts 300 s)
//	  |----------------------------->|
//	incoming (§5.3):
//	  |                              |<------- TCP connect to R ------|
//	  |<-- ConnectionAttempt CONNECTION-ID c, XOR-PEER-ADDRESS P (indication)
//	  | new data connection: ConnectionBind c (+ credentials)
//	  |=============================>|
//	  |<== success; then raw bytes <=|=======> raw bytes =============|
//	outgoing (§4.3):
//	  | Connect XOR-PEER-ADDRESS P ->|-- TCP connect from R to P ---->|
//	  |<-- CONNECTION-ID c ----------|
//	  | new data connection: ConnectionBind c, then raw bytes as above
//	  | Refresh LIFETIME t (t=0 releases; the client refreshes at t/2)
//
// A 438 (Stale Nonce) answer carries a new NONCE; the client retries with
// it. The server closes a data connection when the allocation goes.
//
// # Using the client
//
//	c := &turn.Client{Server: "relay.example:3478", Username: u, Password: p}
//	a, err := c.Allocate(ctx)      // *Allocation, a net.Listener on a.RelayedAddr()
//	err = a.Permit(ctx, peerIP)     // before a peer can connect in
//	conn, err := a.Accept()         // a peer connected to the relayed address
//	conn, err = a.DialPeer(ctx, "203.0.113.7:4000") // out through the relay
//	a.Close()                       // releases; relayed connections end with it
package turn
