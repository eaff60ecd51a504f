package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/del-share/del/internal/testkeys"
	"github.com/del-share/del/peer"
)

// TestEarlyDialDiscarded: the helper dials as soon as it starts; when git
// ends the session without asking to connect, the link it made is closed
// (the peer sees it end) and run returns.
func TestEarlyDialDiscarded(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	testkeys.Home(t, home, 1)
	t.Setenv("DEL_HOME", home)
	server := testkeys.Identity(t, 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	linked := make(chan *peer.Link, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(linked)
			return
		}
		l, err := peer.Server(ctx, conn, peer.Config{Identity: server})
		if err != nil {
			conn.Close()
			close(linked)
			return
		}
		linked <- l
	}()
	url := fmt.Sprintf("del://%s@%s/proj", server.ID, ln.Addr())
	// git asks for the capabilities, and ends the session only once the
	// link is up on the server's side.
	in, git := io.Pipe()
	var out bytes.Buffer
	ran := make(chan error, 1)
	go func() { ran <- run(ctx, url, in, &out, nil) }()
	io.WriteString(git, "capabilities\n")
	l, ok := <-linked
	if !ok {
		t.Fatal("the helper did not dial at start-up")
	}
	io.WriteString(git, "\n")
	git.Close()
	if err := <-ran; err != nil {
		t.Fatalf("run: %v", err)
	}
	if out.String() != "connect\n\n" {
		t.Fatalf("capabilities answer %q", out.String())
	}
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("the unused link was not closed")
	}
}
