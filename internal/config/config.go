package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// FileName is the configuration file inside the state folder.
const FileName = "config.toml"

// Accept policies.
const (
	AcceptAuto   = "auto"   // receive without asking
	AcceptAsk    = "ask"    // ask at the terminal (or need --yes)
	AcceptRefuse = "refuse" // decline
)

// Config is a device's configuration, from $DEL_HOME/config.toml with the
// environment (DEL_BOOTSTRAP, DEL_STUN, DEL_TURN, DEL_INTERFACES) on top.
// The zero value is the default: no bootstrap node, no STUN or TURN server,
// every interface, so nothing leaves the machine until the user configures
// it.
type Config struct {
	// Bootstrap DHT nodes, HOST:PORT. To join the public OpenDHT network,
	// use its bootstrap node: bootstrap = ["bootstrap.jami.net:4222"].
	Bootstrap []string `toml:"bootstrap"`
	STUN      []string `toml:"stun"`
	// TURN is turn://USER:PASS@HOST:PORT (or turns://).
	TURN       string   `toml:"turn"`
	Interfaces []string `toml:"interfaces"`
	// DHTListen is where this device's DHT node binds (default: random port).
	DHTListen string `toml:"dht_listen"`
	// DownloadDir is where received files go when --dir is not given
	// (default: the current folder).
	DownloadDir string `toml:"download_dir"`
	Accept      Accept `toml:"accept"`
	// Fsync flushes each received file to disk before it is confirmed
	// (as `del receive --fsync`): a confirmed file then survives a power
	// cut, at the cost of waiting for the disk.
	Fsync bool `toml:"fsync"`
}

// Accept is the consent policy for incoming transfers.
type Accept struct {
	Contacts string `toml:"contacts"` // default auto
	Others   string `toml:"others"`   // default ask
}

// Load reads home's config file (a missing file is the default) and applies
// the environment.
func Load(home string) (*Config, error) {
	c := &Config{}
	b, err := os.ReadFile(filepath.Join(home, FileName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err == nil {
		d := toml.NewDecoder(strings.NewReader(string(b)))
		d.DisallowUnknownFields()
		if err := d.Decode(c); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(home, FileName), err)
		}
	}
	if c.Accept.Contacts == "" {
		c.Accept.Contacts = AcceptAuto
	}
	if c.Accept.Others == "" {
		c.Accept.Others = AcceptAsk
	}
	for _, p := range []string{c.Accept.Contacts, c.Accept.Others} {
		if p != AcceptAuto && p != AcceptAsk && p != AcceptRefuse {
			return nil, fmt.Errorf("%s: accept policy %q: want auto, ask or refuse", FileName, p)
		}
	}
	if v, ok := os.LookupEnv(EnvBootstrap); ok {
		c.Bootstrap = SplitList(v)
	}
	if v, ok := os.LookupEnv(EnvSTUN); ok {
		c.STUN = SplitList(v)
	}
	if v, ok := os.LookupEnv(EnvTURN); ok {
		c.TURN = v
	}
	if v, ok := os.LookupEnv(EnvInterfaces); ok {
		c.Interfaces = SplitList(v)
	}
	if v, ok := os.LookupEnv("DEL_DHT_LISTEN"); ok {
		c.DHTListen = v
	}
	if strings.HasPrefix(c.DownloadDir, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			c.DownloadDir = filepath.Join(h, c.DownloadDir[2:])
		}
	}
	return c, nil
}

// SplitList splits a comma-separated list, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ContactsFile holds the device's contacts: names for peer ids.
const ContactsFile = "contacts.json"

// Contacts maps names to peer ids (40 hex digits).
type Contacts map[string]string

// LoadContacts reads home's contacts (none if the file is missing).
func LoadContacts(home string) (Contacts, error) {
	c := Contacts{}
	b, err := os.ReadFile(filepath.Join(home, ContactsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(home, ContactsFile), err)
	}
	return c, nil
}

// Save writes the contacts atomically.
func (c Contacts) Save(home string) error {
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(home, "."+ContactsFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(home, ContactsFile))
}

// NameOf returns the contact name of id, or "".
func (c Contacts) NameOf(id string) string {
	names := make([]string, 0, len(c))
	for n, v := range c {
		if v == id {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return ""
	}
	return names[0]
}
