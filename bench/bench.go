package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/pgstore/embedpg"
)

// Scenarios lists every scenario in the order `all` runs them.
var Scenarios = []string{"turns", "stream", "resume", "connections", "reads", "churn"}

// Config is everything `stello bench` takes.
type Config struct {
	URL       string // server to measure (ignored with Spawn)
	APIKey    string
	Spawn     bool   // start a Stello server and a mock model
	Exe       string // the stello binary used to spawn (default: this executable)
	Scenario  string // one of Scenarios, "pgbench" or "all"
	Duration  time.Duration
	ServerPID int // for RSS figures when not spawning

	Clients       int // turns: concurrent clients
	Spaces        int // turns: spaces the clients spread over
	StreamClients int // stream: WebSocket clients
	StreamLatency time.Duration
	// resume: SSE clients that drop and resume their streams, the words of
	// the mock model's replies and its streaming rate (spawned server).
	ResumeClients         int
	ResumeReplyWords      int
	ResumeTokensPerSecond float64
	Conns                 int // connections: idle WebSockets
	Readers               int // reads: concurrent readers
	// ReadsTurnLatency is the model latency of the turns running during
	// reads (0: as fast as the server goes, saturating the CPU).
	ReadsTurnLatency time.Duration
	ChurnSpaces      int // churn: distinct spaces touched
	ChurnIdleTTL     time.Duration
	// cpu: sessions measured at 10 and 20 turns of history, sessions
	// measured at 200, and the turns run on each of those.
	CPUSessions     int
	CPULongSessions int
	CPULongRounds   int

	// Model is the spawned server's model: "auto" (the HTTP mock for turns,
	// then the in-process fake as a second line; the in-process fake for
	// reads, connections and churn; the HTTP mock for stream and cpu),
	// "fake" or "mock".
	Model string

	DatabaseURL string // for pgbench (and the spawned server); empty with Spawn: embedded
	DataDir     string // embedded database directory with Spawn (default: a temp dir)
	ServerArgs  []string
	JSONFile    string
}

// Report is the JSON document written with --json.
type Report struct {
	Machine   map[string]any `json:"machine"`
	Settings  map[string]any `json:"settings"`
	Scenarios []*Result      `json:"scenarios"`
}

// Result is one scenario's figures.
type Result struct {
	Name         string         `json:"name"`
	Throughput   float64        `json:"throughput"`
	Unit         string         `json:"unit"`
	P50Ms        float64        `json:"p50Ms"`
	P95Ms        float64        `json:"p95Ms"`
	P99Ms        float64        `json:"p99Ms"`
	Errors       int            `json:"errors"`
	PgbenchRatio *float64       `json:"pgbenchRatio,omitempty"`
	Target       string         `json:"target,omitempty"`
	Met          *bool          `json:"met,omitempty"`
	Settings     map[string]any `json:"settings"`
	Extra        map[string]any `json:"-"`
	ErrorSamples map[string]int `json:"errorSamples,omitempty"`
}

// MarshalJSON puts scenario-specific figures beside the common ones.
func (r *Result) MarshalJSON() ([]byte, error) {
	type plain Result
	b, err := json.Marshal((*plain)(r))
	if err != nil || len(r.Extra) == 0 {
		return b, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range r.Extra {
		m[k] = v
	}
	return json.Marshal(m)
}

func (c *Config) defaults() {
	if c.Duration <= 0 {
		c.Duration = 20 * time.Second
	}
	if c.Clients <= 0 {
		c.Clients = 64
	}
	if c.Spaces <= 0 {
		c.Spaces = 64
	}
	if c.StreamClients <= 0 {
		c.StreamClients = 1000
	}
	if c.StreamLatency <= 0 {
		c.StreamLatency = 500 * time.Millisecond
	}
	if c.ResumeClients <= 0 {
		c.ResumeClients = 500
	}
	if c.ResumeReplyWords <= 0 {
		c.ResumeReplyWords = 24
	}
	if c.ResumeTokensPerSecond <= 0 {
		c.ResumeTokensPerSecond = 10
	}
	if c.Conns <= 0 {
		c.Conns = 10000
	}
	if c.Readers <= 0 {
		c.Readers = 16
	}
	if c.ChurnSpaces <= 0 {
		c.ChurnSpaces = 100000
	}
	if c.ChurnIdleTTL <= 0 {
		c.ChurnIdleTTL = 3 * time.Second
	}
	if c.CPUSessions <= 0 {
		c.CPUSessions = 512
	}
	if c.CPULongSessions <= 0 {
		c.CPULongSessions = 32
	}
	if c.CPULongRounds <= 0 {
		c.CPULongRounds = 16
	}
	if c.Scenario == "" {
		c.Scenario = "all"
	}
	if c.Model == "" {
		c.Model = "auto"
	}
}

// runner holds what scenarios share.
type runner struct {
	cfg   Config
	log   io.Writer
	exe   string
	dbURL string
	pg    *embedpg.Instance
	tmp   string
	// extra are the turns scenario's further lines: the in-process fake
	// model when the first ran through the HTTP mock, and the same turns
	// without the turn log.
	extra []*Result
}

// Run runs the configured scenarios and prints the table to out; progress
// goes to log.
func Run(ctx context.Context, cfg Config, out, log io.Writer) (*Report, error) {
	cfg.defaults()
	var names []string
	switch cfg.Scenario {
	case "all":
		names = Scenarios
	case "turns", "stream", "resume", "connections", "reads", "churn", "pgbench", "cpu", "footprint":
		names = []string{cfg.Scenario}
	default:
		return nil, fmt.Errorf("unknown scenario %q (turns, stream, resume, connections, reads, churn, cpu, footprint, pgbench, all)", cfg.Scenario)
	}
	if !cfg.Spawn && (cfg.URL == "" || cfg.APIKey == "") {
		return nil, fmt.Errorf("--url and --api-key are required unless --spawn is given")
	}
	// The progress lines and the spawned processes' output (copied by
	// their own goroutines) share the log: one write at a time.
	log = &lockedWriter{w: log}
	r := &runner{cfg: cfg, log: log, exe: cfg.Exe, dbURL: cfg.DatabaseURL}
	if r.exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		r.exe = exe
	}
	defer r.cleanup()
	if cfg.Spawn && r.dbURL == "" {
		if err := r.startDB(ctx); err != nil {
			return nil, err
		}
	}
	rep := &Report{Machine: machine(), Settings: map[string]any{
		"spawn": cfg.Spawn, "durationS": cfg.Duration.Seconds(), "url": cfg.URL,
	}}
	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		r.progress("== scenario %s", name)
		res, err := r.scenario(ctx, name)
		if err != nil {
			r.progress("scenario %s failed: %v", name, err)
			res = &Result{Name: name, Errors: -1, Extra: map[string]any{"failure": err.Error()}}
		}
		rep.Scenarios = append(rep.Scenarios, res)
		rep.Scenarios = append(rep.Scenarios, r.extra...)
		r.extra = nil
	}
	printTable(out, rep)
	if cfg.JSONFile != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(cfg.JSONFile, append(b, '\n'), 0o644); err != nil {
			return rep, fmt.Errorf("write %s: %w", cfg.JSONFile, err)
		}
	}
	return rep, nil
}

func (r *runner) progress(format string, args ...any) {
	fmt.Fprintf(r.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (r *runner) startDB(ctx context.Context) error {
	dir := r.cfg.DataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "stello-bench-")
		if err != nil {
			return err
		}
		r.tmp = tmp
		// The database may run as another user (when we are root).
		if err := os.Chmod(tmp, 0o755); err != nil {
			return err
		}
		dir = filepath.Join(tmp, "pg")
	}
	r.progress("starting embedded PostgreSQL in %s", dir)
	pg, err := embedpg.Start(ctx, embedpg.Options{DataDir: dir, Fsync: true})
	if err != nil {
		return err
	}
	r.pg = pg
	r.dbURL = pg.URL()
	return nil
}

func (r *runner) cleanup() {
	if r.pg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = r.pg.Stop(ctx)
		cancel()
	}
	if r.tmp != "" {
		_ = os.RemoveAll(r.tmp)
	}
}

// target is what a scenario runs against.
type target struct {
	url, key string
	pid      int
	settings map[string]any
	stop     func()
}

// fakeModel marks a scenario that runs the spawned server on its built-in
// fake model (in-process, zero latency) instead of the mock model server.
var fakeModel = mockllm.Config{Model: "fake"}

// start spawns a model and a server for one scenario, or points at the
// given server. model is the mock model server's settings, or fakeModel.
func (r *runner) start(ctx context.Context, model mockllm.Config, serverArgs ...string) (*target, error) {
	if !r.cfg.Spawn {
		return &target{url: r.cfg.URL, key: r.cfg.APIKey, pid: r.cfg.ServerPID,
			settings: map[string]any{"server": r.cfg.URL, "modelLatencyMs": "as configured on the server"}, stop: func() {}}, nil
	}
	args := []string{"--database-url", r.dbURL, "--db-max-conns", "64", "--consolidate-every", "0"}
	mock := &mockModel{}
	modelSettings := map[string]any{"model": "fake (in-process)", "modelTTFTMs": model.TTFT.Milliseconds()}
	useFake := model.Model == "fake"
	switch r.cfg.Model {
	case "fake":
		useFake = true
	case "mock":
		useFake = false
	}
	if !useFake {
		var err error
		if mock, err = startMock(model); err != nil {
			return nil, err
		}
		args = append(args, "--llm", "openai", "--llm-base-url", mock.url, "--llm-model", "mock-1", "--llm-max-retries", "0")
		modelSettings = map[string]any{"model": "mockllm over HTTP", "modelTTFTMs": model.TTFT.Milliseconds(),
			"modelReplyTokens": model.ReplyTokens, "modelTokensPerSecond": model.TokensPerSecond}
	} else {
		args = append(args, "--llm", "fake", "--fake-latency", model.TTFT.String())
	}
	args = append(args, serverArgs...)
	args = append(args, r.cfg.ServerArgs...)
	srv, err := spawnServer(ctx, r.exe, args, prefixWriter(r.log, "server: "))
	if err != nil {
		mock.stop()
		return nil, err
	}
	key, err := createUser(ctx, r.exe, r.dbURL)
	if err != nil {
		srv.stop()
		mock.stop()
		return nil, err
	}
	shown := make([]string, 0, len(srv.args))
	for _, a := range srv.args {
		if strings.HasPrefix(a, "postgres://") {
			a = "postgres://…"
		}
		shown = append(shown, a)
	}
	modelSettings["serverArgs"] = strings.Join(shown, " ")
	r.progress("server pid %d listening on %s", srv.pid(), srv.url)
	return &target{url: srv.url, key: key, pid: srv.pid(), settings: modelSettings,
		stop: func() { srv.stop(); mock.stop() }}, nil
}

func (r *runner) scenario(ctx context.Context, name string) (*Result, error) {
	switch name {
	case "turns":
		return r.turns(ctx)
	case "stream":
		return r.stream(ctx)
	case "resume":
		return r.resume(ctx)
	case "connections":
		return r.connections(ctx)
	case "reads":
		return r.reads(ctx)
	case "churn":
		return r.churn(ctx)
	case "pgbench":
		return r.pgbenchOnly(ctx)
	case "cpu":
		return r.cpuScenario(ctx)
	case "footprint":
		return r.footprint(ctx)
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

func machine() map[string]any {
	m := map[string]any{"cpus": runtime.NumCPU(), "goVersion": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m["cpuModel"] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line := strings.SplitN(string(b), "\n", 2)[0]
		m["memTotal"] = strings.Join(strings.Fields(strings.TrimPrefix(line, "MemTotal:")), " ")
	}
	return m
}

func printTable(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "\nmachine: %v CPUs, %v, %v\n", rep.Machine["cpus"], rep.Machine["goVersion"], rep.Machine["cpuModel"])
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tthroughput\tp50 ms\tp95 ms\tp99 ms\terrors\tpgbench ratio\ttarget\tmet")
	for _, s := range rep.Scenarios {
		ratio := "-"
		if s.PgbenchRatio != nil {
			ratio = fmt.Sprintf("%.2f", *s.PgbenchRatio)
		}
		met := "-"
		if s.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*s.Met]
		}
		fmt.Fprintf(tw, "%s\t%.1f %s\t%.2f\t%.2f\t%.2f\t%d\t%s\t%s\t%s\n", s.Name, s.Throughput, s.Unit, s.P50Ms, s.P95Ms, s.P99Ms,
			s.Errors, ratio, s.Target, met)
	}
	_ = tw.Flush()
	for _, s := range rep.Scenarios {
		keys := make([]string, 0, len(s.Extra)+len(s.Settings))
		for k := range s.Extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%v", k, s.Extra[k]))
		}
		fmt.Fprintf(w, "%s: %s\n", s.Name, strings.Join(parts, " "))
		skeys := make([]string, 0, len(s.Settings))
		for k := range s.Settings {
			skeys = append(skeys, k)
		}
		sort.Strings(skeys)
		sp := make([]string, 0, len(skeys))
		for _, k := range skeys {
			sp = append(sp, fmt.Sprintf("%s=%v", k, s.Settings[k]))
		}
		fmt.Fprintf(w, "  settings: %s\n", strings.Join(sp, " "))
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

type prefixed struct {
	w      io.Writer
	prefix string
}

func (p prefixed) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			_, _ = io.WriteString(p.w, p.prefix+line)
		}
	}
	return len(b), nil
}

func prefixWriter(w io.Writer, prefix string) io.Writer { return prefixed{w, prefix} }

func boolp(b bool) *bool { return &b }
