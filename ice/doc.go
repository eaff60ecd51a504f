// Package ice finds the best working TCP path between two devices and hands
// it back as a net.Conn: ICE (RFC 8445) over TCP (RFC 6544), with RFC 4571
// framing, connectivity checks built from pion/stun messages, and a TURN
// relay only as the last resort.
//
// The package has two halves. The pure half has no sockets and no timers:
// the candidate codec (Candidate, ParseCandidate: the a=candidate grammar of
// RFC 8839 §5.1 with RFC 6544 §4.5's tcptype), priorities and foundations
// (Priority, LocalPreference, Foundation: RFC 8445 §5.1.2 with RFC 6544
// §4.2's direction preferences), the offer/answer Description, the RFC 4571
// frame codec (AppendFrame, ParseFrame), the check messages, and the
// Checklist (pairing, pruning, states, unfreezing by foundation, Ta pacing,
// regular and aggressive nomination, role-conflict resolution), which takes
// the time as an argument.
//
// The Agent is the socket half; see agent.go.
//
// # Wire format on a candidate pair's TCP connection
//
// Every packet is an RFC 4571 frame: a 16-bit big-endian length, then the
// packet. During checks the packets are STUN Binding requests and responses
// (USERNAME "<recipient ufrag>:<sender ufrag>", PRIORITY, ICE-CONTROLLING or
// ICE-CONTROLLED, USE-CANDIDATE when nominating, MESSAGE-INTEGRITY with the
// recipient's password, FINGERPRINT). After selection the same connection
// carries application data, still framed (RFC 6544 §3); a STUN frame that
// arrives late (a retransmitted check) is answered or dropped by the
// returned net.Conn and never shows up as data.
//
// # Deviations, on purpose
//
//   - Foundations include the tcptype: active, passive and S-O checks
//     through the same NAT fail or succeed independently.
//   - A successful check makes the checked pair valid (RFC 8445 §7.2.5.3.2
//     builds the valid pair from the mapped address); with TCP the
//     connection that carried the check is what is used, so the mapped
//     address is only reported.
//   - The controlled agent selects a pair as soon as an authenticated check
//     with USE-CANDIDATE arrives on its connection, without waiting for its
//     own triggered check (RFC 8445 §7.3.1.5 waits): the controlling agent
//     nominates only after its own check succeeded on this same TCP
//     connection, so both directions are proven, and once it has handed the
//     connection to an application that does not read yet, our check would
//     go unanswered.
//   - Aggressive nomination (RFC 5245 §8.1.1.2) is kept as an option. So
//     that both sides pick the same connection, the controlled agent answers
//     USE-CANDIDATE on one pair only: the first it accepted.
//   - S-O candidates also listen (SO_REUSEPORT) on their port: when one
//     side's SYN reaches the other before that side has sent its own, the
//     connection is accepted instead of reset. Simultaneous open proper
//     still happens when both SYNs cross (through NATs, where the peer's
//     SYN is dropped until our own SYN has opened the mapping).
package ice
