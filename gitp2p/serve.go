package gitp2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/del-share/del/identity"
)

// The two services of the pack protocol.
const (
	UploadPackService  = "git-upload-pack"
	ReceivePackService = "git-receive-pack"
)

// ChannelPrefix starts the name of the peer channel that carries one git
// session: "git/<repo>".
const ChannelPrefix = "git/"

// ErrNotShared is returned (wrapped) by a Policy for a repository name that
// is not shared with the asking peer.
var ErrNotShared = errors.New("repository not shared")

// ErrReadOnly is returned (wrapped) by a Policy when the peer may fetch but
// not push.
var ErrReadOnly = errors.New("push not allowed")

// Access is what a Policy grants one peer on one repository.
type Access struct {
	// Path is the repository on this device.
	Path string
	// Push allows receive-pack; Force also allows non-fast-forward updates
	// and deletions.
	Push, Force bool
}

// Policy decides who may reach which repository. Lookup returns an error
// wrapping ErrNotShared for a repository the peer may not see.
type Policy interface {
	Lookup(remote identity.ID, repo string) (Access, error)
}

// AppendRequest appends the request that opens a git session on a channel:
// one pkt-line "<service> <repo>\n" (the helper's side of the header).
func AppendRequest(dst []byte, service, repo string) []byte {
	return AppendString(dst, service+" "+repo+"\n")
}

// ParseRequest decodes the payload of the session request. Extra
// NUL-separated parameters (as in git://'s "host=") are ignored.
func ParseRequest(payload []byte) (service, repo string, err error) {
	line, _, _ := strings.Cut(strings.TrimSuffix(string(payload), "\n"), "\x00")
	service, repo, ok := strings.Cut(line, " ")
	if !ok || repo == "" {
		return "", "", protoErr("bad session request %q", line)
	}
	if service != UploadPackService && service != ReceivePackService {
		return "", "", protoErr("unknown service %q", service)
	}
	return service, repo, nil
}

// Serve runs one git session on a channel opened by remote for repo (the
// part of the channel name after "git/"): it reads the session request,
// asks policy, and runs upload-pack or receive-pack. A refusal or a
// malformed request is answered with an ERR packet, which git shows as
// "remote error: ..."; the caller then closes the channel.
func Serve(ctx context.Context, rw io.ReadWriter, remote identity.ID, repo string, policy Policy) error {
	trace("session for %s on %q", remote, repo)
	br := bufio.NewReaderSize(rw, 64<<10)
	bw := bufio.NewWriter(rw)
	pr := NewReader(br)
	kind, payload, err := pr.Next()
	if err == nil && kind != Data {
		err = protoErr("expected a session request, got a %s packet", kind)
	}
	var service, name string
	if err == nil {
		service, name, err = ParseRequest(payload)
	}
	if err == nil && name != repo {
		err = protoErr("request for %q on the channel of %q", name, repo)
	}
	var access Access
	if err == nil {
		access, err = policy.Lookup(remote, repo)
	}
	if err == nil && service == ReceivePackService && !access.Push {
		err = fmt.Errorf("%w: %s may not push to %q", ErrReadOnly, remote, repo)
	}
	var r *Repo
	if err == nil {
		r, err = OpenRepo(ctx, access.Path)
		if err != nil {
			err = fmt.Errorf("repository %q is not available", repo)
		}
	}
	if err != nil {
		sendError(bw, err)
		return err
	}
	if service == UploadPackService {
		return UploadPack(ctx, r, br, rw)
	}
	var in io.Reader = br
	if d, ok := rw.(deadliner); ok {
		in = &BufferedConn{Reader: br, Conn: d}
	}
	return ReceivePack(ctx, r, in, rw, ReceiveOptions{AllowForce: access.Force})
}

type deadliner interface {
	SetReadDeadline(time.Time) error
}

// BufferedConn reads through a buffered reader and sets read deadlines on
// the connection below it.
type BufferedConn struct {
	*bufio.Reader
	Conn interface{ SetReadDeadline(time.Time) error }
}

// SetReadDeadline sets the read deadline of the connection.
func (b *BufferedConn) SetReadDeadline(t time.Time) error { return b.Conn.SetReadDeadline(t) }
