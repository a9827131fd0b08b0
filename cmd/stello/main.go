// Command stello runs the Stello server and its tools: serve, migrate,
// users, keys, cluster, mockllm and bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/peterbourgon/ff/v3"
)

const usage = `stello: tree-structured, memory-carrying LLM conversations for many tenants.

Usage:
  stello serve [flags]                       run the HTTP + WebSocket server
  stello migrate [flags]                     apply database migrations and exit
  stello users create --name NAME [--json]   create a user and print its API key once
  stello users list [--json]                 list users (never keys)
  stello keys revoke --user ID               revoke every key of a user
  stello keys rotate --user ID [--json]      revoke a user's keys and print a new one
  stello cluster status [--json]             the processes sharing the database and the spaces each owns
  stello mockllm --addr ADDR [flags]         run an OpenAI-compatible mock model server
  stello bench [flags]                       run the load harness

Run "stello COMMAND -h" for a command's flags. Every flag also reads
STELLO_<FLAG_IN_UPPER_SNAKE_CASE>; a flag given on the command line wins.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "stello:", err)
		}
		os.Exit(exitCode(err))
	}
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

// run dispatches a command; it is main without the process around it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{"a command is required"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(ctx, rest, stdout, stderr)
	case "migrate":
		return cmdMigrate(ctx, rest, stdout, stderr)
	case "users":
		return cmdUsers(ctx, rest, stdout, stderr)
	case "keys":
		return cmdKeys(ctx, rest, stdout, stderr)
	case "cluster":
		return cmdCluster(ctx, rest, stdout, stderr)
	case "mockllm":
		return cmdMockLLM(ctx, rest, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// parse parses flags with STELLO_* environment fallbacks.
func parse(fs *flag.FlagSet, args []string) error {
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix("STELLO")); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected arguments: %v", fs.Args())}
	}
	return nil
}
