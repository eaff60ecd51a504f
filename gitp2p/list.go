package gitp2p

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/del-share/del/identity"
)

// ListChannel is the peer channel on which a device lists the repositories
// it shares with the asking peer. The server writes one pkt-line per
// repository, "<name> <access>\n" with access "read", "push" or "force",
// then a flush, and closes; the client sends nothing.
const ListChannel = "git-list"

// Listing is one repository as another device sees it.
type Listing struct {
	Name   string
	Access string // "read", "push" or "force"
}

// Lister is a Policy that can also list what a peer may reach.
type Lister interface {
	List(remote identity.ID) []Listing
}

// List implements Lister.
func (s *Shares) List(remote identity.ID) []Listing {
	var l []Listing
	for _, sh := range s.Shares {
		a, err := s.Lookup(remote, sh.Name)
		if err != nil {
			continue
		}
		access := "read"
		switch {
		case a.Force:
			access = "force"
		case a.Push:
			access = "push"
		}
		l = append(l, Listing{Name: sh.Name, Access: access})
	}
	return l
}

// List implements Lister.
func (f FilePolicy) List(remote identity.ID) []Listing {
	s, err := LoadShares(string(f))
	if err != nil {
		return nil
	}
	return s.List(remote)
}

// WriteList answers a ListChannel.
func WriteList(w io.Writer, l []Listing) error {
	var b []byte
	for _, e := range l {
		b = AppendString(b, e.Name+" "+e.Access+"\n")
	}
	b = AppendFlush(b)
	_, err := w.Write(b)
	return err
}

// ReadList reads a ListChannel's answer.
func ReadList(r io.Reader) ([]Listing, error) {
	pr := NewReader(bufio.NewReader(r))
	var l []Listing
	for {
		line, kind, err := pr.Line()
		if err != nil {
			return nil, err
		}
		if kind == Flush {
			return l, nil
		}
		if msg, ok := strings.CutPrefix(line, "ERR "); ok {
			return nil, fmt.Errorf("remote error: %s", msg)
		}
		name, access, ok := strings.Cut(line, " ")
		if !ok || !ValidName(name) || (access != "read" && access != "push" && access != "force") {
			return nil, protoErr("bad listing %q", line)
		}
		l = append(l, Listing{Name: name, Access: access})
		if len(l) > 100000 {
			return nil, protoErr("listing too long")
		}
	}
}
