package peer

// Reaching a device by its id alone: signaling over the DHT, then ICE, then
// the pinned link of link.go.
//
// Signaling flow (Alice dials Bob, whose id she knows):
//
//  1. Alice finds Bob's certificate on the DHT (an OpenDHT certificate
//     value, type 8, at key = Bob's id) and checks that it hashes to the id.
//  2. Alice's ICE agent (controlling) gathers candidates.
//  3. Alice puts a request at SignalKey(Bob): a value signed by Alice and
//     encrypted for Bob's key (OpenDHT's putEncrypted format), carrying
//     {kind "request", from, to, nonce, time, ICE description}. She listens
//     on SignalKey(Alice) for the answer.
//  4. Bob's host listens on SignalKey(Bob). It decrypts, checks the signature
//     and that the signer is the "from" id, that "to" is Bob, that the time
//     is within Freshness of its clock and that the nonce is new (replays
//     and values not for Bob are ignored). Its agent (controlled) gathers
//     and it answers at SignalKey(Alice) the same way, with the same nonce.
//  5. Both run the ICE checks; the selected pair's connection carries TLS
//     1.3 pinned to both ids (link.go), Alice being the TLS client.
//
// One link per peer: later channels to the same peer ride it. When both
// sides dial each other at once, the side with the smaller id ignores the
// other's request and the side with the larger id answers it and abandons
// its own dial in favour of the link that results.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/ice"
	"github.com/del-share/del/identity"
)

// SignalKey is the DHT key where connection requests and answers for id
// are put.
func SignalKey(id identity.ID) wire.ID {
	return wire.ID(sha1.Sum([]byte("del/signal/v1/" + id.String())))
}

// signalUserType marks DEL's signaling values on the DHT.
const signalUserType = "del/signal/v1"

// signal is the (encrypted, signed) content of a signaling value.
type signal struct {
	Kind  string `json:"kind"` // "request" or "answer"
	From  string `json:"from"`
	To    string `json:"to"`
	Nonce string `json:"nonce"`
	Time  int64  `json:"time"`          // Unix seconds
	ICE   string `json:"ice,omitempty"` // ice.Description text
	// X carries the payload of other kinds (see Host.Handle).
	X json.RawMessage `json:"x,omitempty"`
}

// HostConfig configures a Host.
type HostConfig struct {
	Identity *identity.Identity // required
	DHT      *dht.Node          // required; needs the same Identity to decrypt
	// ICE is the template for each connection's agent; Controlling is set
	// per role.
	ICE ice.Config
	// Freshness is how far a request's time may be from our clock
	// (default 60 s).
	Freshness time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Accept decides whether a device may connect at all; nil accepts any
	// device (channels still need their own consent, e.g. transfer's).
	Accept func(id identity.ID) bool
	// SeenFile, if set, keeps the nonces of signals already handled across
	// restarts, so a device that comes back online does not answer requests
	// it answered before (they stay on the DHT for minutes).
	SeenFile string
	Logger   *slog.Logger
}

// Host is a device online: it answers connection requests addressed to it
// and dials others by id, keeping one link per peer.
type Host struct {
	cfg HostConfig
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	incoming chan Incoming

	mu      sync.Mutex // guards the fields below
	links   map[identity.ID]*Link
	ready   map[identity.ID]chan struct{} // closed when links[id] is set
	dialing map[identity.ID]bool
	nonces  map[string]time.Time // seen nonces and when to forget them
	answers map[string]chan signal
	last    Timing // phases of the last dial, for reports
	handles map[string]func(from identity.ID, x json.RawMessage)
}

// Incoming is a channel the peer opened.
type Incoming struct {
	Name string
	Conn net.Conn
	Link *Link
}

// Timing says how long each phase of a dial took.
type Timing struct {
	Lookup, Signal, ICE, TLS time.Duration
	// Path is the selected pair's local and remote candidate types, as
	// "host-srflx"; it contains "relay" when the relay carries the link.
	Path   string
	Report *ice.Report
}

// NewHost returns a host; Start puts it online.
func NewHost(cfg HostConfig) (*Host, error) {
	if cfg.Identity == nil || cfg.DHT == nil {
		return nil, errors.New("peer: HostConfig needs Identity and DHT")
	}
	if cfg.Freshness == 0 {
		cfg.Freshness = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Host{
		cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel,
		incoming: make(chan Incoming),
		links:    map[identity.ID]*Link{},
		ready:    map[identity.ID]chan struct{}{},
		dialing:  map[identity.ID]bool{},
		nonces:   map[string]time.Time{},
		answers:  map[string]chan signal{},
		handles:  map[string]func(identity.ID, json.RawMessage){},
	}
	h.loadSeen()
	return h, nil
}

// loadSeen reads SeenFile: lines "<unix-expiry> <key>".
func (h *Host) loadSeen() {
	if h.cfg.SeenFile == "" {
		return
	}
	b, err := os.ReadFile(h.cfg.SeenFile)
	if err != nil {
		return
	}
	now := h.cfg.Now()
	for _, line := range strings.Split(string(b), "\n") {
		exp, key, ok := strings.Cut(line, " ")
		t, err := strconv.ParseInt(exp, 10, 64)
		if ok && err == nil && time.Unix(t, 0).After(now) {
			h.nonces[key] = time.Unix(t, 0)
		}
	}
}

// rememberLocked records a handled signal in SeenFile (appending; the file
// is rewritten without expired lines when it grows).
func (h *Host) rememberLocked(key string, until time.Time) {
	if h.cfg.SeenFile == "" {
		return
	}
	flag := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if st, err := os.Stat(h.cfg.SeenFile); err == nil && st.Size() > 64<<10 {
		flag = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(h.cfg.SeenFile, flag, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	if flag&os.O_TRUNC != 0 {
		for k, t := range h.nonces {
			fmt.Fprintf(f, "%d %s\n", t.Unix(), k)
		}
		return
	}
	fmt.Fprintf(f, "%d %s\n", until.Unix(), key)
}

// ID is this device's id.
func (h *Host) ID() identity.ID { return h.cfg.Identity.ID }

// Start publishes this device's certificate and listens for requests. It
// returns once the certificate is stored on the DHT.
func (h *Host) Start(ctx context.Context) error {
	ev, err := h.cfg.DHT.Listen(h.ctx, SignalKey(h.ID()), nil)
	if err != nil {
		return fmt.Errorf("peer: listen for requests: %w", err)
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for e := range ev {
			if !e.Expired {
				h.handleSignal(e.Value)
			}
		}
	}()
	if _, err := h.cfg.DHT.PublishCertificate(ctx); err != nil {
		return fmt.Errorf("peer: publish certificate: %w", err)
	}
	// Keep it published while we are online.
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.cfg.DHT.Announce(h.ctx, wire.ID(h.ID()), dht.CertificateValue(h.cfg.Identity))
	}()
	return nil
}

// Close closes every link and stops answering.
func (h *Host) Close() error {
	h.mu.Lock()
	h.cancel() // under mu: register sees it and adds no goroutine
	for _, l := range h.links {
		l.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	return nil
}

// Accept returns the next channel opened by any peer.
func (h *Host) Accept(ctx context.Context) (Incoming, error) {
	select {
	case in := <-h.incoming:
		return in, nil
	case <-ctx.Done():
		return Incoming{}, ctx.Err()
	case <-h.ctx.Done():
		return Incoming{}, ErrHostClosed
	}
}

// ErrHostClosed is returned by a closed Host.
var ErrHostClosed = errors.New("peer: host closed")

// LastTiming reports the phases of the most recent dial.
func (h *Host) LastTiming() Timing {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// Dial opens a channel to the device id, connecting first if needed.
func (h *Host) Dial(ctx context.Context, id identity.ID, channel string) (net.Conn, *Link, error) {
	l, err := h.Link(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	c, err := l.Open(ctx, channel)
	return c, l, err
}

// Link returns the link to id, dialing it if there is none.
func (h *Host) Link(ctx context.Context, id identity.ID) (*Link, error) {
	if id == h.ID() {
		return nil, errors.New("peer: cannot dial ourselves")
	}
	h.mu.Lock()
	if l := h.links[id]; l != nil {
		h.mu.Unlock()
		return l, nil
	}
	ready := h.readyLocked(id)
	if h.dialing[id] {
		// Someone else is dialing: wait for their link.
		h.mu.Unlock()
		select {
		case <-ready:
			return h.Link(ctx, id)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	h.dialing[id] = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.dialing, id)
		h.mu.Unlock()
	}()
	return h.dial(ctx, id, ready)
}

func (h *Host) readyLocked(id identity.ID) chan struct{} {
	ch := h.ready[id]
	if ch == nil {
		ch = make(chan struct{})
		h.ready[id] = ch
	}
	return ch
}

func (h *Host) dial(ctx context.Context, id identity.ID, ready chan struct{}) (*Link, error) {
	var t Timing
	start := time.Now()
	cert, err := h.cfg.DHT.FindCertificate(ctx, wire.ID(id))
	if err != nil {
		return nil, fmt.Errorf("peer: look up %s: %w", id, err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || identity.IDOfCert(cert) != id {
		return nil, fmt.Errorf("peer: the certificate found for %s is not that device's", id)
	}
	t.Lookup = time.Since(start)

	start = time.Now()
	icfg := h.cfg.ICE
	icfg.Controlling = true
	agent, err := ice.NewAgent(icfg)
	if err != nil {
		return nil, err
	}
	defer agent.Close()
	desc, err := agent.Gather(ctx)
	if err != nil {
		return nil, fmt.Errorf("peer: gather candidates: %w", err)
	}
	nonce := randomNonce()
	answer := make(chan signal, 1)
	h.mu.Lock()
	h.answers[nonce] = answer
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.answers, nonce)
		h.mu.Unlock()
	}()
	req := signal{Kind: "request", From: h.ID().String(), To: id.String(), Nonce: nonce,
		Time: h.cfg.Now().Unix(), ICE: string(desc.Marshal())}
	if err := h.put(ctx, id, pub, req); err != nil {
		return nil, fmt.Errorf("peer: send connection request to %s: %w", id, err)
	}
	var ans signal
	select {
	case ans = <-answer:
	case <-ready:
		// The peer dialed us at the same time and won: use its link.
		return h.Link(ctx, id)
	case <-ctx.Done():
		return nil, fmt.Errorf("peer: %s did not answer: %w", id, ctx.Err())
	}
	remote, err := ice.ParseDescription([]byte(ans.ICE))
	if err != nil {
		return nil, fmt.Errorf("peer: answer from %s: %w", id, err)
	}
	t.Signal = time.Since(start)

	start = time.Now()
	conn, rep, err := agent.Connect(ctx, remote)
	t.Report = rep
	if err != nil {
		return nil, fmt.Errorf("peer: no path to %s: %w", id, err)
	}
	t.ICE = time.Since(start)
	t.Path = conn.Pair().Local.Type.String() + "-" + conn.Pair().Remote.Type.String()

	start = time.Now()
	l, err := Client(ctx, conn, Config{Identity: h.cfg.Identity, Expect: id})
	if err != nil {
		return nil, err
	}
	t.TLS = time.Since(start)
	h.mu.Lock()
	h.last = t
	h.mu.Unlock()
	return h.register(id, l), nil
}

// register makes l the link to id and starts accepting its channels. If a
// link already exists (a crossing dial won), l is closed and that one kept.
func (h *Host) register(id identity.ID, l *Link) *Link {
	h.mu.Lock()
	if h.ctx.Err() != nil {
		// Closed meanwhile: its goroutines are being waited for.
		h.mu.Unlock()
		l.Close()
		return l
	}
	if old := h.links[id]; old != nil {
		h.mu.Unlock()
		l.Close()
		return old
	}
	h.links[id] = l
	ready := h.readyLocked(id)
	close(ready)
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.serveLink(id, l)
	}()
	return l
}

// serveLink hands the link's incoming channels to Accept until it ends.
func (h *Host) serveLink(id identity.ID, l *Link) {
	defer func() {
		h.mu.Lock()
		if h.links[id] == l {
			delete(h.links, id)
			delete(h.ready, id)
		}
		h.mu.Unlock()
		l.Close()
	}()
	for {
		name, c, err := l.Accept(h.ctx)
		if err != nil {
			return
		}
		select {
		case h.incoming <- Incoming{Name: name, Conn: c, Link: l}:
		case <-h.ctx.Done():
			c.Close()
			return
		}
	}
}

// put seals sig for the holder of pub and puts it at SignalKey(to).
func (h *Host) put(ctx context.Context, to identity.ID, pub *rsa.PublicKey, sig signal) error {
	data, err := json.Marshal(sig)
	if err != nil {
		return err
	}
	v := &wire.Value{Data: data, UserType: signalUserType}
	var idb [8]byte
	rand.Read(idb[:])
	for _, b := range idb {
		v.ID = v.ID<<8 | uint64(b)
	}
	v.ID |= 1
	ev, err := dht.Encrypt(v, h.cfg.Identity, pub)
	if err != nil {
		return err
	}
	_, err = h.cfg.DHT.Put(ctx, SignalKey(to), ev)
	return err
}

// handleSignal checks a value heard on our signal key and acts on it.
// Anything not fresh, not for us, not signed by its claimed sender, or seen
// before is dropped.
func (h *Host) handleSignal(v *wire.Value) {
	sig, from, err := h.open(v)
	if err != nil {
		h.log.Debug("peer: signal ignored", "err", err)
		return
	}
	switch sig.Kind {
	default:
		h.mu.Lock()
		fn := h.handles[sig.Kind]
		h.mu.Unlock()
		if fn != nil {
			fn(from, sig.X)
		}
	case "answer":
		h.mu.Lock()
		ch := h.answers[sig.Nonce]
		h.mu.Unlock()
		if ch != nil {
			select {
			case ch <- sig:
			default:
			}
		}
	case "request":
		if h.cfg.Accept != nil && !h.cfg.Accept(from) {
			h.log.Info("peer: connection request refused by policy", "from", from)
			return
		}
		h.mu.Lock()
		crossing := h.dialing[from] && h.ID().String() < from.String()
		exists := h.links[from] != nil
		h.mu.Unlock()
		if crossing {
			// We dial them too and our id is smaller: our request wins.
			return
		}
		if exists {
			// A new request from a linked peer means it lost the link
			// (restart): replace ours.
			h.mu.Lock()
			if l := h.links[from]; l != nil {
				delete(h.links, from)
				delete(h.ready, from)
				l.Close()
			}
			h.mu.Unlock()
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			if err := h.answer(from, sig); err != nil {
				h.log.Info("peer: incoming connection failed", "from", from, "err", err)
			}
		}()
	}
}

// open decrypts and checks a signaling value.
func (h *Host) open(v *wire.Value) (signal, identity.ID, error) {
	var sig signal
	if v.UserType != "" && v.UserType != signalUserType && !v.Encrypted() {
		return sig, identity.ID{}, errors.New("not a signal")
	}
	if v.Encrypted() {
		d, err := dht.Decrypt(v, h.cfg.Identity)
		if err != nil {
			return sig, identity.ID{}, fmt.Errorf("not for us: %w", err)
		}
		v = d
	}
	if !v.Signed() || dht.Verify(v) != nil {
		return sig, identity.ID{}, errors.New("unsigned or badly signed")
	}
	if identity.ID(v.To) != h.ID() {
		return sig, identity.ID{}, errors.New("addressed to another device")
	}
	if err := json.Unmarshal(v.Data, &sig); err != nil {
		return sig, identity.ID{}, fmt.Errorf("malformed: %w", err)
	}
	from, err := identity.ParseID(sig.From)
	if err != nil || identity.ID(dht.OwnerID(v)) != from {
		return sig, identity.ID{}, errors.New("signer is not the claimed sender")
	}
	if sig.To != h.ID().String() {
		return sig, identity.ID{}, errors.New("addressed to another device")
	}
	now := h.cfg.Now()
	if d := now.Sub(time.Unix(sig.Time, 0)); d > h.cfg.Freshness || d < -h.cfg.Freshness {
		return sig, identity.ID{}, fmt.Errorf("stale (%s old)", d.Round(time.Second))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for n, until := range h.nonces {
		if now.After(until) {
			delete(h.nonces, n)
		}
	}
	key := sig.Kind + "/" + sig.From + "/" + sig.Nonce
	if _, seen := h.nonces[key]; seen {
		return sig, identity.ID{}, errors.New("replayed")
	}
	h.nonces[key] = now.Add(3 * h.cfg.Freshness)
	h.rememberLocked(key, h.nonces[key])
	return sig, from, nil
}

// answer runs the controlled side of a connection requested by from.
func (h *Host) answer(from identity.ID, req signal) error {
	ctx, cancel := context.WithTimeout(h.ctx, 30*time.Second)
	defer cancel()
	remote, err := ice.ParseDescription([]byte(req.ICE))
	if err != nil {
		return err
	}
	cert, err := h.cfg.DHT.FindCertificate(ctx, wire.ID(from))
	if err != nil {
		return err
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return errors.New("requester's certificate has no RSA key")
	}
	icfg := h.cfg.ICE
	icfg.Controlling = false
	agent, err := ice.NewAgent(icfg)
	if err != nil {
		return err
	}
	defer agent.Close()
	desc, err := agent.Gather(ctx)
	if err != nil {
		return err
	}
	// The requester checks as soon as it has the answer: our relay must
	// already let it in.
	agent.Permit(remote)
	ans := signal{Kind: "answer", From: h.ID().String(), To: from.String(), Nonce: req.Nonce,
		Time: h.cfg.Now().Unix(), ICE: string(desc.Marshal())}
	if err := h.put(ctx, from, pub, ans); err != nil {
		return err
	}
	conn, _, err := agent.Connect(ctx, remote)
	if err != nil {
		return err
	}
	l, err := Server(ctx, conn, Config{Identity: h.cfg.Identity, Expect: from})
	if err != nil {
		return err
	}
	h.register(from, l)
	return nil
}

// Handle registers fn for signals of the given kind (any kind but
// "request" and "answer"), sent by Signal; nil removes it. Signals are
// checked as connection requests are (signed by their sender, for us,
// fresh, not replayed). fn runs on the host's listening goroutine and must
// not block.
func (h *Host) Handle(kind string, fn func(from identity.ID, x json.RawMessage)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if fn == nil {
		delete(h.handles, kind)
	} else {
		h.handles[kind] = fn
	}
}

// Signal sends a signal of the given kind with payload x to the device id,
// signed by us and encrypted for it, through the DHT.
func (h *Host) Signal(ctx context.Context, to identity.ID, kind string, x any) error {
	if kind == "request" || kind == "answer" {
		return errors.New("peer: reserved signal kind " + kind)
	}
	raw, err := json.Marshal(x)
	if err != nil {
		return err
	}
	cert, err := h.cfg.DHT.FindCertificate(ctx, wire.ID(to))
	if err != nil {
		return fmt.Errorf("peer: look up %s: %w", to, err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || identity.IDOfCert(cert) != to {
		return fmt.Errorf("peer: the certificate found for %s is not that device's", to)
	}
	return h.put(ctx, to, pub, signal{Kind: kind, From: h.ID().String(), To: to.String(),
		Nonce: randomNonce(), Time: h.cfg.Now().Unix(), X: raw})
}

// DHT returns the host's DHT node.
func (h *Host) DHT() *dht.Node { return h.cfg.DHT }

// Identity returns the host's identity.
func (h *Host) Identity() *identity.Identity { return h.cfg.Identity }

func randomNonce() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
