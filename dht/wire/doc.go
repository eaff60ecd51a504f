// Package wire is a pure codec for OpenDHT's UDP protocol, as spoken by
// OpenDHT 2.4.x (dhtnode, python3-opendht) and later versions. It turns
// datagrams into Messages and back, with no sockets and no clocks. The
// protocol is described in ../shared/reference/opendht-wire.md; section
// numbers below refer to it.
//
// # Datagrams (§2–§4)
//
// One UDP datagram is one msgpack map with str keys:
//
//	{"a": args, "q": method, "t": tid, "y": "q", "v": "RNG1" [, "n": netid]}   query
//	{"r": body, "t": tid, "y": "r", "v" [, "n"]}                                reply
//	{"e": [code, msg], "r": {"id"}, "t", "y": "e", "v" [, "n"]}                 error
//	{["n",] "y": "p", "t": tid, "p": {index: {"o": offset, "d": bin}}}          value part
//
// Methods are ping, find, get, put, listen, refresh and update (a listen
// push sent by the storing node as a query). Ids, hashes, tokens and node
// lists are msgpack bin; the compact node lists "n4"/"n6" hold 26/38-byte
// records id | address | port, big endian (§5). A receiver classifies a
// message by the keys present, "e" > "r" > "p" > "u" > query, and ignores key
// order; Decode does the same and accepts any integer width and 4-byte tids.
//
// # Canonical encoding
//
// Encoders emit exactly what libopendht emits: each message's keys in the
// order of its sender function in network_engine.cpp, the smallest integer
// encodings (msgpack-c), str for text and bin for blobs. So a decoded
// capture re-encodes to the same bytes (see golden_test.go), and a value
// body packs to the same bytes that OpenDHT signs (§12, §13).
//
// # Values (§12) and fragmentation (§8)
//
// Value is OpenDHT's value with its plain, signed (owner + sig) and
// encrypted (cypher) forms. A message carrying values sends them inline when
// there are fewer than 50 totalling under 600 bytes; otherwise "values" holds
// their sizes and the packed values follow in "p" datagrams of at most
// 1280 bytes each, under the same tid (SetValues, AppendParts, Reassembly).
package wire
