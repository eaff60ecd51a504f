package main

// One-off transfers with a code phrase, for two devices that do not know
// each other's id.
//
// The code is "<n>-<word>-<word>-<word>": n (1..9999) only chooses the DHT
// key where the sender waits, SHA-1("del/code/v1/<n>"); the whole code is the
// SPAKE2 password (package pake). Someone watching the DHT sees the sender's
// SPAKE2 message and the ids, which allow no offline guess of the words; an
// active guesser gets one try, after which the sender cancels.
//
//	sender (A)                                   receiver (B)
//	signed value at key(n): {from A, pA, time}
//	                                             gets it, pB, cB = SPAKE2(code, A, B)
//	               ◀── signal "code-answer" {pB, cB} (encrypted for A)
//	verifies cB; wrong: "code-result" {ok false}, cancel
//	right: "code-result" {ok true, cA} ──▶       verifies cA
//	dials B by id, pinned TLS to B ──▶           accepts only A; receives
//
// Afterwards the sender replaces its value with a "done" one (higher seq),
// so the code cannot be answered again.

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/dht/wire"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/pake"
	"github.com/del-share/del/peer"
	"github.com/del-share/del/transfer"
)

const codeUserType = "del/code/v1"

// codeWords are the words of code phrases: short, common, distinct.
var codeWords = strings.Fields(`
acid acorn actor adult agent alarm album alert alley alpha amber angle ankle apple apron arena
armor arrow atlas attic audio award bacon badge bagel baker bamboo banjo barn basil basin beach
beard berry bison blade blaze blend bloom board bonus boost brain brave bread brick bridge brook
brush bucket buddy bugle cabin cable cactus camel candy canoe canvas cargo carol cedar chalk charm
cheek chess chief chili cider cinema civic cliff clock cloud clover coach cobra cocoa comet coral
cotton couch crane crayon creek crisp crown curve daisy dance delta denim depot diary dingo disco
dolphin donut dragon dream drift drum eagle easel echo elbow ember engine epoch fable falcon fancy
feast fern fiber field finch flame flint flute focus forest fossil frost fudge galaxy garlic gecko
ghost giant ginger glacier globe glove grape gravy guitar habit harbor hazel heron honey hotel
husky igloo index ivory jacket jaguar jelly jewel jolly judge juice jungle kayak kettle kiwi koala
ladder lagoon lamp lemon lilac linen lion lizard llama lobby lotus lunar mango maple marble meadow
melon meteor mimic mint mocha motor mural nectar noble noodle novel oasis ocean olive onion opera
orbit otter oyster paddle panda paper parade pearl pepper piano pilot pixel plaza plum polar poppy
prism pulse puzzle quartz quiet quill radar radio raven reef relic ribbon river robin rocket rumba
saddle salad salmon satin scarf scout shadow shell silver siren sketch sleet slope snack sonic
spark spice sprout squid stone storm sugar summit sunny swift tango tiger timber toast topaz
`)

func randInt(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		panic(err)
	}
	return int(v.Int64())
}

// newCode returns a fresh code phrase.
func newCode() string {
	w := func() string { return codeWords[randInt(len(codeWords))] }
	return fmt.Sprintf("%d-%s-%s-%s", 1+randInt(9999), w(), w(), w())
}

// parseCode checks a code phrase and returns its number part.
func parseCode(code string) (string, error) {
	parts := strings.Split(strings.ToLower(strings.TrimSpace(code)), "-")
	if len(parts) != 4 {
		return "", fmt.Errorf("code %q: want <number>-<word>-<word>-<word>", code)
	}
	if n, err := strconv.Atoi(parts[0]); err != nil || n < 1 || n > 9999 {
		return "", fmt.Errorf("code %q: it starts with a number from 1 to 9999", code)
	}
	return parts[0], nil
}

// looksLikeCode tells a code phrase from a path or peer id.
func looksLikeCode(s string) bool {
	_, err := parseCode(s)
	return err == nil
}

func codeKey(n string) wire.ID { return wire.ID(sha1.Sum([]byte("del/code/v1/" + n))) }

type codeOffer struct {
	From string `json:"from"`
	Msg  string `json:"msg,omitempty"` // SPAKE2 message pA, hex
	Time int64  `json:"time"`
	Done bool   `json:"done,omitempty"`
}

type codeAnswer struct {
	Msg     string `json:"msg"`     // pB, hex
	Confirm string `json:"confirm"` // cB, hex
}

type codeResult struct {
	OK      bool   `json:"ok"`
	Confirm string `json:"confirm,omitempty"` // cA, hex
}

// fromMsg is a signal's payload and its authenticated sender.
type fromMsg[T any] struct {
	from identity.ID
	msg  T
}

// collect returns a signal handler that decodes payloads into ch, dropping
// malformed ones and any beyond ch's capacity (it must not block).
func collect[T any](ch chan<- fromMsg[T]) func(identity.ID, json.RawMessage) {
	return func(from identity.ID, x json.RawMessage) {
		var m T
		if json.Unmarshal(x, &m) != nil {
			return
		}
		select {
		case ch <- fromMsg[T]{from, m}:
		default:
		}
	}
}

// codeFreshness bounds how long a code stays valid.
const codeFreshness = 15 * time.Minute

// sendWithCode prints a code phrase, waits for the receiver that knows it,
// and sends src to it.
func sendWithCode(ctx context.Context, out io.Writer, ident *identity.Identity, o onlineOptions, src *transfer.Source, sopts transfer.SendOptions) (*transfer.Report, error) {
	host, stop, err := goOnline(ctx, ident, o)
	if err != nil {
		return nil, err
	}
	defer stop()
	code := newCode()
	n, _ := parseCode(code)
	st, msg, err := pake.New(pake.A, []byte(code))
	if err != nil {
		return nil, err
	}
	answers := make(chan fromMsg[codeAnswer], 4)
	host.Handle("code-answer", collect(answers))
	offer := func(done bool) *wire.Value {
		data, _ := json.Marshal(codeOffer{From: ident.ID.String(), Msg: hex.EncodeToString(msg), Time: time.Now().Unix(), Done: done})
		v := &wire.Value{ID: 0xDE1C0DE, Data: data, UserType: codeUserType}
		if done {
			v.Seq = 1
		}
		if err := dht.Sign(v, ident); err != nil {
			panic(err)
		}
		return v
	}
	key := codeKey(n)
	if _, err := host.DHT().Put(ctx, key, offer(false)); err != nil {
		return nil, fmt.Errorf("publish the code: %w", err)
	}
	actx, cancelAnnounce := context.WithCancel(ctx)
	announced := make(chan struct{})
	go func() { defer close(announced); host.DHT().Announce(actx, key, offer(false)) }()
	defer func() {
		cancelAnnounce()
		<-announced
		// Retire the code: a newer value of ours replaces the offer.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		host.DHT().Put(rctx, key, offer(true))
		cancel()
	}()
	fmt.Fprintf(out, "code %s\n", code)
	fmt.Fprintf(out, "on the other device run: del receive %s\n", code)

	wctx, cancel := context.WithTimeout(ctx, codeFreshness)
	defer cancel()
	var peerID identity.ID
	select {
	case a := <-answers:
		peerID = a.from
		pB, err1 := hex.DecodeString(a.msg.Msg)
		cB, err2 := hex.DecodeString(a.msg.Confirm)
		var cA []byte
		var err error
		if err1 == nil && err2 == nil {
			if cA, err = st.Finish(pB, []byte(ident.ID.String()), []byte(peerID.String())); err == nil {
				_, err = st.Verify(cB)
			}
		}
		if err1 != nil || err2 != nil || err != nil {
			host.Signal(ctx, peerID, "code-result", codeResult{OK: false})
			return nil, fmt.Errorf("device %s answered with a wrong code; the transfer is cancelled (run del send again for a new code)", peerID)
		}
		if err := host.Signal(ctx, peerID, "code-result", codeResult{OK: true, Confirm: hex.EncodeToString(cA)}); err != nil {
			return nil, err
		}
	case <-wctx.Done():
		return nil, fmt.Errorf("nobody used the code within %s", codeFreshness)
	}
	dctx, cancelDial := context.WithTimeout(ctx, 2*time.Minute)
	ch, _, err := host.Dial(dctx, peerID, FileChannel)
	cancelDial()
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	rep, err := transfer.Send(ctx, ch, src, sopts)
	if rep != nil {
		rep.Remote = peerID.String()
	}
	return rep, err
}

// receiveWithCode finds the sender of a code phrase, proves it knows the
// code, and receives from that sender only.
func receiveWithCode(ctx context.Context, info io.Writer, ident *identity.Identity, o onlineOptions, code string, opts transfer.ReceiveOptions) error {
	n, err := parseCode(code)
	if err != nil {
		return err
	}
	code = strings.ToLower(strings.TrimSpace(code))
	var sender atomic.Value // identity.ID of the chosen offer's sender
	sender.Store(identity.ID{})
	o.accept = func(id identity.ID) bool { return sender.Load().(identity.ID) == id }
	host, stop, err := goOnline(ctx, ident, o)
	if err != nil {
		return err
	}
	defer stop()
	results := make(chan fromMsg[codeResult], 4)
	host.Handle("code-result", collect(results))
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	res, err := host.DHT().Get(gctx, codeKey(n), nil)
	cancel()
	if err != nil {
		return fmt.Errorf("look up the code: %w", err)
	}
	var offers []codeOffer
	for _, v := range res.Values {
		var off codeOffer
		if v.UserType != codeUserType || json.Unmarshal(v.Data, &off) != nil || off.Done {
			continue
		}
		if id, err := identity.ParseID(off.From); err != nil || wire.ID(id) != dht.OwnerID(v) {
			continue
		}
		if time.Since(time.Unix(off.Time, 0)) > codeFreshness {
			continue
		}
		offers = append(offers, off)
	}
	if len(offers) == 0 {
		return fmt.Errorf("no sender is waiting with code %s", code)
	}
	sort.Slice(offers, func(i, j int) bool { return offers[i].Time > offers[j].Time })
	off := offers[0]
	from, _ := identity.ParseID(off.From)
	pA, err := hex.DecodeString(off.Msg)
	if err != nil {
		return fmt.Errorf("sender's code offer: %w", err)
	}
	st, pB, err := pake.New(pake.B, []byte(code))
	if err != nil {
		return err
	}
	cB, err := st.Finish(pA, []byte(from.String()), []byte(ident.ID.String()))
	if err != nil {
		return fmt.Errorf("sender's code offer: %w", err)
	}
	// The sender dials as soon as it has checked our answer, possibly before
	// its confirmation reaches us: let its link in now. Nothing is received
	// on it unless the confirmation below checks out.
	sender.Store(from)
	if err := host.Signal(ctx, from, "code-answer", codeAnswer{Msg: hex.EncodeToString(pB), Confirm: hex.EncodeToString(cB)}); err != nil {
		return err
	}
	wctx, cancel2 := context.WithTimeout(ctx, 60*time.Second)
	defer cancel2()
	for {
		select {
		case r := <-results:
			if r.from != from {
				continue
			}
			if !r.msg.OK {
				return errors.New("wrong code: the sender refused it (the sender has cancelled; ask for a new code)")
			}
			cA, _ := hex.DecodeString(r.msg.Confirm)
			if _, err := st.Verify(cA); err != nil {
				return errors.New("the sender could not prove it knows the code")
			}
		case <-wctx.Done():
			return fmt.Errorf("the sender %s did not answer", from)
		}
		break
	}
	fmt.Fprintf(info, "code accepted; receiving from %s\n", from)
	opts.Decide = func(context.Context, *transfer.OfferInfo) error { return nil } // the code is the consent
	for {
		in, err := host.Accept(wctx)
		if err != nil {
			return fmt.Errorf("waiting for %s to connect: %w", from, err)
		}
		if in.Name != FileChannel || in.Link.Remote != from {
			in.Conn.Close()
			continue
		}
		opts.Remote = from.String()
		rep, err := transfer.Receive(ctx, in.Conn, opts)
		peer.Finish(in.Conn, 10*time.Second)
		if err != nil {
			return err
		}
		where := opts.Dir
		if opts.Stdout != nil {
			where = "stdout"
		}
		fmt.Fprintf(info, "received %s from %s into %s\n", describe(rep), from, where)
		return nil
	}
}
