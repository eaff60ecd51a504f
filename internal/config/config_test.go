package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadDefaultsFileAndEnv(t *testing.T) {
	for _, e := range []string{EnvBootstrap, EnvSTUN, EnvTURN, EnvInterfaces, "DEL_DHT_LISTEN"} {
		t.Setenv(e, "")
		os.Unsetenv(e)
	}
	home := t.TempDir()
	c, err := Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Bootstrap) != 0 || c.TURN != "" || len(c.STUN) != 0 {
		t.Fatalf("the default configures a server: %+v", c)
	}
	if c.Accept.Contacts != AcceptAuto || c.Accept.Others != AcceptAsk {
		t.Fatalf("default accept policy %+v", c.Accept)
	}
	if c.Fsync {
		t.Fatal("fsync on by default")
	}
	os.WriteFile(filepath.Join(home, FileName), []byte(`
bootstrap = ["10.0.0.1:4222", "10.0.0.2:4222"]
turn = "turn://u:p@10.0.0.3:3478"
interfaces = ["eth0"]
download_dir = "/srv/inbox"
fsync = true
[accept]
others = "refuse"
`), 0o644)
	c, err = Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Bootstrap) != 2 || c.TURN != "turn://u:p@10.0.0.3:3478" || c.DownloadDir != "/srv/inbox" || c.Accept.Others != AcceptRefuse || c.Accept.Contacts != AcceptAuto || !c.Fsync {
		t.Fatalf("from the file: %+v", c)
	}
	// The environment wins, and an empty variable clears the setting.
	t.Setenv(EnvBootstrap, "127.0.0.1:9,127.0.0.1:10")
	t.Setenv(EnvTURN, "")
	c, err = Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Bootstrap, ",") != "127.0.0.1:9,127.0.0.1:10" || c.TURN != "" {
		t.Fatalf("environment not applied: %+v", c)
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	for name, text := range map[string]string{
		"unknown key":    "bootstrapp = [\"x:1\"]\n",
		"bad policy":     "[accept]\nothers = \"maybe\"\n",
		"not toml":       "bootstrap = [\n",
		"wrong type key": "bootstrap = 5\n",
	} {
		home := t.TempDir()
		os.WriteFile(filepath.Join(home, FileName), []byte(text), 0o644)
		if _, err := Load(home); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestContactsRoundTrip(t *testing.T) {
	home := t.TempDir()
	c, err := LoadContacts(home)
	if err != nil || len(c) != 0 {
		t.Fatalf("empty contacts: %v %v", c, err)
	}
	c["alice"] = strings.Repeat("ab", 20)
	if err := c.Save(home); err != nil {
		t.Fatal(err)
	}
	c2, err := LoadContacts(home)
	if err != nil || c2["alice"] != c["alice"] || c2.NameOf(c["alice"]) != "alice" || c2.NameOf("x") != "" {
		t.Fatalf("reloaded %v, %v", c2, err)
	}
}
