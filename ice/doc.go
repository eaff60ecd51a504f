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
// The Agent is the socket half:
//
//	a, _ := ice.NewAgent(ice.Config{Addrs: ..., STUN: ..., Relay: ice.TURNRelay(client), Controlling: offerer})
//	desc, _ := a.Gather(ctx)          // send desc.Marshal() to the peer (DHT, file, pipe)
//	conn, report, err := a.Connect(ctx, peerDesc)
//
// Gather listens on a passive and an S-O port per allowed address (both
// with SO_REUSEPORT, so the same ports also connect out), asks each STUN
// server over TCP from those very ports for server-reflexive candidates,
// and makes one relayed passive candidate through Relay. Connect runs the
// check loop (one goroutine owning the Checklist; a reader goroutine per
// connection, a goroutine per pending connect), selects a pair, closes
// every other socket, waits for every goroutine it started, and returns
// the selected connection as a *Conn. An agent is used for one Connect.
//
// Checks by tcptype (RFC 6544 §6-7): a local active candidate connects to
// the remote passive one and sends its check on that connection; a local
// S-O candidate connects from its own port to the remote S-O address, so
// the two SYNs cross. That connect lives as long as Connect (the kernel
// retransmits the same SYN, which a NAT's connection tracking accepts when
// the peer starts late), the pair counting as failed after CheckTimeout;
// after a refusal (RST) it is repeated 1 ms later, for CheckTimeout. A
// passive candidate never initiates: it answers on the connection the peer
// opened and sends its triggered check there. Checks that arrive from unknown
// addresses make peer-reflexive remote candidates.
//
// Selection (RFC 8445 §8): the controlling agent nominates the best valid
// direct pair once no higher-priority direct pair is pending (or Settle
// after the first valid one); a relayed pair only once every direct pair
// failed or DirectTimeout passed.
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
//     SYN is dropped until our own SYN has opened the mapping). Behind a
//     NAT the listener cannot complete a connection (its SYN-ACK has a new
//     sequence number, out of the NAT's tracked window); if it holds the
//     4-tuple our connect needs, it is closed (run.unstick).
//   - When the peer's first check arrives after some direct pairs failed
//     (it started late), those pairs are checked once more and the relay
//     waits at least CheckTimeout more (Checklist.PeerActive).
//   - A check on the peer's relayed candidate can arrive before the peer has
//     our description and so before its TURN server has a permission for
//     us: the server closes the connection (RFC 6062 §5.3), and TCP has no
//     retransmission to cover that. Such a pair connects again after 50 ms,
//     100 ms, ... up to six times, 3.15 s in all (run.relayClosed).
package ice
