// Package testenv decides what a test does when something it needs from the
// machine (a binary, root, a kernel feature) is missing: skip in a developer's
// quick run, fail when DEL_REQUIRE_ALL is set (the README's test command and
// CI set it), so a missing peer is never a silent skip in CI.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequireAll reports whether missing prerequisites must fail tests.
func RequireAll() bool { return os.Getenv("DEL_REQUIRE_ALL") != "" }

// Missing skips or fails t because of what is missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if RequireAll() {
		t.Fatalf("DEL_REQUIRE_ALL is set but "+format, args...)
	}
	t.Skipf("skipped: "+format+" (set DEL_REQUIRE_ALL=1 to make this a failure)", args...)
}

// NeedBinary returns the path of a program on PATH, or skips/fails t.
func NeedBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s is not installed", name)
	}
	return p
}

// NeedRoot skips or fails t unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "this test needs root")
	}
}
