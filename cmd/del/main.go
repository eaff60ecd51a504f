// Command del shares files and git repositories directly between devices.
//
// Each subcommand lives in its own file and registers itself in commands.
// The output lines named in DESIGN.md's CLI contract are relied on by scripts.
//
// OpenDHT (GnuTLS) gives about half its certificates a negative serial
// number, which crypto/x509 refuses by default; accept them so that OpenDHT
// identities and certificates found on the DHT parse.
//
//go:debug x509negativeserial=1
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

// commands are the constructors of del's subcommands; files add to it in init.
var commands []func() *cobra.Command

// exitError carries a process exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	var verbose bool
	root := &cobra.Command{
		Use:           "del",
		Short:         "Share files and git repositories directly between devices",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
		},
	}
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log protocol details to stderr")
	for _, c := range commands {
		root.AddCommand(c())
	}
	return root
}

func main() {
	// DEL_CPUPROFILE=FILE writes a CPU profile of this run, for performance work.
	if p := os.Getenv("DEL_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "del:", err)
		pprof.StopCPUProfile()
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
