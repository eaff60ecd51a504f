// Package gitp2p serves git repositories over a DEL channel: a pkt-line
// codec and the two services of git's pack protocol, upload-pack (fetch,
// clone, ls-remote) and receive-pack (push), protocol v0/v1
// (gitprotocol-pack(5), gitprotocol-capabilities(5), gitprotocol-common(5)).
// A git client that asks for protocol v2 falls back to v0 because the
// server does not advertise it. Packs are built by `git pack-objects` and
// indexed by `git index-pack`, run as subprocesses; negotiation, shallow
// boundaries, ref checks, quarantine and access control are done here.
//
// The refs and the objects negotiation needs (types, commits' parents and
// times, tags' targets) are read in this process from the repository's
// files (gitrepository-layout(5), gitformat-pack(5)): HEAD, packed-refs and
// loose refs; packs through their .idx v1/v2, loose objects, alternates.
// A repository whose layout this reader leaves to git (an [extensions]
// section, a linked work tree, a reftable) is read through `git
// for-each-ref` and `git cat-file --batch-command` instead.
//
// # pkt-line (gitprotocol-common(5))
//
// Four lowercase hex digits give the length of the packet including
// themselves, then the payload; at most 65520 bytes in all. "0000" is a
// flush, "0001" a delimiter and "0002" a response end (protocol v2 only);
// "0003" is invalid. Text payloads end with LF. "ERR <text>" ends a session
// with an error the client prints as "remote error: <text>". With
// side-band / side-band-64k, pack data travels in packets whose first
// payload byte is the band: 1 data, 2 progress, 3 fatal error; at most
// 1000 / 65520 bytes per packet.
//
// # Session on a DEL channel
//
// git-remote-del opens the peer channel "git/<repo>" (package peer) and
// writes one pkt-line, "<service> <repo>\n", where service is
// git-upload-pack or git-receive-pack and repo repeats the channel's repo
// (extra NUL-separated parameters are ignored, room for "version=2").
// Serve asks the Policy whether the peer may reach repo, and receive-pack
// needs Access.Push; a refusal is an ERR packet. Then the service runs and
// the server closes the channel (peer.Finish). The channel "git-list"
// carries a listing instead: "<name> read|push|force\n" per repository the
// asking peer may reach, then a flush.
//
// # upload-pack flow
//
//	S: <oid> HEAD\0<capabilities>   HEAD first, then refs by name, each
//	S: <oid> refs/heads/main        annotated tag followed by
//	S: <oid> refs/tags/v1           "<peeled> refs/tags/v1^{}";
//	S: <oid> refs/tags/v1^{}        capabilities include
//	S: 0000                         symref=HEAD:<branch>
//	C: want <oid> <capabilities>    wants must be advertised ids
//	C: want <oid> / shallow <oid> / deepen <n>
//	C: 0000                         (a flush alone: nothing wanted, end)
//	S: shallow <oid> / unshallow <oid> ... 0000   (only after deepen)
//	C: have <oid> x up to 32, 0000  answered per multi_ack mode:
//	S: ACK <oid> common|continue|ready ... NAK
//	C: done                         (not sent after "ready" with no-done)
//	S: ACK <oid> | NAK
//	S: pack, in side-band packets if asked, then 0000
//
// Negotiation follows git's upload-pack answer for answer (the end-to-end
// test compares them): "ready" is said once every want reaches a commit
// the client has, walking no further back than the oldest have. "deepen n"
// cuts the history n commits below the wants (deepen-relative: below the
// client's shallow commits); the new boundary and the client's shallow
// commits are passed to pack-objects as "--shallow <oid>" lines.
//
// # receive-pack flow
//
//	S: <oid> <ref>\0report-status delete-refs quiet atomic ofs-delta ...
//	S: 0000                         (empty repository: "0{40} capabilities^{}")
//	C: <old> <new> <ref>\0<caps>, more commands, 0000, then a pack
//	S: unpack ok | unpack <error>, ok <ref> | ng <ref> <reason> ..., 0000
//
// The pack is copied to `git index-pack --stdin --fix-thin` (with --strict
// when receive.fsckObjects or transfer.fsckObjects is set), whose object directory
// is a fresh quarantine, objects/tmp_objdir-incoming-*, with the
// repository's objects as alternate (GIT_OBJECT_DIRECTORY,
// GIT_ALTERNATE_OBJECT_DIRECTORIES, GIT_QUARANTINE_PATH; see
// git-receive-pack(1) "QUARANTINE ENVIRONMENT"). Each command is checked:
// valid name under refs/, old value equal to the ref's current value, not
// the checked-out branch of a work tree, fast-forward (merge-base
// --is-ancestor) unless the share grants force, deletions only with force.
// The new tips must be connected (rev-list --objects --stdin --not --all).
// Only then are the quarantined files moved into the repository (pack
// before index) and the refs updated with `git update-ref --stdin`, which
// checks the old values again under git's ref locks; an atomic push is one
// transaction, and any refused command refuses them all. The quarantine is
// removed in every case.
package gitp2p
