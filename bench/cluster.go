package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/pgstore/embedpg"
)

// ParseDurations parses a comma-separated list of positive durations
// ("2s,10s").
func ParseDurations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil {
			return nil, fmt.Errorf("duration list %q: %w", s, err)
		}
		if d <= 0 {
			return nil, fmt.Errorf("duration list %q: %s is not positive", s, f)
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("duration list %q is empty", s)
	}
	return out, nil
}

// ParseCounts parses a comma-separated list of counts ("0,1000,100_000"),
// returned in increasing order without repeats.
func ParseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil {
			return nil, fmt.Errorf("count list %q: %w", s, err)
		}
		if n < 0 {
			return nil, fmt.Errorf("count list %q: %d is negative", s, n)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("count list %q is empty", s)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// cpuTimes sums the CPU time of processes.
func cpuTimes(pids []int) (time.Duration, error) {
	if len(pids) == 0 {
		return 0, errors.New("no server pid")
	}
	var sum time.Duration
	for _, pid := range pids {
		d, err := cpuTime(pid)
		if err != nil {
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// forward measures what a hop through a process that does not own a space
// adds to a read of it: spaces created (and so first served, which makes
// it their owner) through process 0 are read through process 0 and
// through process 1, which forwards to process 0. Each client reads each
// space through both in turn, alternating which goes first, so drift in
// the machine's load weighs on both alike. It runs with one client, then
// with --readers.
func (r *runner) forward(ctx context.Context) (*Result, error) {
	c := r.cfg
	n := 0 // every --url
	if c.Spawn {
		n = max(c.Nodes, 2)
	}
	t, err := r.startNodes(ctx, n, fakeModel)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	if len(t.urls) < 2 {
		return nil, errors.New("the forward scenario needs two processes: --spawn, or two comma-separated base URLs in --url")
	}
	conns := max(c.Readers, 1)
	owner, other := newClient(t.urls[0], t.key, conns), newClient(t.urls[1], t.key, conns)
	ids := make([]string, max(c.Spaces, 1))
	if err := parallel(ctx, 16, len(ids), func(i int) error {
		id, _, err := createSpace(ctx, owner, fmt.Sprintf("forward %d", i))
		ids[i] = id
		return err
	}); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	var first *Result
	for _, clients := range slices.Compact([]int{1, conns}) {
		res, err := r.forwardPhase(ctx, t, owner, other, ids, clients)
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = res
		} else {
			r.extra = append(r.extra, res)
		}
	}
	return first, nil
}

func (r *runner) forwardPhase(ctx context.Context, t *target, owner, other *client.Client, ids []string, clients int) (*Result, error) {
	c := r.cfg
	o0, err := forwardedSent(ctx, owner)
	if err != nil {
		return nil, err
	}
	v0, err := forwardedSent(ctx, other)
	if err != nil {
		return nil, err
	}
	r.progress("forward: %d client(s) reading %d spaces owned by process 0 through it and through process 1, %s", clients, len(ids), c.Duration)
	type side struct {
		c   *client.Client
		rec *recorder
	}
	direct, via := side{owner, newRecorder()}, side{other, newRecorder()}
	pairs := newRecorder()
	const warmup = time.Second
	measureFrom := time.Now().Add(warmup)
	var k atomic.Int64
	elapsed := loop(ctx, clients, c.Duration, warmup, pairs, func(ctx context.Context, _ int) error {
		n := k.Add(1)
		id := ids[int(n)%len(ids)]
		order := [2]side{direct, via}
		if n%2 == 1 {
			order = [2]side{via, direct}
		}
		for _, s := range order {
			st := time.Now()
			if _, err := s.c.GetSpace(ctx, id); err != nil {
				return err
			}
			if !st.Before(measureFrom) {
				s.rec.ok(time.Since(st))
			}
		}
		return nil
	})
	o1, err := forwardedSent(ctx, owner)
	if err != nil {
		return nil, err
	}
	v1, err := forwardedSent(ctx, other)
	if err != nil {
		return nil, err
	}
	ds, vs := direct.rec.summary(), via.rec.summary()
	name := "forward, 1 client"
	if clients > 1 {
		name = fmt.Sprintf("forward, %d clients", clients)
	}
	res := &Result{Name: name, Settings: map[string]any{}}
	for k, v := range t.settings {
		res.Settings[k] = v
	}
	delete(res.Settings, "spread")
	res.Settings["clients"], res.Settings["spaces"], res.Settings["read"] = clients, len(ids), "GET /spaces/{id}"
	fill(res, vs, elapsed, "forwarded reads/s")
	res.Errors = pairs.summary().Error
	res.ErrorSamples = pairs.errMsg
	// The public surface says who served what: process 0 forwarded
	// nothing, process 1 forwarded every read it was sent (warm-up
	// included), so process 0 owns the spaces.
	verified := o1 == o0 && v1-v0 >= float64(vs.N)
	res.Extra = map[string]any{"clients": clients, "spaces": len(ids), "nodes": len(t.urls),
		"directReadsPerS": round2(float64(ds.N) / elapsed.Seconds()),
		"directP50Ms":     ds.P50, "directP95Ms": ds.P95, "directP99Ms": ds.P99,
		"forwardedP50Ms": vs.P50, "forwardedP95Ms": vs.P95, "forwardedP99Ms": vs.P99,
		"addedP50Ms": round3(vs.P50 - ds.P50), "addedP99Ms": round3(vs.P99 - ds.P99),
		"ownerForwarded": o1 - o0, "otherForwarded": v1 - v0, "ownerVerified": verified}
	if clients == 1 {
		res.Target = "hop adds p50 ≤1ms"
		res.Met = boolp(vs.P50-ds.P50 <= 1 && res.Errors == 0 && verified)
	}
	r.progress("%s: direct p50 %.3f p99 %.3f ms, through process 1 p50 %.3f p99 %.3f ms (owner verified: %v)",
		name, ds.P50, ds.P99, vs.P50, vs.P99, verified)
	return res, nil
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// failoverTiming is one fail-over: from the signal to the first turn on
// the victim's space answered 200 through another process, among turns
// sent once the victim was gone (SIGKILL: reaped; SIGTERM: its listener
// refused connections).
type failoverTiming struct {
	took     time.Duration
	closed   time.Duration // SIGTERM: until the listener refused connections
	exited   time.Duration // until the process was reaped
	attempts int           // turns the probe sent after the signal
}

// failover kills (SIGKILL) and stops (SIGTERM) the owner of a space,
// --failover-rounds times each, at each of --failover-ttls, and reports
// how long its space was without an answer through another process.
func (r *runner) failover(ctx context.Context) (*Result, error) {
	var lines []*Result
	for _, ttl := range r.cfg.FailoverTTLs {
		kill, term, err := r.failoverAt(ctx, ttl)
		if err != nil {
			return nil, fmt.Errorf("--lease-ttl %s: %w", ttl, err)
		}
		lines = append(lines, kill, term)
	}
	r.extra = append(r.extra, lines[1:]...)
	return lines[0], nil
}

func (r *runner) failoverAt(ctx context.Context, ttl time.Duration) (*Result, *Result, error) {
	c := r.cfg
	n := max(c.Nodes, 2)
	t, err := r.startNodes(ctx, n, fakeModel, "--lease-ttl", ttl.String())
	if err != nil {
		return nil, nil, err
	}
	defer t.stop()
	r.progress("failover: %d processes, --lease-ttl %s, %d rounds of SIGKILL and SIGTERM", n, ttl, c.FailoverRounds)
	kinds := []struct {
		sig    syscall.Signal
		name   string
		target time.Duration
		rec    *recorder
		ms     []float64
		closed []float64
		exited []float64
		tries  []int
	}{
		{sig: syscall.SIGKILL, name: "SIGKILL", target: ttl + time.Second, rec: newRecorder()},
		{sig: syscall.SIGTERM, name: "SIGTERM", target: time.Second, rec: newRecorder()},
	}
	for round := 1; round <= c.FailoverRounds && ctx.Err() == nil; round++ {
		for i := range kinds {
			k := &kinds[i]
			for len(t.procs) < n {
				p, err := t.spawn(ctx)
				if err != nil {
					return nil, nil, err
				}
				t.procs = append(t.procs, p)
			}
			t.refresh()
			ft, err := r.failoverRound(ctx, t, k.sig, ttl)
			t.procs = slices.DeleteFunc(t.procs, func(p *spawned) bool {
				select {
				case <-p.exited:
					return true
				default:
					return false
				}
			})
			t.refresh()
			if err != nil {
				r.progress("failover %s round %d: %v", k.name, round, err)
				k.rec.fail(err)
				continue
			}
			k.rec.ok(ft.took)
			k.ms = append(k.ms, ms(ft.took))
			k.tries = append(k.tries, ft.attempts)
			k.exited = append(k.exited, ms(ft.exited))
			if k.sig == syscall.SIGTERM {
				k.closed = append(k.closed, ms(ft.closed))
			}
			r.progress("failover %s round %d (--lease-ttl %s): a turn through another process answered %v after the signal",
				k.name, round, ttl, ft.took.Round(time.Millisecond))
		}
	}
	var out [2]*Result
	for i, k := range kinds {
		s := k.rec.summary()
		res := &Result{Name: fmt.Sprintf("failover %s, --lease-ttl %s", k.name, ttl), Settings: map[string]any{}}
		for key, v := range t.settings {
			res.Settings[key] = v
		}
		delete(res.Settings, "spread")
		res.Settings["leaseTTL"], res.Settings["rounds"], res.Settings["nodes"] = ttl.String(), c.FailoverRounds, n
		res.Throughput, res.Unit = float64(s.N), "fail-overs"
		res.P50Ms, res.P95Ms, res.P99Ms, res.Errors = s.P50, s.P95, s.P99, s.Error
		res.ErrorSamples = k.rec.errMsg
		res.Extra = map[string]any{"leaseTTL": ttl.String(), "failoverMs": k.ms, "maxMs": s.Max, "exitedMs": k.exited,
			"probeTurns": k.tries}
		if k.sig == syscall.SIGTERM {
			res.Extra["listenerClosedMs"] = k.closed
		}
		res.Target = fmt.Sprintf("≤%s", k.target)
		res.Met = boolp(s.N > 0 && s.Error == 0 && s.Max <= ms(k.target))
		out[i] = res
	}
	return out[0], out[1], nil
}

// failoverRound makes process 0 the owner of a new space, runs turns on it
// through process 1 (forwarded to process 0) one after another, signals
// process 0, and times the first turn answered through process 1 after
// that.
func (r *runner) failoverRound(ctx context.Context, t *target, sig syscall.Signal, ttl time.Duration) (failoverTiming, error) {
	victim := t.procs[0]
	cv, co := newClient(victim.url, t.key, 2), newClient(t.procs[1].url, t.key, 2)
	spaceID, root, err := createSpace(ctx, cv, "failover")
	if err != nil {
		return failoverTiming{}, fmt.Errorf("setup: %w", err)
	}
	s := benchSession{spaceID, root}
	if err := turn(ctx, cv, s, "a turn through the owner"); err != nil {
		return failoverTiming{}, fmt.Errorf("setup: %w", err)
	}
	f0, err := forwardedSent(ctx, co)
	if err != nil {
		return failoverTiming{}, err
	}
	if err := turn(ctx, co, s, "a turn through another process"); err != nil {
		return failoverTiming{}, fmt.Errorf("setup: %w", err)
	}
	if f1, err := forwardedSent(ctx, co); err != nil || f1 <= f0 {
		return failoverTiming{}, fmt.Errorf("process 1 did not forward the turn (forwarded %v → %v, %v): process 0 does not own the space", f0, f1, err)
	}

	// The probe: one turn after another through process 1, each bounded
	// by 30 s, 20 ms apart after a failure (Retry-After is not honoured:
	// the figure is the server's, not a client's back-off).
	type answer struct{ sent, got time.Time }
	var (
		mu       sync.Mutex
		oks      []answer
		attempts []time.Time
	)
	pctx, cancel := context.WithTimeout(ctx, 3*ttl+time.Minute)
	defer cancel()
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		defer func() {
			if v := recover(); v != nil {
				r.progress("failover probe: %v", (*guard.Guard)(nil).Caught("bench.failover.probe", v))
			}
		}()
		for pctx.Err() == nil {
			sent := time.Now()
			tctx, tcancel := context.WithTimeout(pctx, 30*time.Second)
			err := turn(tctx, co, s, "probe")
			tcancel()
			got := time.Now()
			mu.Lock()
			attempts = append(attempts, sent)
			if err == nil {
				oks = append(oks, answer{sent, got})
			}
			mu.Unlock()
			if err != nil {
				select {
				case <-pctx.Done():
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}()
	stopProbe := func() {
		cancel()
		<-probeDone
	}
	// Let the probe run through the owner for a moment.
	select {
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
		stopProbe()
		return failoverTiming{}, ctx.Err()
	}
	var ft failoverTiming
	signalled := time.Now()
	var after time.Time // turns sent from then on cannot reach the victim
	switch sig {
	case syscall.SIGKILL:
		victim.kill()
		after = time.Now()
		ft.exited = after.Sub(signalled)
	default:
		if err := victim.cmd.Process.Signal(sig); err != nil {
			stopProbe()
			return failoverTiming{}, err
		}
		after = waitRefused(pctx, victim.addr())
		ft.closed = after.Sub(signalled)
	}
	var first time.Time
	for pctx.Err() == nil && (first.IsZero() || ft.exited == 0) {
		if ft.exited == 0 {
			select {
			case <-victim.exited:
				ft.exited = time.Since(signalled)
			default:
			}
		}
		if first.IsZero() {
			mu.Lock()
			for _, a := range oks {
				if !a.sent.Before(after) && (first.IsZero() || a.got.Before(first)) {
					first = a.got
				}
			}
			mu.Unlock()
		}
		select {
		case <-pctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
	stopProbe()
	mu.Lock()
	for _, a := range attempts {
		if !a.Before(signalled) {
			ft.attempts++
		}
	}
	mu.Unlock()
	if ft.exited == 0 {
		victim.kill()
	}
	if first.IsZero() {
		return ft, fmt.Errorf("no turn answered through another process within %v of the %v", 3*ttl+time.Minute, sig)
	}
	ft.took = first.Sub(signalled)
	return ft, nil
}

// waitRefused polls addr until a connection to it is refused and returns
// when that was seen.
func waitRefused(ctx context.Context, addr string) time.Time {
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return time.Now()
		}
		_ = conn.Close()
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Millisecond):
		}
	}
	return time.Now()
}

// leases counts the database statements of an idle process holding K
// active spaces (K from --lease-spaces, increasing), each space activated
// once through the API and kept active (--idle-ttl 24h): the cost of
// keeping leases should not depend on K.
func (r *runner) leases(ctx context.Context) (*Result, error) {
	c := r.cfg
	t, err := r.start(ctx, fakeModel, "--idle-ttl", "24h")
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, 64)
	obs, err := pgx.Connect(ctx, r.dbURL)
	if err != nil {
		return nil, err
	}
	defer obs.Close(context.Background())
	pgss := true
	if _, err := obs.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		pgss = false
	} else if _, err := obs.Exec(ctx, "SELECT 1 FROM pg_stat_statements LIMIT 1"); err != nil {
		pgss = false
	}
	if !pgss {
		r.progress("leases: pg_stat_statements is not loaded; counting transactions (pg_stat_database) only")
	}
	counts := slices.Clone(c.LeaseSpaces)
	slices.Sort(counts)
	var lines []*Result
	active := 0
	for _, k := range counts {
		if ctx.Err() != nil {
			break
		}
		var actRate float64
		if k > active {
			r.progress("leases: creating and activating %d spaces (to %d)", k-active, k)
			st := time.Now()
			base := active
			if err := parallel(ctx, 32, k-active, func(i int) error {
				if _, _, err := createSpace(ctx, a, fmt.Sprintf("lease %d", base+i)); err != nil {
					return err
				}
				if i > 0 && i%10000 == 0 {
					r.progress("leases: %d spaces activated", base+i)
				}
				return nil
			}); err != nil {
				return nil, fmt.Errorf("activate: %w", err)
			}
			actRate = round2(float64(k-active) / time.Since(st).Seconds())
			active = k
		}
		res, err := r.leaseWindow(ctx, t, a, obs, pgss, k)
		if err != nil {
			return nil, err
		}
		if actRate > 0 {
			res.Extra["createdAndActivatedPerS"] = actRate
		}
		lines = append(lines, res)
	}
	if len(lines) == 0 {
		return nil, ctx.Err()
	}
	if len(lines) > 1 {
		// Independent of the number of spaces: the largest count's rate
		// within 10 % of the smallest's, plus one statement per window.
		lo, hi := lines[0], lines[len(lines)-1]
		slack := 1 / c.Duration.Seconds()
		hi.Target = fmt.Sprintf("≤1.1× the rate at %v spaces", lo.Extra["activeSpaces"])
		hi.Met = boolp(hi.Throughput <= 1.1*lo.Throughput+slack)
	}
	r.extra = append(r.extra, lines[1:]...)
	return lines[0], nil
}

// dbCounters are the database's own counters at one moment.
type dbCounters struct {
	xacts   int64            // xact_commit + xact_rollback of the database
	byQuery map[int64]int64  // pg_stat_statements calls by queryid
	text    map[int64]string // and each statement's text
}

func (d dbCounters) stmts() int64 {
	var n int64
	for _, v := range d.byQuery {
		n += v
	}
	return n
}

// snapshotCounters reads the counters: one transaction for
// pg_stat_database, one more for pg_stat_statements (whose own queries,
// the bench's, are left out of its figures).
func snapshotCounters(ctx context.Context, obs *pgx.Conn, pgss bool) (dbCounters, error) {
	d := dbCounters{byQuery: map[int64]int64{}, text: map[int64]string{}}
	if err := obs.QueryRow(ctx, `SELECT xact_commit + xact_rollback FROM pg_stat_database
		WHERE datname = current_database()`).Scan(&d.xacts); err != nil {
		return d, fmt.Errorf("pg_stat_database: %w", err)
	}
	if !pgss {
		return d, nil
	}
	rows, err := obs.Query(ctx, `SELECT queryid, sum(calls)::bigint, min(query) FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND query NOT LIKE '%pg_stat_%' AND queryid IS NOT NULL GROUP BY queryid`)
	if err != nil {
		return d, fmt.Errorf("pg_stat_statements: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, calls int64
		var q string
		if err := rows.Scan(&id, &calls, &q); err != nil {
			return d, err
		}
		d.byQuery[id], d.text[id] = calls, q
	}
	return d, rows.Err()
}

// ownXacts is how many transactions one snapshotCounters runs.
func ownXacts(pgss bool) int64 {
	if pgss {
		return 2
	}
	return 1
}

// leaseWindow waits for the process to be idle, then counts the
// database's statements and transactions over --duration.
func (r *runner) leaseWindow(ctx context.Context, t *target, a *client.Client, obs *pgx.Conn, pgss bool, k int) (*Result, error) {
	c := r.cfg
	r.progress("leases: %d active spaces; settling %s, then counting for %s", k, c.LeaseSettle, c.Duration)
	if err := sleepCtx(ctx, c.LeaseSettle); err != nil {
		return nil, err
	}
	actors, _ := metric(ctx, a, "stello_active_actors")
	goroutines, _ := metric(ctx, a, "stello_goroutines")
	held, heldErr := r.leasesHeld(ctx, t.url)
	// The window counts the renewal cost of k spaces only if k are active
	// and leased: a run whose activations failed must not report a flat
	// rate as met.
	if int(actors) != k || (heldErr == nil && held != k) {
		return nil, fmt.Errorf("leases: %v active actors and %v leases held, want %d of each", actors, held, k)
	}
	s0, err := snapshotCounters(ctx, obs, pgss)
	if err != nil {
		return nil, err
	}
	cpu0, cpuErr := cpuTime(t.pid)
	start := time.Now()
	if err := sleepCtx(ctx, c.Duration); err != nil {
		return nil, err
	}
	s1, err := snapshotCounters(ctx, obs, pgss)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	cpu1, _ := cpuTime(t.pid)
	rss, _ := rssKiB(t.pid)
	xacts := max(s1.xacts-s0.xacts-ownXacts(pgss), 0)
	res := &Result{Name: fmt.Sprintf("leases, %d active spaces", k), Settings: map[string]any{}}
	for key, v := range t.settings {
		res.Settings[key] = v
	}
	res.Settings["windowS"], res.Settings["idleTTL"] = round2(elapsed.Seconds()), "24h"
	res.Extra = map[string]any{"activeSpaces": k, "activeActors": actors, "goroutines": goroutines,
		"transactionsPerS": round3(float64(xacts) / elapsed.Seconds()), "windowS": round2(elapsed.Seconds()),
		"serverRssKiB": rss}
	if heldErr == nil {
		res.Extra["leasesHeld"] = held
	} else {
		res.Extra["leasesHeldError"] = heldErr.Error()
	}
	if cpuErr == nil {
		res.Extra["serverCpuPct"] = round2(100 * (cpu1 - cpu0).Seconds() / elapsed.Seconds())
	}
	if pgss {
		stmts := s1.stmts() - s0.stmts()
		res.Throughput, res.Unit = round3(float64(stmts)/elapsed.Seconds()), "stmts/s"
		res.Extra["statements"] = stmts
		res.Extra["byStatement"] = statementDeltas(s0, s1)
		res.Extra["counter"] = "pg_stat_statements calls"
	} else {
		res.Throughput, res.Unit = round3(float64(xacts)/elapsed.Seconds()), "xacts/s"
		res.Extra["counter"] = "pg_stat_database xact_commit + xact_rollback (autovacuum included)"
	}
	res.Extra["transactions"] = xacts
	r.progress("leases: %d active spaces (%v actors, %v leases): %.3f %s, %.3f transactions/s, server CPU %v%%",
		k, actors, res.Extra["leasesHeld"], res.Throughput, res.Unit, res.Extra["transactionsPerS"], res.Extra["serverCpuPct"])
	return res, nil
}

// statementDeltas lists the statements run between two snapshots, most
// frequent first, as "calls × text" with the text shortened.
func statementDeltas(s0, s1 dbCounters) []string {
	type row struct {
		n int64
		q string
	}
	var rows []row
	for id, v := range s1.byQuery {
		if d := v - s0.byQuery[id]; d > 0 {
			rows = append(rows, row{d, strings.Join(strings.Fields(s1.text[id]), " ")})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].n > rows[j].n || (rows[i].n == rows[j].n && rows[i].q < rows[j].q) })
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		q := r.q
		if len(q) > 90 {
			q = q[:90] + "…"
		}
		out = append(out, fmt.Sprintf("%d × %s", r.n, q))
	}
	return out
}

// leasesHeld is how many space leases the process at base holds, from
// `stello cluster status --json`.
func (r *runner) leasesHeld(ctx context.Context, base string) (int, error) {
	out, err := exec.CommandContext(ctx, r.exe, "cluster", "status", "--json", "--database-url", r.dbURL).Output()
	if err != nil {
		return 0, fmt.Errorf("cluster status: %w", err)
	}
	var nodes []struct {
		AdvertiseURL string `json:"advertiseUrl"`
		Alive        bool   `json:"alive"`
		Spaces       int    `json:"spaces"`
	}
	if err := json.Unmarshal(out, &nodes); err != nil {
		return 0, fmt.Errorf("cluster status output: %w", err)
	}
	for _, n := range nodes {
		if strings.TrimRight(n.AdvertiseURL, "/") == base && n.Alive {
			return n.Spaces, nil
		}
	}
	return 0, fmt.Errorf("no live process advertises %s", base)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// preloadStatStatements restarts the bench's own embedded database with
// pg_stat_statements loaded, so the leases scenario can count statements.
// An error with fatal false left the database as it was; fatal means the
// restart failed.
func (r *runner) preloadStatStatements(ctx context.Context) (fatal bool, err error) {
	if r.tmp == "" {
		return false, errors.New("the database directory is not the bench's own (--bench-data-dir): its settings are left alone")
	}
	conn, err := pgx.Connect(ctx, r.dbURL)
	if err != nil {
		return false, err
	}
	var libdir string
	err = conn.QueryRow(ctx, "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").Scan(&libdir)
	if err == nil {
		if _, serr := os.Stat(filepath.Join(libdir, "pg_stat_statements.so")); serr != nil {
			err = serr
		}
	}
	if err == nil {
		_, err = conn.Exec(ctx, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
	}
	_ = conn.Close(ctx)
	if err != nil {
		return false, err
	}
	r.progress("restarting the embedded PostgreSQL with pg_stat_statements")
	if err := r.pg.Stop(ctx); err != nil {
		return true, fmt.Errorf("stop the embedded database: %w", err)
	}
	pg, err := embedpg.Start(ctx, embedpg.Options{DataDir: r.pgDir, Fsync: true})
	if err != nil {
		r.pg = nil
		return true, fmt.Errorf("restart the embedded database: %w", err)
	}
	r.pg, r.dbURL = pg, pg.URL()
	return false, nil
}
