// Package config locates a device's state folder and reads the settings that
// the CLI contract lets the environment override (DESIGN.md, CLI contract).
package config

import (
	"errors"
	"os"
	"path/filepath"
)

// Environment variables of the CLI contract.
const (
	EnvHome       = "DEL_HOME"
	EnvBootstrap  = "DEL_BOOTSTRAP"
	EnvTURN       = "DEL_TURN"
	EnvSTUN       = "DEL_STUN"
	EnvInterfaces = "DEL_INTERFACES"
)

// Home returns the device's state folder: $DEL_HOME, else
// $XDG_CONFIG_HOME/del, else ~/.config/del.
func Home() (string, error) {
	if h := os.Getenv(EnvHome); h != "" {
		return filepath.Abs(h)
	}
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "del"), nil
	}
	u, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("cannot find a state folder: set DEL_HOME or HOME")
	}
	return filepath.Join(u, ".config", "del"), nil
}

// PartialDir is where a device keeps partial downloads between runs, so that
// an interrupted transfer can resume.
func PartialDir(home string) string { return filepath.Join(home, "partial") }
