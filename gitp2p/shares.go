package gitp2p

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/del-share/del/identity"
)

// Share is one repository a device serves.
type Share struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Push lists the peer ids (40 hex digits) allowed to push.
	Push []string `json:"push,omitempty"`
	// Force lets those peers push non-fast-forward updates and deletions.
	Force bool `json:"force,omitempty"`
}

// Shares is the device's list of shared repositories, kept as JSON in
// SharesFile(DEL_HOME). Any peer that can reach the device may fetch a
// shared repository; only the peers in Push may push.
type Shares struct {
	Shares []Share `json:"shares"`
}

// SharesFile is where a device keeps its shares.
func SharesFile(home string) string { return filepath.Join(home, "git-shares.json") }

// ValidName reports whether name can name a share: 1-100 bytes of letters,
// digits, '.', '_', '-', not starting with '.' or '-'.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > 100 || name[0] == '.' || name[0] == '-' {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// DefaultName is the share name of a repository path: its base name
// without ".git".
func DefaultName(path string) string {
	base := filepath.Base(filepath.Clean(path))
	if base == ".git" {
		base = filepath.Base(filepath.Dir(filepath.Clean(path)))
	}
	return strings.TrimSuffix(base, ".git")
}

// LoadShares reads the shares file; a missing file is an empty list.
func LoadShares(file string) (*Shares, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return &Shares{}, nil
	}
	if err != nil {
		return nil, err
	}
	s := &Shares{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return s, nil
}

// Save writes the shares file atomically.
func (s *Shares) Save(file string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".git-shares-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// Add adds or replaces the share of that name.
func (s *Shares) Add(sh Share) error {
	if !ValidName(sh.Name) || strings.HasSuffix(sh.Name, ".git") {
		return fmt.Errorf("share name %q: use letters, digits, '.', '_' and '-', without a .git suffix (URLs may add it)", sh.Name)
	}
	for _, p := range sh.Push {
		if _, err := identity.ParseID(p); err != nil {
			return fmt.Errorf("push grant %q: %w", p, err)
		}
	}
	s.Remove(sh.Name)
	s.Shares = append(s.Shares, sh)
	slices.SortFunc(s.Shares, func(a, b Share) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// Remove deletes the share of that name and reports whether it existed.
func (s *Shares) Remove(name string) bool {
	n := len(s.Shares)
	s.Shares = slices.DeleteFunc(s.Shares, func(sh Share) bool { return sh.Name == name })
	return len(s.Shares) != n
}

// Lookup implements Policy.
func (s *Shares) Lookup(remote identity.ID, repo string) (Access, error) {
	for _, sh := range s.Shares {
		if sh.Name != repo {
			continue
		}
		a := Access{Path: sh.Path}
		if slices.Contains(sh.Push, remote.String()) {
			a.Push, a.Force = true, sh.Force
		}
		return a, nil
	}
	return Access{}, fmt.Errorf("%w: %q", ErrNotShared, repo)
}

// FilePolicy reads the shares file at every lookup, so that `del git share`
// and `unshare` apply to a server that is already running.
type FilePolicy string

// Lookup implements Policy.
func (f FilePolicy) Lookup(remote identity.ID, repo string) (Access, error) {
	s, err := LoadShares(string(f))
	if err != nil {
		return Access{}, err
	}
	return s.Lookup(remote, repo)
}
