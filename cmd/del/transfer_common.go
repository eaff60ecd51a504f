package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
	"github.com/del-share/del/transfer"
	"golang.org/x/term"
)

// FileChannel is the peer channel that carries file transfers.
const FileChannel = "file"

// parseTarget splits "<peer-id>@<host>:<port>"; a bare "<peer-id>" gives
// an empty address (the peer is found through the DHT).
func parseTarget(s string, contacts config.Contacts) (identity.ID, string, error) {
	idPart, addr, ok := strings.Cut(s, "@")
	if v, isContact := contacts[idPart]; isContact {
		idPart = v
	}
	id, err := identity.ParseID(idPart)
	if err != nil {
		return id, "", fmt.Errorf("%q is neither a peer id nor a contact (del contacts list)", idPart)
	}
	if !ok {
		return id, "", nil // by id alone, through the DHT
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return id, "", fmt.Errorf("address %q: %w", addr, err)
	}
	return id, addr, nil
}

// hashCache is the device's cache of content hashes, so that sending or
// resuming the same files again does not hash them again.
func hashCache(home string) transfer.HashCache {
	return &transfer.DirCache{Dir: filepath.Join(home, "hashcache")}
}

// scanWithFeedback scans paths for an offer, saying so on w when it takes
// more than a second (large trees). Files are not hashed first: a file the
// hash cache does not know is hashed while it is sent (its hash travels in
// FILE_END), so data starts flowing at once.
func scanWithFeedback(ctx context.Context, home string, paths []string, w io.Writer, quiet bool) (*transfer.Source, error) {
	start := time.Now()
	done := make(chan struct{})
	slow := make(chan struct{})
	go func() {
		defer close(slow)
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-done:
			return
		case <-t.C:
		}
		if !quiet {
			fmt.Fprintf(w, "scanning…\n")
		}
	}()
	src, err := transfer.ScanWith(ctx, paths, transfer.ScanOptions{Cache: hashCache(home), Late: true})
	close(done)
	<-slow
	if err == nil && len(src.Skipped) > 0 {
		fmt.Fprintf(w, "left out %d special file(s) (sockets, FIFOs, devices), e.g. %s\n", len(src.Skipped), src.Skipped[0])
	}
	if el := time.Since(start); !quiet && el > time.Second && err == nil {
		fmt.Fprintf(w, "scanned %d entries in %s\n", len(src.Entries), el.Round(10*time.Millisecond))
	}
	return src, err
}

func pathExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil || p == "-"
}

// describe summarises a report: files, bytes, time, rate, skips, resumes.
func describe(rep *transfer.Report) string {
	secs := rep.Duration.Seconds()
	rate := float64(rep.Bytes) / max(secs, 1e-9)
	s := fmt.Sprintf("%d file(s), %s in %.2fs (%s/s)", rep.Files, transfer.FormatBytes(rep.Bytes), secs, transfer.FormatBytes(int64(rate)))
	if rep.Skipped > 0 {
		s += fmt.Sprintf(", %d already there", rep.Skipped)
	}
	if rep.Resumed > 0 {
		s += fmt.Sprintf(", resumed %s", transfer.FormatBytes(rep.Resumed))
	}
	return s
}

var errNotATransfer = errors.New("not a transfer")

// receiveOnline goes online through the DHT, prints "listening <peer-id>",
// and receives the first transfer a device sends to this id.
// A one-shot receiver is an OpenDHT client node (o.client): behind a NAT it
// could not answer other nodes' queries anyway, and lookups would wait for it.
func receiveOnline(ctx context.Context, info io.Writer, ident *identity.Identity, only identity.ID, o onlineOptions, opts transfer.ReceiveOptions) error {
	if !only.IsZero() {
		o.accept = func(id identity.ID) bool { return id == only }
	}
	host, stop, err := goOnline(ctx, ident, o)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(info, "listening %s\n", ident.ID)
	for {
		in, err := host.Accept(ctx)
		if err != nil {
			return err
		}
		if in.Name != FileChannel {
			in.Conn.Close()
			continue
		}
		opts.Remote = in.Link.Remote.String()
		rep, err := transfer.Receive(ctx, in.Conn, opts)
		peer.Finish(in.Conn, 10*time.Second)
		if err != nil {
			return err
		}
		where := opts.Dir
		if opts.Stdout != nil {
			where = "stdout"
		}
		fmt.Fprintf(info, "received %s from %s into %s over ICE (%s)\n", describe(rep), opts.Remote, where, in.Link.RemoteAddr())
		return nil
	}
}

// serveOne authenticates one incoming connection and receives the transfer
// on its file channel.
func serveOne(ctx context.Context, conn net.Conn, ident *identity.Identity, only identity.ID, opts transfer.ReceiveOptions) (*transfer.Report, error) {
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	link, err := peer.Server(hctx, conn, peer.Config{Identity: ident, Expect: only})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotATransfer, err)
	}
	defer link.Close()
	name, ch, err := link.Accept(hctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotATransfer, err)
	}
	defer ch.Close()
	if name != FileChannel {
		return nil, fmt.Errorf("%w: peer opened channel %q", errNotATransfer, name)
	}
	opts.Remote = link.Remote.String()
	rep, err := transfer.Receive(ctx, ch, opts)
	if rep != nil {
		rep.Remote = link.Remote.String()
	}
	// We spoke last (the summary): let it reach the sender before hanging up.
	peer.Finish(ch, 10*time.Second)
	return rep, err
}

// consentPolicy decides on an offer: --yes accepts everything; otherwise
// the configured policy for contacts (default auto) or for other devices
// (default ask) applies, and "ask" calls ask (nil: decline).
func consentPolicy(yes bool, contacts config.Contacts, policy config.Accept, ask func(ctx context.Context, who string, o *transfer.OfferInfo) error) func(context.Context, *transfer.OfferInfo) error {
	return func(ctx context.Context, o *transfer.OfferInfo) error {
		if yes {
			return nil
		}
		who := o.Remote
		rule := policy.Others
		if name := contacts.NameOf(o.Remote); name != "" {
			who = fmt.Sprintf("%s (%s)", name, o.Remote)
			rule = policy.Contacts
		}
		switch rule {
		case config.AcceptAuto:
			return nil
		case config.AcceptRefuse:
			return errors.New("the receiver does not accept transfers from this device")
		}
		if ask == nil {
			return errors.New("the receiver did not consent (nobody to ask; it needs --yes)")
		}
		return ask(ctx, who, o)
	}
}

// askTerminal asks at the controlling terminal, declining when there is none.
func askTerminal(ctx context.Context, who string, o *transfer.OfferInfo) error {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return errors.New("the receiver did not consent (no terminal to ask; it needs --yes)")
	}
	defer tty.Close()
	fmt.Fprintf(tty, "%s offers %d file(s), %s", who, o.Files, transfer.FormatBytes(o.Bytes))
	if o.Skip > 0 || o.Resume > 0 {
		fmt.Fprintf(tty, " (%s to move)", transfer.FormatBytes(o.Move))
	}
	fmt.Fprintln(tty, ":")
	for i, e := range o.Entries {
		if i == 10 {
			fmt.Fprintf(tty, "  … and %d more\n", len(o.Entries)-10)
			break
		}
		fmt.Fprintf(tty, "  %s %s\n", e.Path, sizeOf(e))
	}
	fmt.Fprintf(tty, "Accept into %s? [y/N] ", o.Dir)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(tty).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		if a := strings.ToLower(strings.TrimSpace(line)); a == "y" || a == "yes" {
			return nil
		}
		return errors.New("the receiver declined")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sizeOf(e transfer.Entry) string {
	switch {
	case e.Kind == transfer.KindDir:
		return "(folder)"
	case e.Kind == transfer.KindSymlink:
		return "-> " + e.Target
	case e.Size < 0:
		return "(stream)"
	}
	return "(" + transfer.FormatBytes(e.Size) + ")"
}
