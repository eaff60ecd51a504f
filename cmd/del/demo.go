package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/del-share/del/dht"
	"github.com/del-share/del/identity"
	"github.com/del-share/del/transfer"
	"github.com/del-share/del/turn"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newDemoCmd) }

func newDemoCmd() *cobra.Command {
	var (
		size int64
		keep bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run DEL's main job end to end on this machine, with no set-up",
		Long: `Starts an embedded network on loopback (a DHT bootstrap node and a TURN
server, in this process) and two devices (separate DEL_HOMEs, real del
processes). Alice sends a sample tree to Bob by his id alone (DHT lookup,
encrypted signaling, ICE, pinned TLS 1.3), then again through the TURN relay.
The demo checks that everything arrived intact and prints each step, the path
taken, each phase's time and the throughput. Nothing leaves loopback.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), size, keep)
		},
	}
	cmd.Flags().Int64Var(&size, "size", 256<<20, "bytes of the large sample file")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the demo folder")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, size int64, keep bool) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "del-demo-")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Fprintf(out, "demo folder kept: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	step := func(format string, args ...any) { fmt.Fprintf(out, "== "+format+"\n", args...) }

	// The embedded network: a DHT bootstrap node and a TURN server, both on
	// loopback, in this process.
	boot, err := dht.ListenUDP(dht.Config{}, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer boot.Close()
	step("embedded DHT bootstrap node on %s (OpenDHT wire protocol)", boot.Addr())
	relay, err := turn.NewServer(turn.ServerConfig{
		Listen: "127.0.0.1:0", Realm: "del.demo", Users: map[string]string{"demo": "demo-pass"},
		AllowedPeers: turn.LoopbackPeers, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	defer relay.Close()
	turnURL := fmt.Sprintf("turn://demo:demo-pass@%s", relay.Addr())
	step("embedded TURN server on %s (RFC 6062 TCP relays, loopback peers allowed)", relay.Addr())

	// Two devices. Their identities are cached between demo runs, because
	// RSA-4096 generation takes seconds.
	homes := map[string]string{}
	ids := map[string]string{}
	for _, dev := range []string{"alice", "bob"} {
		home, err := demoHome(dev, work)
		if err != nil {
			return err
		}
		homes[dev] = home
		ident, _ := identity.Load(home)
		ids[dev] = ident.ID.String()
		step("device %-5s id %s (DEL_HOME=%s)", dev, ident.ID, home)
	}
	env := func(dev string, online bool) []string {
		e := append(os.Environ(), "DEL_HOME="+homes[dev], "DEL_INTERFACES=lo")
		if online {
			e = append(e, "DEL_BOOTSTRAP="+boot.Addr().String())
		} else {
			e = append(e, "DEL_BOOTSTRAP=")
		}
		return e
	}

	// A sample tree: nested folders, an empty one, small files, a large one.
	src := filepath.Join(work, "sample")
	if err := makeSample(src, size); err != nil {
		return err
	}
	total := treeBytes(src)
	step("sample tree %s: %s", src, treeSummary(src))

	// 1. By id alone: DHT lookup, encrypted signaling, ICE, pinned TLS.
	inbox := filepath.Join(work, "bob-inbox")
	step("1. send by peer id: bob goes online, alice needs only his id")
	step("bob   : del receive --dir %s --yes", inbox)
	recv, err := startReceiver(ctx, self, env("bob", true), "receive", "--dir", inbox, "--yes", "--quiet")
	if err != nil {
		return err
	}
	step("bob   : %s", recv.line)
	step("alice : del send %s %s", ids["bob"], src)
	elapsed, sendOut, err := runSender(ctx, self, env("alice", true), "send", "--quiet", ids["bob"], src)
	if err != nil {
		return err
	}
	if err := recv.finish(step); err != nil {
		return err
	}
	step("alice : %s", sendOut)
	if err := sameTree(src, filepath.Join(inbox, "sample")); err != nil {
		return fmt.Errorf("received tree differs: %w", err)
	}
	step("verified: the received tree is identical (content, modes, empty folders)")
	step("throughput: %s in %s end to end, %s/s (DHT lookup, signaling, ICE, TLS 1.3, offer, transfer, confirmation)",
		transfer.FormatBytes(total), elapsed.Round(time.Millisecond), transfer.FormatBytes(int64(float64(total)/elapsed.Seconds())))

	// 2. Through the relay: bob is reachable only at a relayed address.
	inbox2 := filepath.Join(work, "bob-inbox-relayed")
	step("2. through the TURN relay: bob listens only on a relayed address")
	recv, err = startReceiver(ctx, self, env("bob", false), "receive", "--turn", turnURL, "--dir", inbox2, "--yes", "--quiet")
	if err != nil {
		return err
	}
	step("bob   : del receive --turn %s --dir %s --yes", turnURL, inbox2)
	step("bob   : %s", recv.line)
	target := strings.TrimPrefix(recv.line, "listening ")
	step("alice : del send %s %s   (the relay forwards her connection to bob)", target, src)
	elapsed, sendOut, err = runSender(ctx, self, env("alice", false), "send", "--quiet", target, src)
	if err != nil {
		return err
	}
	if err := recv.finish(step); err != nil {
		return err
	}
	step("alice : %s", sendOut)
	if err := sameTree(src, filepath.Join(inbox2, "sample")); err != nil {
		return fmt.Errorf("tree received through the relay differs: %w", err)
	}
	step("verified: identical through the relay; %s in %s, %s/s",
		transfer.FormatBytes(total), elapsed.Round(time.Millisecond), transfer.FormatBytes(int64(float64(total)/elapsed.Seconds())))
	return nil
}

// demoReceiver is a running `del receive` of the demo.
type demoReceiver struct {
	cmd    *exec.Cmd
	line   string
	lines  *bufio.Scanner
	stderr *bytes.Buffer
}

func startReceiver(ctx context.Context, self string, env []string, args ...string) (*demoReceiver, error) {
	c := exec.CommandContext(ctx, self, args...)
	c.Env = env
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	r := &demoReceiver{cmd: c, stderr: new(bytes.Buffer)}
	c.Stderr = r.stderr
	if err := c.Start(); err != nil {
		return nil, err
	}
	r.lines = bufio.NewScanner(stdout)
	for r.lines.Scan() {
		if strings.HasPrefix(r.lines.Text(), "listening ") {
			r.line = r.lines.Text()
			return r, nil
		}
	}
	c.Wait()
	return nil, fmt.Errorf("receiver did not start: %s", r.stderr.String())
}

// finish waits for the receiver and prints its summary.
func (r *demoReceiver) finish(step func(string, ...any)) error {
	var summary []string
	for r.lines.Scan() {
		summary = append(summary, r.lines.Text())
	}
	if err := r.cmd.Wait(); err != nil {
		return fmt.Errorf("receiver failed: %v\n%s", err, r.stderr.String())
	}
	for _, l := range summary {
		step("bob   : %s", l)
	}
	return nil
}

func runSender(ctx context.Context, self string, env []string, args ...string) (time.Duration, string, error) {
	c := exec.CommandContext(ctx, self, args...)
	c.Env = env
	t := time.Now()
	out, err := c.CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("send failed: %v\n%s", err, out)
	}
	return time.Since(t), strings.TrimSpace(string(out)), nil
}

// demoHome returns a DEL_HOME for a demo device, reusing a cached identity.
func demoHome(dev, work string) (string, error) {
	home := filepath.Join(work, dev)
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cached := filepath.Join(cache, "del", "demo", dev)
	ident, err := identity.Load(cached)
	if err != nil {
		if !errors.Is(err, identity.ErrNoIdentity) {
			os.RemoveAll(cached)
		}
		if ident, _, err = identity.LoadOrCreate(cached); err != nil {
			return "", err
		}
	}
	return home, identity.Save(home, ident)
}

func makeSample(dir string, size int64) error {
	files := map[string][]byte{
		"README.txt":              []byte("A sample tree sent by `del demo`.\n"),
		"docs/notes.md":           []byte("# Notes\n\nDEL moves files directly between devices.\n"),
		"docs/deep/nested/a.json": []byte(`{"lvl_percent": 78, "lat": 39.010941, "long": 125.723739}` + "\n"),
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "empty-folder"), 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "large.bin"))
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		return err
	}
	return f.Close()
}

func treeBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func treeSummary(dir string) string {
	files, dirs := 0, 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			if d.IsDir() {
				dirs++
			} else {
				files++
			}
		}
		return nil
	})
	return fmt.Sprintf("%d files in %d folders, %s", files, dirs, transfer.FormatBytes(treeBytes(dir)))
}

// sameTree compares two trees: names, kinds, modes and contents.
func sameTree(a, b string) error {
	return filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		q := filepath.Join(b, rel)
		fa, err := os.Lstat(p)
		if err != nil {
			return err
		}
		fb, err := os.Lstat(q)
		if err != nil {
			return err
		}
		if fa.Mode() != fb.Mode() {
			return fmt.Errorf("%s: mode %v, want %v", rel, fb.Mode(), fa.Mode())
		}
		if fa.Mode().IsRegular() {
			da, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			db, err := os.ReadFile(q)
			if err != nil {
				return err
			}
			if !bytes.Equal(da, db) {
				return fmt.Errorf("%s: content differs", rel)
			}
		}
		return nil
	})
}
