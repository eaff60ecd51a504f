package gitp2p

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// readRefsNative lists the references from the repository's files, as
// `git for-each-ref` would (gitrepository-layout(5)): packed-refs, then the
// loose files under refs/, which win over packed entries; symbolic refs
// resolved; refs with a bad name, bad content or a missing object skipped;
// annotated tags peeled (from packed-refs' "^" lines when its header says
// they are complete, else by reading the tags). HEAD as in readHead.
func readRefsNative(gitDir string, objs *objects) (*Refs, error) {
	if _, err := os.Stat(filepath.Join(gitDir, "reftable")); err == nil {
		return nil, errUnsupported
	}
	packed := map[string]packedRef{}
	if b, err := os.ReadFile(filepath.Join(gitDir, "packed-refs")); err == nil {
		list, err := parsePackedRefs(b)
		if err != nil {
			return nil, errUnsupported // let git judge the file
		}
		for _, p := range list {
			packed[p.name] = p
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	// Raw values: an object id, or "ref: <target>" for a symbolic ref.
	raw := map[string]string{}
	for name, p := range packed {
		raw[name] = p.oid
	}
	loose := map[string]bool{}
	root := filepath.Join(gitDir, "refs")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(gitDir, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !validRefName(name) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while we walked: a packed value may stand
			}
			return err
		}
		raw[name] = strings.TrimRight(string(b), "\n\r\t ")
		loose[name] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	refs := &Refs{}
	for name := range raw {
		if !validRefName(name) {
			continue
		}
		oid, ok := resolveRef(raw, name)
		if !ok {
			continue // broken or dangling: for-each-ref skips it too
		}
		ref := Ref{Name: name, OID: oid}
		p, isPacked := packed[name]
		if isPacked && !loose[name] && p.peelKnown {
			if typ, err := objs.Type(oid); err != nil {
				return nil, err
			} else if typ == "" {
				continue
			}
			ref.Peeled = p.peeled
		} else {
			peeled, ok, err := objs.Peel(oid)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue // its object is missing
			}
			ref.Peeled = peeled
		}
		refs.List = append(refs.List, ref)
	}
	sort.Slice(refs.List, func(i, j int) bool { return refs.List[i].Name < refs.List[j].Name })
	if err := readHead(gitDir, refs); err != nil {
		return nil, err
	}
	return refs, nil
}

// resolveRef follows symbolic refs (at most 5, as git) to an object id.
func resolveRef(raw map[string]string, name string) (string, bool) {
	for depth := 0; depth < 6; depth++ {
		v, ok := raw[name]
		if !ok {
			return "", false
		}
		if target, ok := strings.CutPrefix(v, "ref:"); ok {
			name = strings.TrimSpace(target)
			continue
		}
		if !isHex40(v) {
			return "", false
		}
		return v, true
	}
	return "", false
}

// packedRef is one entry of packed-refs.
type packedRef struct {
	name, oid string
	// peeled is the "^<oid>" line after the entry; peelKnown says the
	// file's header promises it is there whenever the ref is a tag.
	peeled    string
	peelKnown bool
}

// parsePackedRefs decodes packed-refs: an optional header
// "# pack-refs with: <traits>", then "<oid> <refname>" lines, each
// possibly followed by "^<peeled oid>". With the trait "fully-peeled"
// every ref's peeled value is recorded; with "peeled" those under
// refs/tags/ are.
func parsePackedRefs(b []byte) ([]packedRef, error) {
	var list []packedRef
	peeled, fully := false, false
	for i, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			continue
		}
		if traits, ok := bytes.CutPrefix(line, []byte("# pack-refs with:")); ok && i == 0 {
			for _, t := range strings.Fields(string(traits)) {
				switch t {
				case "peeled":
					peeled = true
				case "fully-peeled":
					fully = true
				}
			}
			continue
		}
		if line[0] == '#' {
			continue
		}
		if line[0] == '^' {
			if len(list) == 0 || !isHex40(string(line[1:])) || list[len(list)-1].peeled != "" {
				return nil, errors.New("packed-refs: misplaced peeled line")
			}
			list[len(list)-1].peeled = string(line[1:])
			continue
		}
		oid, name, ok := bytes.Cut(line, []byte(" "))
		if !ok || !isHex40(string(oid)) || len(name) == 0 {
			return nil, errors.New("packed-refs: bad line")
		}
		n := string(name)
		list = append(list, packedRef{name: n, oid: string(oid),
			peelKnown: fully || peeled && strings.HasPrefix(n, "refs/tags/")})
	}
	return list, nil
}
