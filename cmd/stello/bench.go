package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/stellohq/stello/bench"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stello bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c bench.Config
	var serverArgs, failoverTTLs, leaseSpaces string
	fs.StringVar(&c.URL, "url", "", "base URL of the server to measure (not with --spawn); several, comma-separated, for processes sharing one database (turns, reads and forward spread requests over them)")
	fs.StringVar(&c.APIKey, "api-key", "", "API key for --url")
	fs.BoolVar(&c.Spawn, "spawn", false, "start a Stello server (and an embedded PostgreSQL unless --database-url) and a mock model")
	fs.StringVar(&c.Scenario, "scenario", "all", "turns, stream, resume, connections, reads, churn, pgbench, all; or cpu, footprint, forward, failover, leases (not in all)")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "how long each scenario measures")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "pid of the measured server, for RSS figures without --spawn")
	fs.IntVar(&c.Clients, "clients", 64, "turns: concurrent REST clients")
	fs.IntVar(&c.Spaces, "spaces", 64, "turns: spaces the clients spread over")
	fs.IntVar(&c.CPUSessions, "cpu-sessions", 512, "cpu: sessions measured at 10 and about 20 turns of history (two turns each per phase; more sessions, less noise)")
	fs.IntVar(&c.SessionsPerClient, "sessions-per-client", 8, "turns: sessions each client takes in turn (its history grows that much slower)")
	fs.IntVar(&c.StreamClients, "stream-clients", 1000, "stream: WebSocket clients")
	fs.DurationVar(&c.StreamLatency, "stream-latency", 500*time.Millisecond, "stream: model time to first token")
	fs.IntVar(&c.ResumeClients, "resume-clients", 500, "resume: SSE clients that drop and resume their streams")
	fs.IntVar(&c.ResumeReplyWords, "resume-reply-words", 24, "resume: words of each model reply (one streamed event each)")
	fs.Float64Var(&c.ResumeTokensPerSecond, "resume-tokens-per-second", 10, "resume: the model's streaming rate")
	fs.IntVar(&c.Conns, "conns", 10000, "connections: idle WebSocket connections")
	fs.IntVar(&c.Readers, "readers", 16, "reads: concurrent readers")
	fs.DurationVar(&c.ReadsTurnLatency, "reads-turn-latency", 0, "reads: model latency of the turns running meanwhile (0: saturate)")
	fs.IntVar(&c.ChurnSpaces, "churn-spaces", 100000, "churn: distinct spaces touched")
	fs.DurationVar(&c.ChurnIdleTTL, "churn-idle-ttl", 3*time.Second, "churn: --idle-ttl of the spawned server")
	fs.IntVar(&c.Nodes, "nodes", 1, "with --spawn: stello serve processes over the one database for turns and reads (each request to the next process); forward and failover start at least 2")
	fs.StringVar(&failoverTTLs, "failover-ttls", "2s,10s", "failover: --lease-ttl values of the spawned processes, comma-separated")
	fs.IntVar(&c.FailoverRounds, "failover-rounds", 3, "failover: rounds at each lease TTL (one SIGKILL and one SIGTERM each)")
	fs.StringVar(&leaseSpaces, "lease-spaces", "0,1000,100000", "leases: numbers of active spaces at which the idle process's database statements are counted, comma-separated")
	fs.StringVar(&c.Model, "model", "auto", "spawned server's model: auto (mockllm over HTTP for turns, then fake as a second line; fake for reads/connections/churn; mockllm for stream and cpu), fake or mock")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "database of the measured server, for pgbench (and the spawned server)")
	fs.StringVar(&c.DataDir, "bench-data-dir", "", "with --spawn and no --database-url: embedded database directory (default: a temp dir)")
	fs.StringVar(&c.Exe, "server-bin", "", "stello binary to spawn (default: this one), e.g. an older build to compare")
	fs.StringVar(&serverArgs, "server-args", "", "extra flags for the spawned server, space separated")
	fs.StringVar(&c.JSONFile, "json", "", "also write the results as JSON to this file")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.ServerArgs = strings.Fields(serverArgs)
	var err error
	if c.FailoverTTLs, err = bench.ParseDurations(failoverTTLs); err != nil {
		return &usageError{"--failover-ttls: " + err.Error()}
	}
	if c.LeaseSpaces, err = bench.ParseCounts(leaseSpaces); err != nil {
		return &usageError{"--lease-spaces: " + err.Error()}
	}
	rep, err := bench.Run(ctx, c, stdout, stderr)
	if err != nil {
		return err
	}
	for _, s := range rep.Scenarios {
		if s.Errors < 0 {
			return fmt.Errorf("scenario %s failed", s.Name)
		}
	}
	return nil
}
