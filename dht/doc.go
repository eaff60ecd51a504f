// Package dht is a Kademlia DHT node that speaks OpenDHT's UDP protocol
// (OpenDHT 2.4+, ../shared/reference/opendht-wire.md), so dhtnode and
// python3-opendht nodes are its peers. The messages themselves are in
// dht/wire; this package owns the sockets, timers and state.
//
// # Protocol flow
//
//	join:    ping each bootstrap address (id unknown); the pong names the node;
//	         then look up our own id to fill the routing table.
//	lookup:  ask the α=3 closest known nodes ("find", or "get" to collect values
//	         on the way); every reply names up to 8 closer nodes and carries a
//	         write token; keep the 14 closest; stop when the k=8 closest that did
//	         not fail have all answered.
//	put:     lookup, then "put" with each node's token to the 8 closest; one ack
//	         per value. Values of 600 bytes or more follow as "p" fragments.
//	listen:  lookup, then "listen" (ve=1, a sid) on the 4 closest, refreshed
//	         every 20 s; they answer at once with an "update" carrying what they
//	         store, then push "update" requests for new values ("values"),
//	         refreshed ones ("re") and expired ones ("exp").
//
// # Routing table
//
// 160-bit ids, XOR distance, k=8 buckets. Bucket i holds the nodes sharing i
// leading bits with us; the last bucket holds our own id and is the only one
// that splits. A full bucket replaces an expired (one request unanswered
// after 3 sends) or never-confirmed node, and otherwise drops the newcomer.
// Maintenance looks up our own id (every 10 min, every 5 s while the table
// is small), refreshes buckets untouched for 10 min with a random id inside
// them, and pings nodes silent for 10 min. Requests are sent 3 times, ≈1 s
// and ≈2 s apart (d = 2d + U(0, 250 ms) from d = 0.5 s), as OpenDHT does.
//
// # Storage
//
// A node stores a put value unless 8 known nodes are closer to the key,
// keeps it for its type's TTL (USER_DATA 10 min, certificates 7 days, …),
// and acks even what it refuses. Limits: 64 KiB per value, 1024 values per
// key, 64 MiB per node, over which the oldest values of the source using the
// most storage go. Write tokens are SHA-256(secret | ip | port) with a secret
// rotating every 15-45 min (current and previous accepted). Signed values
// (RSA PKCS#1 v1.5, SHA-512 over the canonical body) are checked on receipt;
// one replaces another only from the same owner with a higher seq.
// Certificates (type 8) are stored only at their public-key id.
//
// # Defences
//
// Requests over 1024/s per source IP (8192/s in all) are dropped. Until a
// source has shown it receives what we send (it answered our ping, or sent a
// valid token) replies to it are cut to 8× the bytes it sent (values left
// out). Messages with our own id, a zero id, another network id, or from
// martian addresses are ignored; malformed datagrams are dropped (fuzzed).
//
// Time comes from Config.Clock and randomness from Config.Random, and a Node
// is driven only by HandlePacket and Tick, so tests and the in-process
// simulation run without sockets or sleeping; ListenUDP wraps a Node with a
// UDP socket, a read loop and a 50 ms timer loop.
package dht
