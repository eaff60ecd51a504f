package main

import (
	"fmt"
	"sort"

	"github.com/del-share/del/identity"
	"github.com/del-share/del/internal/config"
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newContactsCmd) }

func newContactsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "contacts",
		Short: "Name the devices you know; contacts can be sent to by name and are auto-accepted by default",
	}
	withContacts := func(f func(home string, c config.Contacts, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			home, err := config.Home()
			if err != nil {
				return err
			}
			c, err := config.LoadContacts(home)
			if err != nil {
				return err
			}
			return f(home, c, args)
		}
	}
	add := &cobra.Command{
		Use:   "add NAME PEER-ID",
		Short: "Add or rename a contact",
		Args:  cobra.ExactArgs(2),
		RunE: withContacts(func(home string, c config.Contacts, args []string) error {
			id, err := identity.ParseID(args[1])
			if err != nil {
				return err
			}
			if _, err := identity.ParseID(args[0]); err == nil {
				return fmt.Errorf("a contact name cannot look like a peer id")
			}
			c[args[0]] = id.String()
			return c.Save(home)
		}),
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List contacts: NAME PEER-ID, one per line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContacts(func(home string, c config.Contacts, args []string) error {
				names := make([]string, 0, len(c))
				for n := range c {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", n, c[n])
				}
				return nil
			})(cmd, args)
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a contact",
		Args:  cobra.ExactArgs(1),
		RunE: withContacts(func(home string, c config.Contacts, args []string) error {
			if _, ok := c[args[0]]; !ok {
				return fmt.Errorf("no contact named %q", args[0])
			}
			delete(c, args[0])
			return c.Save(home)
		}),
	}
	cmd.AddCommand(add, list, remove)
	return cmd
}
