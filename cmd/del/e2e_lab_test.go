package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/del-share/del/internal/netlab"
)

var pathRE = regexp.MustCompile(`over ICE \(([\w-]+) path; lookup (\S+), signaling (\S+), checks (\S+), TLS (\S+)\)`)

// TestLabSendByID: in every NAT-lab cell, with a DHT bootstrap node and
// `del turn` on the public segment, `del send <peer-id>` delivers the file,
// directly where a direct path exists and through the relay where none does.
func TestLabSendByID(t *testing.T) {
	for _, c := range netlab.Cells {
		t.Run(c.Name, func(t *testing.T) {
			lab := netlab.New(t)
			a, b := c.Build(lab)
			pub := &device{t: t, ns: lab.Public()}
			dhtAddr := strings.Fields(startServer(t, pub.cmd("dht", "run", "--listen", netlab.PublicAddr.String()+":0"), "dht listening "))[0]
			turnAddr := startServer(t, pub.cmd("turn", "--listen", netlab.PublicAddr.String()+":0",
				"--user", "lab:lab-pass", "--realm", "lab"), "turn listening ")
			env := []string{"DEL_BOOTSTRAP=" + dhtAddr, "DEL_TURN=turn://lab:lab-pass@" + turnAddr, "DEL_INTERFACES=eth0"}
			alice, bob := newDevice(t, 0), newDevice(t, 1)
			alice.ns, alice.env = a, env
			bob.ns, bob.env = b, env

			data := randomData(t, 3<<20)
			src := filepath.Join(t.TempDir(), "lab.bin")
			os.WriteFile(src, data, 0o644)
			inbox := t.TempDir()
			r := bob.receiveArgs("--dir", inbox, "--yes", "--quiet")
			out, err := alice.cmd("send", "--quiet", bob.id.String(), src).CombinedOutput()
			if err != nil {
				t.Fatalf("send: %v\n%s\nreceiver: %s", err, out, r.stderr)
			}
			if err := r.wait(t); err != nil {
				t.Fatalf("receive: %v\n%s", err, r.stderr)
			}
			got, _ := os.ReadFile(filepath.Join(inbox, "lab.bin"))
			if !bytes.Equal(got, data) {
				t.Fatal("file differs")
			}
			m := pathRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no path in the summary: %s", out)
			}
			path := string(m[1])
			t.Logf("BENCH cell=%s path=%s lookup=%s signaling=%s ice=%s tls=%s", c.Name, path, m[2], m[3], m[4], m[5])
			switch c.Expect {
			case netlab.Relay:
				if !strings.Contains(path, "relay") {
					t.Fatalf("path %s, want the relay (no direct path exists here)", path)
				}
			case netlab.Direct:
				if strings.Contains(path, "relay") {
					t.Fatalf("relayed although a direct path exists")
				}
			}
		})
	}
}
