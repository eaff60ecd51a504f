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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/transfer"
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
		Long: `Starts two devices on this machine (separate DEL_HOMEs, loopback only):
a receiver and a sender, as two real del processes. The sender sends a sample
tree; the demo checks that it arrived intact and prints what happened.`,
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

	// Two devices. Their identities are cached between demo runs, because
	// RSA-4096 generation takes seconds.
	homes := map[string]string{}
	for _, dev := range []string{"alice", "bob"} {
		home, err := demoHome(dev, work)
		if err != nil {
			return err
		}
		homes[dev] = home
		ident, _ := identity.Load(home)
		step("device %-5s id %s (DEL_HOME=%s)", dev, ident.ID, home)
	}

	// A sample tree: nested folders, an empty one, small files, a large one.
	src := filepath.Join(work, "sample")
	if err := makeSample(src, size); err != nil {
		return err
	}
	step("sample tree %s: %s", src, treeSummary(src))

	inbox := filepath.Join(work, "bob-inbox")
	recv := exec.CommandContext(ctx, self, "receive", "--listen", "127.0.0.1:0", "--dir", inbox, "--yes", "--quiet")
	recv.Env = append(os.Environ(), "DEL_HOME="+homes["bob"])
	recvOut, err := recv.StdoutPipe()
	if err != nil {
		return err
	}
	var recvErr bytes.Buffer
	recv.Stderr = &recvErr
	t0 := time.Now()
	if err := recv.Start(); err != nil {
		return err
	}
	defer recv.Process.Kill()
	lines := bufio.NewScanner(recvOut)
	var target string
	for lines.Scan() {
		if f := strings.Fields(lines.Text()); len(f) == 2 && f[0] == "listening" {
			target = f[1]
			break
		}
	}
	if target == "" {
		recv.Wait()
		return fmt.Errorf("receiver did not start: %s", recvErr.String())
	}
	step("bob   : del receive --listen 127.0.0.1:0 --dir %s --yes", inbox)
	step("bob   : listening %s (ready after %s)", target, time.Since(t0).Round(time.Millisecond))

	step("alice : del send %s %s", target, src)
	send := exec.CommandContext(ctx, self, "send", "--quiet", target, src)
	send.Env = append(os.Environ(), "DEL_HOME="+homes["alice"])
	t1 := time.Now()
	sendOut, err := send.CombinedOutput()
	elapsed := time.Since(t1)
	if err != nil {
		return fmt.Errorf("send failed: %v\n%s", err, sendOut)
	}
	var summary []string
	for lines.Scan() {
		summary = append(summary, lines.Text())
	}
	if err := recv.Wait(); err != nil {
		return fmt.Errorf("receiver failed: %v\n%s", err, recvErr.String())
	}
	step("alice : %s", strings.TrimSpace(string(sendOut)))
	for _, l := range summary {
		step("bob   : %s", l)
	}
	if err := sameTree(src, filepath.Join(inbox, "sample")); err != nil {
		return fmt.Errorf("received tree differs: %w", err)
	}
	total := treeBytes(src)
	step("verified: the received tree is identical (content, modes, empty folders)")
	step("throughput: %s in %s end to end, %s/s (TLS 1.3 handshake, offer, hashing, transfer, confirmation)",
		transfer.FormatBytes(total), elapsed.Round(time.Millisecond), transfer.FormatBytes(int64(float64(total)/elapsed.Seconds())))
	step("link: direct TCP on loopback. Relay (TURN), ICE and DHT lookup by id come with their issues")
	return nil
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
