package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/del-share/del/internal/testenv"
	"github.com/del-share/del/turn"
)

// buildDel builds this command into a temporary directory.
func buildDel(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "del")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// The real `del turn` process: CLI contract line, users file, metrics
// endpoint, a transfer through it, coturn's uclient, clean exit on SIGTERM.
func TestTurnCommand(t *testing.T) {
	bin := buildDel(t)
	users := filepath.Join(t.TempDir(), "users")
	os.WriteFile(users, []byte("# test users\ncarol:pw-of-carol\n\n"), 0o600)
	cmd := exec.Command(bin, "turn", "--listen", "127.0.0.1:0", "--user", "alice:secret123",
		"--users-file", users, "--realm", "del.test", "--allow-loopback-peers", "--metrics", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
	}()

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var addr, metrics string
	for addr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("del turn exited before listening")
			}
			if m := regexp.MustCompile(`^turn metrics (http://\S+)$`).FindStringSubmatch(l); m != nil {
				metrics = m[1]
			}
			if m := regexp.MustCompile(`^turn listening (127\.0\.0\.1:\d+)$`).FindStringSubmatch(l); m != nil {
				addr = m[1]
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no 'turn listening' line within 10 s")
		}
	}
	go func() {
		for range lines {
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &turn.Client{Server: addr, Username: "carol", Password: "pw-of-carol"}
	a, err := c.Allocate(ctx)
	if err != nil {
		t.Fatalf("Allocate as a user of the users file: %v", err)
	}
	defer a.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		p, err := ln.Accept()
		if err == nil {
			io.Copy(p, p)
			p.Close()
		}
	}()
	conn, err := a.DialPeer(ctx, ln.Addr().String())
	if err != nil {
		t.Fatalf("DialPeer: %v", err)
	}
	msg := strings.Repeat("relayed by del turn\n", 1000)
	go conn.Write([]byte(msg))
	got := make([]byte, len(msg))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		t.Fatalf("echo through del turn: %v", err)
	}

	if metrics == "" {
		t.Fatal("no 'turn metrics' line")
	}
	resp, err := http.Get(metrics)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `del_turn_allocations{transport="tcp"} 1`+"\n") {
		t.Errorf("metrics do not show the allocation:\n%s", body)
	}

	if uclient, err := exec.LookPath("turnutils_uclient"); err == nil {
		_, port, _ := net.SplitHostPort(addr)
		out, err := exec.CommandContext(ctx, uclient, "-T", "-u", "alice", "-w", "secret123",
			"-n", "10", "-l", "200", "-m", "1", "-p", port, "127.0.0.1").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Total lost packets 0 ") {
			t.Errorf("turnutils_uclient -T against del turn: %v\n%s", err, out)
		}
	} else {
		testenv.Missing(t, "turnutils_uclient (coturn) is not installed")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("del turn after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("del turn did not exit within 10 s of SIGTERM")
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Error("the allocation's control connection outlived the server")
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1500": 1500, "10k": 10_000, "25M": 25_000_000, "1G": 1_000_000_000} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "fast", "10T"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) accepted", in)
		}
	}
}

func TestReadUsersFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "users")
	os.WriteFile(p, []byte("# comment\nalice:a:b\n\n  bob:pw  \n"), 0o600)
	users := map[string]string{}
	if err := readUsersFile(p, users); err != nil {
		t.Fatal(err)
	}
	if users["alice"] != "a:b" || users["bob"] != "pw" || len(users) != 2 {
		t.Errorf("users %v", users)
	}
	os.WriteFile(p, []byte("nocolon\n"), 0o600)
	if err := readUsersFile(p, map[string]string{}); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Errorf("bad line: %v, want an error naming line 1", err)
	}
}

func TestAppendPrefixes(t *testing.T) {
	got, err := appendPrefixes(nil, "--allow-peer", []string{"10.0.0.0/8", "192.0.2.7", "fd00::1/8"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "fd00::/8"}
	for i, p := range got {
		if p.String() != want[i] {
			t.Errorf("prefix %d = %v, want %s", i, p, want[i])
		}
	}
	if _, err := appendPrefixes(nil, "--allow-peer", []string{"nope"}); err == nil {
		t.Error("bad prefix accepted")
	}
}
