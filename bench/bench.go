package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
	// URL is the server to measure (ignored with Spawn): one base URL, or
	// several separated by commas, the processes of one deployment over one
	// database, which turns, reads and forward spread their requests over.
	URL       string
	APIKey    string
	Spawn     bool   // start a Stello server and a mock model
	Exe       string // the stello binary used to spawn (default: this executable)
	Scenario  string // one of Scenarios, "pgbench" or "all"
	Duration  time.Duration
	ServerPID int // for RSS figures when not spawning

	Clients int // turns: concurrent clients
	Spaces  int // turns: spaces the clients spread over
	// SessionsPerClient is how many sessions each turns client takes in
	// turn (default 8: through the mock, 64 clients keep 512 sessions of
	// 64–72 turns at the end of a 20 s run instead of 64 sessions of
	// hundreds, so the figure measures a turn rather than its history).
	SessionsPerClient int
	StreamClients     int // stream: WebSocket clients
	StreamLatency     time.Duration
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

	// Nodes is how many `stello serve` processes the spawned mode starts
	// over its one database for turns and reads (default 1); requests go to
	// them round-robin, each request to the next process.
	Nodes int
	// failover: the --lease-ttl values of the spawned processes, and the
	// rounds (one SIGKILL and one SIGTERM each) run at each.
	FailoverTTLs   []time.Duration
	FailoverRounds int
	// leases: the numbers of active spaces at which the idle process's
	// database statements are counted, in increasing order.
	LeaseSpaces []int
	// LeaseSettle is how long leases waits, once the spaces are active,
	// before it counts (default 15s: PostgreSQL 15 reports an idle
	// backend's counters within 10s, and the activations' statements must
	// not fall in the window).
	LeaseSettle time.Duration

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
	if c.SessionsPerClient <= 0 {
		c.SessionsPerClient = 8
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
		c.CPULongSessions = 64
	}
	if c.CPULongRounds <= 0 {
		c.CPULongRounds = 16
	}
	if c.Nodes <= 0 {
		c.Nodes = 1
	}
	if len(c.FailoverTTLs) == 0 {
		c.FailoverTTLs = []time.Duration{2 * time.Second, 10 * time.Second}
	}
	if c.FailoverRounds <= 0 {
		c.FailoverRounds = 3
	}
	if len(c.LeaseSpaces) == 0 {
		c.LeaseSpaces = []int{0, 1000, 100000}
	}
	if c.LeaseSettle <= 0 {
		c.LeaseSettle = 15 * time.Second
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
	pgDir string // the embedded database's directory
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
	case "turns", "stream", "resume", "connections", "reads", "churn", "pgbench", "cpu", "footprint", "forward", "failover", "leases":
		names = []string{cfg.Scenario}
	default:
		return nil, fmt.Errorf("unknown scenario %q (turns, stream, resume, connections, reads, churn, cpu, footprint, forward, failover, leases, pgbench, all)", cfg.Scenario)
	}
	if cfg.Nodes > 1 && !cfg.Spawn {
		return nil, fmt.Errorf("--nodes is for --spawn; to measure several running processes give --url a comma-separated list")
	}
	if slices.Contains(names, "failover") && !cfg.Spawn {
		return nil, fmt.Errorf("the failover scenario kills processes: it needs --spawn")
	}
	if slices.Contains(names, "leases") && !cfg.Spawn {
		return nil, fmt.Errorf("the leases scenario reads the database's counters of the process it starts: it needs --spawn")
	}
	if !cfg.Spawn && (cfg.URL == "" || cfg.APIKey == "") {
		return nil, fmt.Errorf("--url and --api-key are required unless --spawn is given")
	}
	// Progress and the spawned servers' stderr (copied by os/exec's
	// goroutines) share log.
	r := &runner{cfg: cfg, log: &lockedWriter{w: log}, exe: cfg.Exe, dbURL: cfg.DatabaseURL}
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
		"spawn": cfg.Spawn, "durationS": cfg.Duration.Seconds(), "url": cfg.URL, "nodes": cfg.Nodes,
	}}
	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		r.progress("== scenario %s", name)
		before := loadAvg()
		res, err := r.scenario(ctx, name)
		if err != nil {
			r.progress("scenario %s failed: %v", name, err)
			res = &Result{Name: name, Errors: -1, Extra: map[string]any{"failure": err.Error()}}
		}
		after := loadAvg()
		for _, s := range append([]*Result{res}, r.extra...) {
			// The machine's load average (1, 5, 15 minutes) as the
			// scenario began and ended: its own load and any other work.
			if s.Extra == nil {
				s.Extra = map[string]any{}
			}
			if _, ok := s.Extra["loadAvgBefore"]; !ok {
				s.Extra["loadAvgBefore"] = before
			}
			if _, ok := s.Extra["loadAvgAfter"]; !ok {
				s.Extra["loadAvgAfter"] = after
			}
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
	r.pg, r.pgDir = pg, dir
	r.dbURL = pg.URL()
	if r.cfg.Scenario == "leases" {
		// Count the server's statements one by one (it is the only
		// client besides the bench's own counter queries).
		if fatal, err := r.preloadStatStatements(ctx); err != nil {
			if fatal {
				return err
			}
			r.progress("pg_stat_statements unavailable (%v): counting transactions only", err)
		}
	}
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

// target is what a scenario runs against: one process, or several over
// one database.
type target struct {
	url, key string // the first process
	pid      int
	urls     []string // every process
	pids     []int    // with spawned processes, every process's pid
	settings map[string]any
	stop     func()

	// With spawned processes: the live ones (the failover scenario kills
	// some) and how to start one more with the same flags.
	procs []*spawned
	spawn func(ctx context.Context) (*spawned, error)
}

// splitURLs splits a comma-separated list of base URLs, dropping empty
// entries and trailing slashes.
func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// fakeModel marks a scenario that runs the spawned server on its built-in
// fake model (in-process, zero latency) instead of the mock model server.
var fakeModel = mockllm.Config{Model: "fake"}

// start spawns a model and a server for one scenario, or points at the
// given server (the first, when --url lists several). model is the mock
// model server's settings, or fakeModel.
func (r *runner) start(ctx context.Context, model mockllm.Config, serverArgs ...string) (*target, error) {
	return r.startNodes(ctx, 1, model, serverArgs...)
}

// startNodes is start for n processes over one database: spawned, or the
// first n of --url's list (every one when n is 0).
func (r *runner) startNodes(ctx context.Context, n int, model mockllm.Config, serverArgs ...string) (*target, error) {
	if !r.cfg.Spawn {
		urls := splitURLs(r.cfg.URL)
		if len(urls) == 0 {
			return nil, fmt.Errorf("no server URL in --url %q", r.cfg.URL)
		}
		if n > 0 && n < len(urls) {
			urls = urls[:n]
		}
		t := &target{url: urls[0], key: r.cfg.APIKey, pid: r.cfg.ServerPID, urls: urls,
			settings: map[string]any{"server": strings.Join(urls, ","), "nodes": len(urls),
				"modelLatencyMs": "as configured on the server"}, stop: func() {}}
		if r.cfg.ServerPID > 0 && len(urls) == 1 {
			t.pids = []int{r.cfg.ServerPID}
		}
		return t, nil
	}
	if n <= 0 {
		n = r.cfg.Nodes
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
	t := &target{settings: modelSettings}
	started := 0
	t.spawn = func(ctx context.Context) (*spawned, error) {
		name := fmt.Sprintf("server %d: ", started)
		if n == 1 {
			name = "server: "
		}
		started++
		srv, err := spawnServer(ctx, r.exe, args, prefixWriter(r.log, name))
		if err != nil {
			return nil, err
		}
		r.progress("server pid %d listening on %s", srv.pid(), srv.url)
		return srv, nil
	}
	t.stop = func() {
		for _, p := range t.procs {
			p.stop()
		}
		mock.stop()
	}
	for range n {
		srv, err := t.spawn(ctx)
		if err != nil {
			t.stop()
			return nil, err
		}
		t.procs = append(t.procs, srv)
	}
	key, err := createUser(ctx, r.exe, r.dbURL)
	if err != nil {
		t.stop()
		return nil, err
	}
	t.key = key
	t.refresh()
	shown := make([]string, 0, len(t.procs[0].args))
	for _, a := range t.procs[0].args {
		if strings.HasPrefix(a, "postgres://") {
			a = "postgres://…"
		}
		shown = append(shown, a)
	}
	modelSettings["serverArgs"] = strings.Join(shown, " ")
	if n > 1 {
		modelSettings["nodes"] = n
		modelSettings["spread"] = "round-robin, each request to the next process"
	}
	return t, nil
}

// refresh sets url, pid, urls and pids from the live spawned processes.
func (t *target) refresh() {
	t.urls, t.pids = t.urls[:0], t.pids[:0]
	for _, p := range t.procs {
		t.urls = append(t.urls, p.url)
		t.pids = append(t.pids, p.pid())
	}
	if len(t.procs) > 0 {
		t.url, t.pid = t.urls[0], t.pids[0]
	}
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
	case "forward":
		return r.forward(ctx)
	case "failover":
		return r.failover(ctx)
	case "leases":
		return r.leases(ctx)
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

// loadAvg is the machine's load average over 1, 5 and 15 minutes, as
// /proc/loadavg gives it ("" where it cannot be read).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
