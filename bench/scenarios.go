package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/bench/pgbench"
	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/pgstore/embedpg"
)

// session is one place a client talks to.
type benchSession struct{ space, session string }

// setupSessions creates spaces spaces and gives each of n clients its own
// session: the root of space i when n <= spaces, a fork otherwise. pick
// gives the client of each space's creation and of each fork (the same
// one, or the next process's with a pool: a space is then owned by the
// process that created it, as that process serves its first request).
func setupSessions(ctx context.Context, pick func() *client.Client, spaces, n int) ([]benchSession, error) {
	roots := make([]benchSession, spaces)
	if err := parallel(ctx, 16, spaces, func(i int) error {
		sp, root, err := createSpace(ctx, pick(), fmt.Sprintf("bench %d", i))
		roots[i] = benchSession{sp, root}
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]benchSession, n)
	err := parallel(ctx, 16, n, func(i int) error {
		r := roots[i%spaces]
		if n <= spaces {
			out[i] = r
			return nil
		}
		child, err := pick().Fork(ctx, r.space, r.session, client.ForkOptions{Label: fmt.Sprintf("client %d", i)})
		if err != nil {
			return err
		}
		out[i] = benchSession{r.space, child.ID}
		return nil
	})
	return out, err
}

// parallel runs fn(0..n-1) on workers goroutines, stopping at the first error.
func parallel(ctx context.Context, workers, n int, fn func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// loop runs fn on each of n goroutines until the deadline; the first
// warmup of it is not recorded.
func loop(ctx context.Context, n int, d, warmup time.Duration, rec *recorder, fn func(ctx context.Context, i int) error) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, warmup+d)
	defer cancel()
	measureFrom := time.Now().Add(warmup)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for ctx.Err() == nil {
				start := time.Now()
				err := fn(ctx, i)
				if start.Before(measureFrom) {
					continue
				}
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					rec.fail(err)
					continue
				}
				rec.ok(time.Since(start))
			}
		}(i)
	}
	wg.Wait()
	return d
}

func fill(res *Result, s summary, elapsed time.Duration, unit string) {
	res.Throughput = round2(float64(s.N) / elapsed.Seconds())
	res.Unit = unit
	res.P50Ms, res.P95Ms, res.P99Ms = s.P50, s.P95, s.P99
	res.Errors = s.Error
}

// turns runs the turns scenario through the HTTP mock model (the path a
// real deployment takes) and, with --model auto, once more on the
// in-process fake model as a second line sharing the pgbench figure. A
// spawned server is then started once more with --turn-log=false and the
// last model's line repeated, for the cost of the turn log.
func (r *runner) turns(ctx context.Context) (*Result, error) {
	mock := mockllm.Config{ReplyTokens: 20}
	if !r.cfg.Spawn || r.cfg.Model != "auto" {
		model := fakeModel
		if r.cfg.Model == "mock" {
			model = mock
		}
		res, err := r.turnsWith(ctx, "turns", model, true)
		if err == nil && r.cfg.Spawn && r.cfg.Nodes == 1 {
			r.extra = append(r.extra, r.turnLogCost(ctx, res, "turns", model))
		}
		return res, err
	}
	saved := r.cfg.Model
	defer func() { r.cfg.Model = saved }()
	r.cfg.Model = "mock"
	res, err := r.turnsWith(ctx, "turns", mock, true)
	if err != nil {
		return nil, err
	}
	r.cfg.Model = "fake"
	fk, err := r.turnsWith(ctx, "turns (fake model)", fakeModel, false)
	if err != nil {
		fk = &Result{Name: "turns (fake model)", Errors: -1, Extra: map[string]any{"failure": err.Error()}}
	} else if tps, ok := res.Extra["pgbenchTps"].(float64); ok && tps > 0 {
		ratio := round2(fk.Throughput / tps)
		fk.PgbenchRatio = &ratio
		fk.Extra["pgbenchTps"] = tps
		fk.Target = "≥0.6×pgbench, 0 errors"
		fk.Met = boolp(ratio >= 0.6 && fk.Errors == 0)
	}
	r.extra = append(r.extra, fk)
	if fk.Errors >= 0 && r.cfg.Nodes == 1 {
		r.extra = append(r.extra, r.turnLogCost(ctx, fk, "turns (fake model)", fakeModel))
	}
	return res, nil
}

// turnLogCost measures the turns of base on two servers started side by
// side on the same database, one with the turn log and one with
// --turn-log=false, in four alternating phases (with, without, without,
// with) so that drift in the shared machine's load and the database's
// growth weigh on both alike; it reports with ÷ without.
func (r *runner) turnLogCost(ctx context.Context, base *Result, name string, model mockllm.Config) *Result {
	name += ", --turn-log=false"
	fail := func(err error) *Result {
		return &Result{Name: name, Errors: -1, Extra: map[string]any{"failure": err.Error()}}
	}
	c := r.cfg
	tw, err := r.start(ctx, model)
	if err != nil {
		return fail(err)
	}
	defer tw.stop()
	tn, err := r.start(ctx, model, "--turn-log=false")
	if err != nil {
		return fail(err)
	}
	defer tn.stop()
	type side struct {
		c     *client.Client
		sess  []benchSession
		rec   *recorder
		spent time.Duration
	}
	sides := [2]*side{{c: newClient(tw.url, tw.key, c.Clients), rec: newRecorder()}, {c: newClient(tn.url, tn.key, c.Clients), rec: newRecorder()}}
	for _, sd := range sides {
		if sd.sess, err = setupSessions(ctx, fixed(sd.c), c.Spaces, c.Clients); err != nil {
			return fail(fmt.Errorf("setup: %w", err))
		}
	}
	phase := max(c.Duration/4, 500*time.Millisecond)
	r.progress("turn log cost: %d clients, phases of %s with, without, without, with the log", c.Clients, phase)
	var phases []float64
	for _, k := range []int{0, 1, 1, 0} {
		sd := sides[k]
		n0 := sd.rec.count()
		d := loop(ctx, c.Clients, phase, time.Second, sd.rec, func(ctx context.Context, i int) error {
			return turn(ctx, sd.c, sd.sess[i], "load test input")
		})
		sd.spent += d
		phases = append(phases, round2(float64(sd.rec.count()-n0)/d.Seconds()))
	}
	res := &Result{Name: name, Settings: tn.settings}
	res.Settings["clients"], res.Settings["spaces"] = c.Clients, c.Spaces
	fill(res, sides[1].rec.summary(), sides[1].spent, "turns/s")
	res.ErrorSamples = sides[1].rec.errMsg
	with := sides[0].rec.summary()
	withTps := round2(float64(with.N) / sides[0].spent.Seconds())
	res.Extra = map[string]any{"withLogTurnsPerS": withTps, "withLogP99Ms": with.P99, "withLogErrors": with.Error,
		"phasesTurnsPerS": phases, "clients": c.Clients, "spaces": c.Spaces}
	if res.Throughput > 0 {
		ratio := round2(withTps / res.Throughput)
		res.Extra["withLogOverWithout"] = ratio
		base.Extra["turnLogRatio"] = ratio
		res.Target = "with log ≥0.9× without"
		res.Met = boolp(ratio >= 0.9 && res.Errors == 0 && with.Error == 0)
		r.progress("turn log: %.1f turns/s with, %.1f without (phases %v): ratio %.2f", withTps, res.Throughput, phases, ratio)
	}
	return res
}

func (r *runner) turnsWith(ctx context.Context, name string, model mockllm.Config, withPgbench bool, serverArgs ...string) (*Result, error) {
	t, err := r.startNodes(ctx, 0, model, serverArgs...)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	c := r.cfg
	p := newPool(t.urls, t.key, c.Clients)
	// Client i takes sessions i, i+clients, i+2·clients, … in turn (all in
	// one space when spaces divides clients); pgbench writes to the first
	// clients sessions.
	per := max(c.SessionsPerClient, 1)
	sess, err := setupSessions(ctx, p.next, c.Spaces, c.Clients*per)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	rounds := make([]int, c.Clients) // owned by client i's goroutine
	r.progress("turns: %d clients over %d spaces, %d sessions and %d processes for %s", c.Clients, c.Spaces, len(sess), len(t.urls), c.Duration)
	rec := newRecorder()
	// CPU per turn of the servers and of this process (load generator
	// and, when used, the mock model), over every turn including the
	// warm-up.
	var done atomic.Int64
	srv0, srvErr := cpuTimes(t.pids)
	own0, _ := cpuTime(os.Getpid())
	fwd0, fwdErr := p.forwardedSent(ctx)
	elapsed := loop(ctx, c.Clients, c.Duration, 2*time.Second, rec, func(ctx context.Context, i int) error {
		s := sess[i+c.Clients*(rounds[i]%per)]
		rounds[i]++
		err := turn(ctx, p.next(), s, "load test input")
		if err == nil {
			done.Add(1)
		}
		return err
	})
	srv1, _ := cpuTimes(t.pids)
	own1, _ := cpuTime(os.Getpid())
	fwd1, fwdErr1 := p.forwardedSent(ctx)
	res := &Result{Name: name, Settings: t.settings, Extra: map[string]any{"clients": c.Clients, "spaces": c.Spaces}}
	if len(t.urls) > 1 {
		res.Name = fmt.Sprintf("%s, %d processes", name, len(t.urls))
		res.Extra["nodes"] = len(t.urls)
	}
	if n := done.Load(); n > 0 {
		if srvErr == nil && len(t.pids) > 0 {
			res.Extra["serverCpuPerTurnUs"] = round2(float64((srv1 - srv0).Microseconds()) / float64(n))
		}
		if len(t.urls) > 1 && fwdErr == nil && fwdErr1 == nil {
			// Requests a process passed on to the space's owner, per
			// turn answered (warm-up included).
			res.Extra["forwardedPerTurn"] = round2((fwd1 - fwd0) / float64(n))
		}
		res.Extra["benchCpuPerTurnUs"] = round2(float64((own1 - own0).Microseconds()) / float64(n))
		res.Extra["historyTurnsAtEnd"] = n / int64(len(sess))
	}
	res.Settings["clients"], res.Settings["spaces"], res.Settings["sessions"] = c.Clients, c.Spaces, len(sess)
	fill(res, rec.summary(), elapsed, "turns/s")
	res.ErrorSamples = rec.errMsg
	r.progress("%s: %.1f turns/s p99 %.1f ms errors %d", name, res.Throughput, res.P99Ms, res.Errors)
	if r.dbURL != "" && withPgbench {
		// The commit with and without the turn log row (the log's cost to
		// the database alone), in four alternating phases of half the
		// duration each (with, without, without, with), so that the
		// database's growth and the shared machine's drift weigh on both.
		var tps, tps0 float64
		var phases []float64
		var err error
		half := c.Duration / 2
		for _, withLog := range []bool{true, false, false, true} {
			script, sum := pgbench.TurnSQL, &tps
			if !withLog {
				script, sum = pgbench.TurnSQLWithoutLog, &tps0
			}
			var t float64
			if t, err = r.runPgbench(ctx, sess, c.Clients, script, half); err != nil {
				break
			}
			*sum += t / 2
			phases = append(phases, round2(t))
		}
		if err != nil {
			r.progress("pgbench: %v", err)
			res.Extra["pgbenchError"] = err.Error()
		} else {
			res.Extra["pgbenchTpsWithoutLog"] = round2(tps0)
			res.Extra["pgbenchLogRatio"] = round2(tps / tps0)
			res.Extra["pgbenchPhasesTps"] = phases
			ratio := round2(res.Throughput / tps)
			res.PgbenchRatio = &ratio
			res.Extra["pgbenchTps"] = round2(tps)
			res.Target = "≥0.6×pgbench, 0 errors"
			res.Met = boolp(ratio >= 0.6 && res.Errors == 0)
		}
	}
	return res, nil
}

// runPgbench runs script (turn.sql or its variant) with one session per
// client at the same concurrency for d (at least 5 s) and returns its TPS.
func (r *runner) runPgbench(ctx context.Context, sess []benchSession, clients int, script string, d time.Duration) (float64, error) {
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		dir, derr := embedpg.FindBinaries()
		if derr != nil {
			return 0, errors.New("pgbench not found on PATH nor beside the PostgreSQL server binaries")
		}
		bin = filepath.Join(dir, "pgbench")
		if _, err := os.Stat(bin); err != nil {
			return 0, errors.New("pgbench not found on PATH nor in " + dir)
		}
	}
	conn, err := pgx.Connect(ctx, r.dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	// Each client's session, with the lease its space is held under: the
	// server loaded every space while the turns ran, so the lease exists
	// and turn.sql's fence checks it as CommitTurn's does. A space without
	// a lease (a server that runs without leases) is not fenced.
	if _, err := conn.Exec(ctx, `DROP TABLE IF EXISTS bench_turn_sessions;
		CREATE TABLE bench_turn_sessions (n int PRIMARY KEY, space_id uuid NOT NULL, session_id uuid NOT NULL,
			node_id uuid, epoch bigint)`); err != nil {
		return 0, err
	}
	for i, s := range sess {
		if _, err := conn.Exec(ctx, `INSERT INTO bench_turn_sessions
			SELECT $1, $2, $3, l.node_id, l.epoch FROM (SELECT) AS one LEFT JOIN space_leases l ON l.space_id = $2`,
			i, s.space, s.session); err != nil {
			return 0, err
		}
	}
	f, err := os.CreateTemp("", "turn-*.sql")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(script); err != nil {
		return 0, err
	}
	f.Close()
	secs := max(int(d.Seconds()), 5)
	r.progress("pgbench: turn.sql, %d clients, %ds", clients, secs)
	// Prepared statements, as pgx sends them (it prepares each statement
	// once per connection and caches it).
	cmd := exec.CommandContext(ctx, bin, "-n", "-M", "prepared", "-f", f.Name(), "-c", strconv.Itoa(clients), "-j", "2",
		"-T", strconv.Itoa(secs), r.dbURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %v: %s", err, lastLines(string(out), 5))
	}
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindStringSubmatch(string(out))
	if m == nil {
		return 0, fmt.Errorf("pgbench output has no tps: %s", lastLines(string(out), 5))
	}
	tps, _ := strconv.ParseFloat(m[1], 64)
	r.progress("pgbench: %.1f tps", tps)
	return tps, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func (r *runner) pgbenchOnly(ctx context.Context) (*Result, error) {
	if r.dbURL == "" {
		return nil, errors.New("pgbench needs --database-url or --spawn")
	}
	t, err := r.start(ctx, fakeModel)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, r.cfg.Clients)
	sess, err := setupSessions(ctx, fixed(a), r.cfg.Spaces, r.cfg.Clients)
	if err != nil {
		return nil, err
	}
	tps, err := r.runPgbench(ctx, sess, r.cfg.Clients, pgbench.TurnSQL, r.cfg.Duration)
	if err != nil {
		return nil, err
	}
	return &Result{Name: "pgbench", Throughput: round2(tps), Unit: "tps", Settings: map[string]any{"clients": r.cfg.Clients}}, nil
}

func (r *runner) stream(ctx context.Context) (*Result, error) {
	c := r.cfg
	t, err := r.start(ctx, mockllm.Config{TTFT: c.StreamLatency, ReplyTokens: 20}, "--mailbox-size", "4096")
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, 32)
	spaces := c.StreamClients / 10
	if spaces < 1 {
		spaces = 1
	}
	sess, err := setupSessions(ctx, fixed(a), spaces, c.StreamClients)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	r.progress("stream: connecting %d WebSocket clients", c.StreamClients)
	clients := make([]*client.Conn, c.StreamClients)
	if err := parallel(ctx, 32, c.StreamClients, func(i int) error {
		w, err := dialEnter(ctx, a, sess[i])
		clients[i] = w
		return err
	}); err != nil {
		closeAll(clients)
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer closeAll(clients)
	r.progress("stream: %d clients streaming for %s, model TTFT %s", c.StreamClients, c.Duration, c.StreamLatency)
	rec, first, gaps, over := newRecorder(), newRecorder(), newRecorder(), newRecorder()
	measureFrom := time.Now().Add(2 * time.Second) // loop's warmup: not recorded
	elapsed := loop(ctx, c.StreamClients, c.Duration, 2*time.Second, rec, func(ctx context.Context, i int) error {
		// A turn in flight when the measured time ends runs to its end
		// and counts: bounded by its own 2 minutes, not by the loop.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		start := time.Now()
		measured := !start.Before(measureFrom)
		last := time.Time{}
		for ev, err := range clients[i].Stream(tctx, "load test input") {
			if err != nil {
				return err
			}
			now := time.Now()
			switch ev.Type {
			case client.EventDelta:
				switch {
				case !measured:
				case last.IsZero():
					first.ok(now.Sub(start))
				default:
					gaps.ok(now.Sub(last))
				}
				last = now
			case client.EventEnd:
				if measured {
					over.ok(now.Sub(start) - c.StreamLatency)
				}
				return nil
			}
		}
		return errors.New("stream ended without stream.end")
	})
	res := &Result{Name: "stream", Settings: t.settings}
	res.Settings["clients"] = c.StreamClients
	s := rec.summary()
	fill(res, s, elapsed, "turns/s")
	ideal := float64(c.StreamClients) / c.StreamLatency.Seconds()
	o := over.summary()
	res.Extra = map[string]any{"clients": c.StreamClients, "idealTurnsPerS": round2(ideal),
		"fractionOfIdeal": round2(res.Throughput / ideal), "firstChunkP50Ms": first.summary().P50,
		"firstChunkP99Ms": first.summary().P99, "chunkGapP99Ms": gaps.summary().P99,
		"overheadP50Ms": o.P50, "overheadP99Ms": o.P99}
	res.ErrorSamples = rec.errMsg
	res.Target = "≥90% ideal, overhead p99 ≤50ms, 0 errors"
	res.Met = boolp(res.Throughput >= 0.9*ideal && o.P99 <= 50 && res.Errors == 0)
	r.progress("stream: %.1f turns/s (%.0f%% of ideal) overhead p99 %.1f ms errors %d", res.Throughput, 100*res.Throughput/ideal, o.P99, res.Errors)
	return res, nil
}

func (r *runner) connections(ctx context.Context) (*Result, error) {
	c := r.cfg
	t, err := r.start(ctx, fakeModel)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, 32)
	spaces := c.Conns / 100
	if spaces < 1 {
		spaces = 1
	}
	sess, err := setupSessions(ctx, fixed(a), spaces, spaces)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	// Activate every space once so the baseline holds the actors.
	for _, s := range sess {
		if _, err := a.Tree(ctx, s.space); err != nil {
			return nil, err
		}
	}
	time.Sleep(2 * time.Second)
	base, baseErr := rssKiB(t.pid)
	heap0, _ := metric(ctx, a, "go_memstats_heap_inuse_bytes")
	stack0, _ := metric(ctx, a, "go_memstats_stack_inuse_bytes")
	r.progress("connections: opening %d idle WebSockets (server RSS %d KiB)", c.Conns, base)
	clients := make([]*client.Conn, c.Conns)
	start := time.Now()
	err = parallel(ctx, 64, c.Conns, func(i int) error {
		w, err := dialEnter(ctx, a, sess[i%len(sess)])
		clients[i] = w
		return err
	})
	defer closeAll(clients)
	if err != nil {
		return nil, fmt.Errorf("after %d connections: %w", countNonNil(clients), err)
	}
	r.progress("connections: %d open in %s; settling", c.Conns, time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	after, afterErr := rssKiB(t.pid)
	heap1, _ := metric(ctx, a, "go_memstats_heap_inuse_bytes")
	stack1, _ := metric(ctx, a, "go_memstats_stack_inuse_bytes")
	// Every connection still answers.
	rec := newRecorder()
	_ = parallel(ctx, 64, c.Conns, func(i int) error {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		st := time.Now()
		if err := clients[i].Leave(lctx); err != nil {
			rec.fail(fmt.Errorf("no session.left: %w", err))
			return nil
		}
		rec.ok(time.Since(st))
		return nil
	})
	s := rec.summary()
	res := &Result{Name: "connections", Throughput: float64(s.N), Unit: "conns answering", P50Ms: s.P50, P95Ms: s.P95, P99Ms: s.P99,
		Errors: s.Error, Settings: t.settings, ErrorSamples: rec.errMsg}
	res.Settings["connections"] = c.Conns
	res.Extra = map[string]any{"connections": c.Conns,
		"heapPerConnKiB":  round2((heap1 - heap0) / 1024 / float64(c.Conns)),
		"stackPerConnKiB": round2((stack1 - stack0) / 1024 / float64(c.Conns))}
	if baseErr == nil && afterErr == nil && t.pid > 0 {
		per := float64(after-base) / float64(c.Conns)
		res.Extra["rssBaseKiB"], res.Extra["rssAfterKiB"], res.Extra["rssPerConnKiB"] = base, after, round2(per)
		res.Target = "≤8 KiB/conn, all answer"
		res.Met = boolp(per <= 8 && s.Error == 0)
		r.progress("connections: %.2f KiB per connection, %d answered, %d errors", per, s.N, s.Error)
	} else {
		res.Extra["rss"] = "unknown: pass --server-pid or --spawn"
	}
	return res, nil
}

func countNonNil(cs []*client.Conn) int {
	n := 0
	for _, c := range cs {
		if c != nil {
			n++
		}
	}
	return n
}

func (r *runner) reads(ctx context.Context) (*Result, error) {
	c := r.cfg
	model := fakeModel
	model.TTFT = c.ReadsTurnLatency
	t, err := r.startNodes(ctx, 0, model)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	p := newPool(t.urls, t.key, c.Clients+c.Readers)
	writers := c.Clients / 4
	if writers < 1 {
		writers = 1
	}
	sess, err := setupSessions(ctx, p.next, writers, writers)
	if err != nil {
		return nil, err
	}
	r.progress("reads: %d readers while %d clients run turns over %d processes, %s", c.Readers, writers, len(t.urls), c.Duration)
	fwd0, fwdErr := p.forwardedSent(ctx)
	turnRec := newRecorder()
	readRec := newRecorder()
	// Every request answered, warm-ups included, as the forwarded count
	// (read before the warm-ups) includes them.
	var answered atomic.Int64
	var wg sync.WaitGroup
	var turnElapsed time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		turnElapsed = loop(ctx, writers, c.Duration+time.Second, time.Second, turnRec, func(ctx context.Context, i int) error {
			err := turn(ctx, p.next(), sess[i], "load test input")
			if err == nil {
				answered.Add(1)
			}
			return err
		})
	}()
	read := func(ctx context.Context, i, k int) error {
		s := sess[(i+k)%len(sess)]
		a := p.next()
		var err error
		switch k % 3 {
		case 0:
			_, err = a.Tree(ctx, s.space)
		case 1:
			_, err = a.Messages(ctx, s.space, s.session, 20, 0)
		default:
			_, err = a.GetSpace(ctx, s.space)
		}
		return err
	}
	var k atomic.Int64
	kinds := []*recorder{newRecorder(), newRecorder(), newRecorder()}
	elapsed := loop(ctx, c.Readers, c.Duration, time.Second, readRec, func(ctx context.Context, i int) error {
		n := int(k.Add(1))
		st := time.Now()
		err := read(ctx, i, n)
		if err == nil {
			kinds[n%3].ok(time.Since(st))
			answered.Add(1)
		}
		return err
	})
	wg.Wait()
	res := &Result{Name: "reads", Settings: t.settings}
	res.Settings["readers"], res.Settings["turnClients"] = c.Readers, writers
	fill(res, readRec.summary(), elapsed, "reads/s")
	res.Errors += turnRec.summary().Error
	res.ErrorSamples = readRec.errMsg
	ts := turnRec.summary()
	res.Extra = map[string]any{"turnsPerS": round2(float64(turnRec.count()) / turnElapsed.Seconds()), "readers": c.Readers,
		"turnP50Ms": ts.P50, "turnP99Ms": ts.P99,
		"treeP99Ms": kinds[0].summary().P99, "messagesP99Ms": kinds[1].summary().P99, "spaceP99Ms": kinds[2].summary().P99}
	if len(t.urls) > 1 {
		res.Name = fmt.Sprintf("reads, %d processes", len(t.urls))
		res.Extra["nodes"] = len(t.urls)
		if fwd1, err := p.forwardedSent(ctx); err == nil && fwdErr == nil && answered.Load() > 0 {
			// Requests passed on to the space's owner, per read or turn
			// answered (warm-ups included on both sides).
			res.Extra["forwardedPerRequest"] = round2((fwd1 - fwd0) / float64(answered.Load()))
		}
	}
	res.Target = "p99 ≤10ms"
	res.Met = boolp(res.P99Ms <= 10 && res.Errors == 0)
	r.progress("reads: %.1f reads/s p99 %.2f ms", res.Throughput, res.P99Ms)
	return res, nil
}

func (r *runner) churn(ctx context.Context) (*Result, error) {
	c := r.cfg
	t, err := r.start(ctx, fakeModel, "--idle-ttl", c.ChurnIdleTTL.String())
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, 64)
	r.progress("churn: creating %d spaces", c.ChurnSpaces)
	ids := make([]string, c.ChurnSpaces)
	if err := parallel(ctx, 32, c.ChurnSpaces, func(i int) error {
		sp, err := a.CreateSpace(ctx, client.SpaceInput{Label: "churn"})
		if err != nil {
			return err
		}
		ids[i] = sp.ID
		if i > 0 && i%20000 == 0 {
			r.progress("churn: %d spaces created", i)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	time.Sleep(2 * time.Second)
	g0, _ := metric(ctx, a, "stello_goroutines")
	rss0, rssErr := rssKiB(t.pid)
	heap0, _ := metric(ctx, a, "go_memstats_heap_inuse_bytes")
	r.progress("churn: touching %d spaces (baseline RSS %d KiB, %v goroutines)", c.ChurnSpaces, rss0, g0)
	rec := newRecorder()
	var peak atomic.Int64
	start := time.Now()
	_ = parallel(ctx, 32, c.ChurnSpaces, func(i int) error {
		st := time.Now()
		if _, err := a.Tree(ctx, ids[i]); err != nil {
			rec.fail(err)
			return nil
		}
		rec.ok(time.Since(st))
		if i%5000 == 0 {
			if v, err := metric(ctx, a, "stello_active_actors"); err == nil && int64(v) > peak.Load() {
				peak.Store(int64(v))
			}
		}
		return nil
	})
	elapsed := time.Since(start)
	gPeak, _ := metric(ctx, a, "stello_goroutines")
	rssPeak, _ := rssKiB(t.pid)
	r.progress("churn: touched in %s; waiting for eviction", elapsed.Round(time.Millisecond))
	deadline := time.Now().Add(c.ChurnIdleTTL*4 + 60*time.Second)
	for time.Now().Before(deadline) {
		if v, err := metric(ctx, a, "stello_active_actors"); err == nil && v == 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	active, _ := metric(ctx, a, "stello_active_actors")
	time.Sleep(5 * time.Second) // let the runtime return freed memory
	g1, _ := metric(ctx, a, "stello_goroutines")
	rss1, _ := rssKiB(t.pid)
	heap1, _ := metric(ctx, a, "go_memstats_heap_inuse_bytes")
	s := rec.summary()
	res := &Result{Name: "churn", Settings: t.settings, ErrorSamples: rec.errMsg}
	res.Settings["spaces"], res.Settings["idleTTL"] = c.ChurnSpaces, c.ChurnIdleTTL.String()
	fill(res, s, elapsed, "activations/s")
	res.Extra = map[string]any{"spaces": c.ChurnSpaces, "peakActiveActors": peak.Load(), "activeAfterEviction": active,
		"goroutinesBefore": g0, "goroutinesPeak": gPeak, "goroutinesAfter": g1,
		"heapInuseBeforeKiB": int64(heap0) / 1024, "heapInuseAfterKiB": int64(heap1) / 1024}
	if rssErr == nil && t.pid > 0 {
		growth := 100 * float64(rss1-rss0) / float64(rss0)
		res.Extra["rssBeforeKiB"], res.Extra["rssPeakKiB"], res.Extra["rssAfterKiB"], res.Extra["rssGrowthPct"] = rss0, rssPeak, rss1, round2(growth)
		res.Target = "RSS after ≤ +10%, no goroutine growth"
		res.Met = boolp(growth <= 10 && g1 <= g0+5 && active == 0 && s.Error == 0)
	}
	r.progress("churn: activation p99 %.2f ms, goroutines %v → %v → %v", res.P99Ms, g0, gPeak, g1)
	return res, nil
}
