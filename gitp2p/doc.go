// Package gitp2p serves git repositories over a DEL channel: a pkt-line
// codec and the two services of git's pack protocol, upload-pack (fetch,
// clone) and receive-pack (push), for protocol v0/v1 (gitprotocol-pack(5),
// gitprotocol-capabilities(5), gitprotocol-common(5)). A git client asking
// for protocol v2 falls back to v0 when the server does not advertise it.
//
// Packs are built by `git pack-objects` and received by `git index-pack`,
// both run as subprocesses; negotiation, shallow boundaries, ref checks,
// quarantine and access control are done here.
package gitp2p
