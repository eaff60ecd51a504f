package main

import (
	"errors"
	"fmt"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/del-share/del/peer"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newIDCmd) }

func newIDCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "id",
		Short: "Print this device's peer id (created on first use)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ident, err := loadIdentity(cmd)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ident.ID)
			return nil
		},
	}
}

// loadIdentity loads the device identity, creating one on first use and
// saying so on stderr (RSA-4096 generation takes a few seconds).
func loadIdentity(cmd *cobra.Command) (*identity.Identity, error) {
	home, err := config.Home()
	if err != nil {
		return nil, err
	}
	ident, err := identity.Load(home)
	if err == nil {
		return ident, nil
	}
	if !errorsIsNoIdentity(err) {
		return nil, err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "creating a new identity in %s (RSA-%d, takes a few seconds)\n", home, identity.KeyBits)
	ident, _, err = identity.LoadOrCreate(home)
	return ident, err
}

// linkIdentity is loadIdentity for a command that makes links: their
// session certificate (signed by the identity, kept in DEL_HOME) is made or
// loaded in the background while the command sets up, not on the first link.
func linkIdentity(cmd *cobra.Command) (*identity.Identity, error) {
	ident, err := loadIdentity(cmd)
	if err != nil {
		return nil, err
	}
	if home, err := config.Home(); err == nil {
		go peer.PrepareIn(ident, home)
	}
	return ident, nil
}

func errorsIsNoIdentity(err error) bool { return errors.Is(err, identity.ErrNoIdentity) }
