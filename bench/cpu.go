package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/client"
)

// cpuTime is a process's CPU time, user and system: its threads' on-CPU
// time (schedTime), or else utime+stime from /proc/<pid>/stat.
func cpuTime(pid int) (time.Duration, error) {
	if d, ok := schedTime(pid); ok {
		return d, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after the
	// closing parenthesis are fixed: utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc stat times")
	}
	// USER_HZ is 100 on every Linux the harness runs on.
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// schedTime is the time the threads of a process have spent on a CPU, in
// nanoseconds (the first field of /proc/<pid>/task/<tid>/schedstat, user
// and system time alike): /proc/<pid>/stat counts in 10 ms ticks, too
// coarse for a phase of a few hundred milliseconds. ok is false when the
// kernel does not keep it. A thread that exits takes its time with it; a
// Go server keeps its threads.
func schedTime(pid int) (time.Duration, bool) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return 0, false
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile
			}
			return 0, false
		}
		f := strings.Fields(string(b))
		if len(f) < 1 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		sum += ns
	}
	return time.Duration(sum), true
}

// statFields are the fields of /proc/<pid>/stat after the command name:
// f[1] is the parent pid, f[11]..f[14] utime, stime, cutime and cstime.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return nil, errors.New("short /proc stat")
	}
	return f, nil
}

// treeCPU is the CPU time of a process, of its live children and of the
// children it has reaped: for a postmaster, the whole database server
// (backends that have exited are counted through the postmaster's cutime
// and cstime).
func treeCPU(pid int) (time.Duration, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	ticks := int64(0)
	for _, k := range []int{11, 12, 13, 14} {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += v
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	parent := strconv.Itoa(pid)
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		cf, err := statFields(child)
		if err != nil || cf[1] != parent {
			continue
		}
		for _, k := range []int{11, 12} {
			v, _ := strconv.ParseInt(cf[k], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// turnMode is how a cpu phase runs its turns.
type turnMode string

const (
	modeREST turnMode = "rest"
	modeSSE  turnMode = "sse"
	modeWS   turnMode = "websocket"
)

// cpuPhase is one measured phase of the cpu scenario.
type cpuPhase struct {
	Name          string  `json:"name"`
	Mode          string  `json:"mode"`
	Turns         int     `json:"turns"`
	HistoryTurns  string  `json:"historyTurns"`
	CPUMs         float64 `json:"cpuMs"`
	CPUPerTurnUs  float64 `json:"cpuPerTurnUs"`
	TurnsPerS     float64 `json:"turnsPerS"`
	Errors        int     `json:"errors"`
	RequestKiBAvg float64 `json:"requestKiBAvg,omitempty"`
}

// cpuScenario measures the server's own CPU per turn through the HTTP mock
// model: 512 sessions at 10 and about 20 turns of history (REST, SSE,
// WebSocket), and 32 sessions at 10 and at 200 turns.
func (r *runner) cpuScenario(ctx context.Context) (*Result, error) {
	if !r.cfg.Spawn && r.cfg.ServerPID == 0 {
		return nil, errors.New("cpu needs --spawn or --server-pid")
	}
	// The HTTP mock by default; with --model fake the same phases on the
	// in-process model show what a turn costs without a model client.
	model := mockllm.Config{ReplyTokens: 20}
	if r.cfg.Model == "fake" {
		model = fakeModel
	}
	saved := r.cfg.Model
	if saved == "auto" {
		r.cfg.Model = "mock"
	}
	t, err := r.start(ctx, model)
	r.cfg.Model = saved
	if err != nil {
		return nil, err
	}
	defer t.stop()
	c := r.cfg
	short, long := c.CPUSessions, c.CPULongSessions
	a := newClient(t.url, t.key, c.Clients)
	sess, err := setupSessions(ctx, fixed(a), c.Spaces, short)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	hist := make([]int, len(sess))
	var phases []cpuPhase
	var failMu sync.Mutex
	var failures []string

	// rounds runs n turns on every session of set, clients at a time;
	// a session's turns are serial.
	rounds := func(set []benchSession, h []int, n int, mode turnMode) (int, int, time.Duration) {
		ok, bad := 0, 0
		start := time.Now()
		type res struct{ ok, bad int }
		results := make(chan res, c.Clients)
		per := (len(set) + c.Clients - 1) / c.Clients
		workers := 0
		for w := 0; w*per < len(set); w++ {
			workers++
			lo, hi := w*per, min((w+1)*per, len(set))
			go func() {
				var r res
				defer func() { results <- r }()
				var ws map[string]*client.Conn
				defer func() {
					for _, c := range ws {
						_ = c.Close()
					}
				}()
				for k := 0; k < n && ctx.Err() == nil; k++ {
					for i := lo; i < hi; i++ {
						var err error
						switch mode {
						case modeREST:
							err = turn(ctx, a, set[i], "load test input")
						case modeSSE:
							err = sseTurn(ctx, a, set[i], "load test input")
						case modeWS:
							if ws == nil {
								ws = map[string]*client.Conn{}
							}
							err = wsTurn(ctx, a, ws, set[i])
						}
						if err != nil {
							r.bad++
							failMu.Lock()
							if len(failures) < 5 {
								failures = append(failures, err.Error())
							}
							failMu.Unlock()
							continue
						}
						r.ok++
						h[i]++
					}
				}
			}()
		}
		for ; workers > 0; workers-- {
			x := <-results
			ok += x.ok
			bad += x.bad
		}
		return ok, bad, time.Since(start)
	}
	histRange := func(h []int, n int) string {
		lo, hi := h[0], h[0]
		for _, v := range h {
			lo, hi = min(lo, v), max(hi, v)
		}
		return fmt.Sprintf("%d–%d", lo, hi+n-1)
	}
	// run runs n rounds on set and returns the server CPU they took.
	type tally struct {
		ok, bad int
		cpu, el time.Duration
	}
	run := func(set []benchSession, h []int, n int, mode turnMode) (tally, error) {
		before, err := cpuTime(t.pid)
		if err != nil {
			return tally{}, err
		}
		ok, bad, el := rounds(set, h, n, mode)
		after, err := cpuTime(t.pid)
		if err != nil {
			return tally{}, err
		}
		return tally{ok: ok, bad: bad, cpu: after - before, el: el}, nil
	}
	record := func(name string, mode turnMode, hr string, x tally) {
		p := cpuPhase{Name: name, Mode: string(mode), Turns: x.ok, HistoryTurns: hr, CPUMs: float64(x.cpu.Milliseconds()),
			TurnsPerS: round2(float64(x.ok) / x.el.Seconds()), Errors: x.bad}
		if x.ok > 0 {
			p.CPUPerTurnUs = round2(float64(x.cpu.Microseconds()) / float64(x.ok))
		}
		r.progress("cpu: %s: %d turns (history %s turns), %.0f µs CPU/turn, %.0f turns/s, %d errors",
			name, x.ok, hr, p.CPUPerTurnUs, p.TurnsPerS, x.bad)
		phases = append(phases, p)
	}
	measure := func(name string, set []benchSession, h []int, n int, mode turnMode) error {
		hr := histRange(h, n)
		x, err := run(set, h, n, mode)
		if err != nil {
			return err
		}
		record(name, mode, hr, x)
		return nil
	}
	fillTo := func(set []benchSession, h []int, target int) {
		if n := target - h[0]; n > 0 {
			r.progress("cpu: growing %d sessions to %d turns", len(set), target)
			_, bad, _ := rounds(set, h, n, modeREST)
			if bad > 0 {
				r.progress("cpu: %d turns failed while growing", bad)
			}
		}
	}
	fillTo(sess, hist, 10)
	if err := measure("history10", sess, hist, 2, modeREST); err != nil {
		return nil, err
	}
	fillTo(sess, hist, 20)
	for _, m := range []turnMode{modeREST, modeSSE, modeWS} {
		if err := measure("history20-"+string(m), sess, hist, 2, m); err != nil {
			return nil, err
		}
	}
	// The growth figure compares two sets of sessions alike but for
	// their history, 10 and 200 turns, at the same concurrency, measured
	// in alternating blocks of rounds: drift of the machine and the
	// collector's cycles fall on both alike.
	shortSet, err := setupSessions(ctx, fixed(a), long, long)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	longSet, err := setupSessions(ctx, fixed(a), long, long)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	shortHist, longHist := make([]int, long), make([]int, long)
	fillTo(shortSet, shortHist, 10)
	fillTo(longSet, longHist, 200)
	const block = 4
	hr10, hr200 := histRange(shortHist, c.CPULongRounds), histRange(longHist, c.CPULongRounds)
	var at10, at200 tally
	add := func(into *tally, x tally) {
		into.ok, into.bad, into.cpu, into.el = into.ok+x.ok, into.bad+x.bad, into.cpu+x.cpu, into.el+x.el
	}
	for done := 0; done < c.CPULongRounds; done += block {
		n := min(block, c.CPULongRounds-done)
		x, err := run(shortSet, shortHist, n, modeREST)
		if err != nil {
			return nil, err
		}
		add(&at10, x)
		if x, err = run(longSet, longHist, n, modeREST); err != nil {
			return nil, err
		}
		add(&at200, x)
	}
	record("long-history10", modeREST, hr10, at10)
	record("history200", modeREST, hr200, at200)

	res := &Result{Name: "cpu", Settings: t.settings, Unit: "µs CPU/turn"}
	res.Settings["sessions"], res.Settings["longSessions"], res.Settings["clients"] = short, long, c.Clients
	res.Settings["inputBytes"], res.Settings["replyWords"] = len("load test input"), model.ReplyTokens
	byName := map[string]cpuPhase{}
	errs := 0
	for _, p := range phases {
		byName[p.Name] = p
		errs += p.Errors
	}
	res.Throughput = byName["history20-rest"].CPUPerTurnUs
	res.Errors = errs
	growth := 0.0
	if h10 := byName["long-history10"].CPUPerTurnUs; h10 > 0 {
		growth = round2(byName["history200"].CPUPerTurnUs / h10)
	}
	res.Extra = map[string]any{"phases": phases, "growth200over10": growth,
		"restUs": byName["history20-rest"].CPUPerTurnUs, "sseUs": byName["history20-sse"].CPUPerTurnUs,
		"wsUs": byName["history20-websocket"].CPUPerTurnUs}
	if len(failures) > 0 {
		res.ErrorSamples = map[string]int{}
		for _, f := range failures {
			res.ErrorSamples[f]++
		}
	}
	res.Target = "rest ≤250µs, sse/ws ≤300µs, 200÷10 ≤1.5"
	res.Met = boolp(res.Throughput <= 250 && byName["history20-sse"].CPUPerTurnUs <= 300 &&
		byName["history20-websocket"].CPUPerTurnUs <= 300 && growth <= 1.5 && errs == 0)
	return res, nil
}

// wsTurn runs one streamed turn over a WebSocket to the session's space,
// kept open per session in conns.
func wsTurn(ctx context.Context, c *client.Client, conns map[string]*client.Conn, s benchSession) error {
	w := conns[s.session]
	if w == nil {
		var err error
		if w, err = dialEnter(ctx, c, s); err != nil {
			return err
		}
		conns[s.session] = w
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for ev, err := range w.Stream(ctx, "load test input") {
		if err != nil {
			return err
		}
		if ev.Type == client.EventEnd {
			return nil
		}
	}
	return errors.New("stream ended without stream.end")
}

// footprint measures a just-started server's idle RSS and how long 1,000
// spaces take to create with 16 concurrent clients.
func (r *runner) footprint(ctx context.Context) (*Result, error) {
	t, err := r.start(ctx, fakeModel)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, 16)
	time.Sleep(2 * time.Second)
	idle, rssErr := rssKiB(t.pid)
	anon, _ := statusKiB(t.pid, "RssAnon")
	file, _ := statusKiB(t.pid, "RssFile")
	heap, _ := metric(ctx, a, "go_memstats_heap_inuse_bytes")
	stack, _ := metric(ctx, a, "go_memstats_stack_inuse_bytes")
	// Sixteen concurrent creates first, so that the connection pools (the
	// clients' HTTP connections, the server's database connections with
	// their prepared statements) and the user's key are warm, as in a
	// running deployment that has seen this concurrency before.
	if err := parallel(ctx, 16, 16, func(i int) error {
		_, err := a.CreateSpace(ctx, client.SpaceInput{Label: fmt.Sprintf("warm %d", i)})
		return err
	}); err != nil {
		return nil, err
	}
	rec := newRecorder()
	// CPU time per create, less noisy than the elapsed time on a shared
	// machine: the server's, the bench's own (the 16 clients) and, when the
	// bench runs the database, the database server's.
	srv0, srvErr := cpuTime(t.pid)
	own0, _ := cpuTime(os.Getpid())
	var db0 time.Duration
	dbErr := errors.New("database not run by the bench")
	if r.pg != nil {
		db0, dbErr = treeCPU(r.pg.Pid())
	}
	start := time.Now()
	err = parallel(ctx, 16, 1000, func(i int) error {
		st := time.Now()
		if _, err := a.CreateSpace(ctx, client.SpaceInput{Label: fmt.Sprintf("fp %d", i)}); err != nil {
			rec.fail(err)
			return err
		}
		rec.ok(time.Since(st))
		return nil
	})
	el := time.Since(start)
	if err != nil {
		return nil, err
	}
	srv1, srvErr1 := cpuTime(t.pid)
	own1, _ := cpuTime(os.Getpid())
	var db1 time.Duration
	if dbErr == nil {
		db1, dbErr = treeCPU(r.pg.Pid())
	}
	after, _ := rssKiB(t.pid)
	res := &Result{Name: "footprint", Settings: t.settings, ErrorSamples: rec.errMsg}
	fill(res, rec.summary(), el, "spaces/s")
	res.Extra = map[string]any{"create1000S": round2(el.Seconds()),
		"benchCpuPerCreateUs": round2(float64((own1 - own0).Microseconds()) / 1000)}
	if srvErr == nil && srvErr1 == nil && t.pid > 0 {
		res.Extra["serverCpuPerCreateUs"] = round2(float64((srv1 - srv0).Microseconds()) / 1000)
	}
	if dbErr == nil {
		res.Extra["dbCpuPerCreateUs"] = round2(float64((db1 - db0).Microseconds()) / 1000)
	}
	if rssErr == nil && t.pid > 0 {
		res.Extra["idleRssKiB"], res.Extra["rssAfterCreateKiB"] = idle, after
		res.Extra["idleRssAnonKiB"], res.Extra["idleRssFileKiB"] = anon, file
		res.Extra["idleHeapInuseKiB"], res.Extra["idleStackInuseKiB"] = int64(heap)/1024, int64(stack)/1024
	}
	r.progress("footprint: idle RSS %d KiB, 1,000 spaces in %.2f s (CPU per create: server %v, database %v, bench %v µs)",
		idle, el.Seconds(), res.Extra["serverCpuPerCreateUs"], res.Extra["dbCpuPerCreateUs"], res.Extra["benchCpuPerCreateUs"])
	return res, nil
}
