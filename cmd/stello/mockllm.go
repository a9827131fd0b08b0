package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/stellohq/stello/bench/mockllm"
)

func cmdMockLLM(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stello mockllm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	var cfg mockllm.Config
	fs.DurationVar(&cfg.TTFT, "ttft", 0, "time to first token")
	fs.Float64Var(&cfg.TokensPerSecond, "tokens-per-second", 0, "streaming pace in tokens (words) per second; 0 = unlimited")
	fs.IntVar(&cfg.ReplyTokens, "reply-tokens", 20, "words in a generated reply")
	fs.Float64Var(&cfg.ErrorRate, "error-rate", 0, "fraction of requests answered with HTTP 500 (0..1)")
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed of the error draw")
	fs.StringVar(&cfg.Model, "model", "mock-1", "model name listed on /v1/models")
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.ErrorRate < 0 || cfg.ErrorRate > 1 {
		return &usageError{"--error-rate must be between 0 and 1"}
	}
	return mockllm.Run(ctx, *addr, cfg, func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) })
}
