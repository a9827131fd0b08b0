package bench_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench"
	"github.com/stellohq/stello/bench/pgbench"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/pgstore"
)

// slowStack is a server whose model streams 24 words, one every 5 ms, so
// resume clients drop their streams mid-flight.
func slowStack(t *testing.T) (*testutil.Stack, string) {
	stack := testutil.NewStack(t, testutil.StackOptions{
		LLM: fake.New(fake.Config{Latency: 5 * time.Millisecond, ChunkDelay: 5 * time.Millisecond, ReplyWords: 24}),
	})
	_, key := stack.User(t, "bench")
	return stack, key
}

func runResume(t *testing.T, url, key string) *bench.Result {
	t.Helper()
	var table, progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{URL: url, APIKey: key, Scenario: "resume",
		Duration: time.Second, ResumeClients: 6, ResumeReplyWords: 24}, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 1)
	s := rep.Scenarios[0]
	require.Equal(t, "resume", s.Name)
	assert.Contains(t, table.String(), "resumed streams/s")
	return s
}

// TestResumeScenario: every stream dropped mid-flight and resumed from its
// last event id reassembles to the stored finalContent (multi-byte text:
// ids count code points), and the resume latency is reported.
func TestResumeScenario(t *testing.T) {
	stack, key := slowStack(t)
	s := runResume(t, stack.URL, key)
	require.Zero(t, s.Errors, "%v %v", s.ErrorSamples, s.Extra)
	assert.Positive(t, s.Extra["resumed"])
	assert.Equal(t, s.Extra["resumed"], s.Extra["equal"], s.Extra)
	assert.EqualValues(t, 100, s.Extra["equalPct"])
	assert.EqualValues(t, 0, s.Extra["offsetMismatches"])
	assert.Positive(t, s.Extra["meanDropAtCodePoints"], "streams are dropped after some text, not only at the start")
	assert.Positive(t, s.P99Ms, "drop → first catch-up byte")
	assert.Positive(t, s.Extra["resumeStartP99Ms"])
	assert.Positive(t, s.Throughput)
}

// TestResumeScenarioDetectsALostOffset: behind a proxy that drops the
// Last-Event-ID header, resumed streams start over from the beginning and
// the scenario reports texts that differ from the stored ones.
func TestResumeScenarioDetectsALostOffset(t *testing.T) {
	stack, key := slowStack(t)
	u, err := url.Parse(stack.URL)
	require.NoError(t, err)
	rp := &httputil.ReverseProxy{FlushInterval: -1, Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host
		r.Out.Header.Del("Last-Event-ID")
	}}
	proxy := httptest.NewServer(rp)
	t.Cleanup(proxy.Close)
	s := runResume(t, proxy.URL, key)
	assert.Positive(t, s.Extra["unequal"], s.Extra)
	assert.Less(t, s.Extra["equalPct"], 100.0)
	require.NotNil(t, s.Met)
	assert.False(t, *s.Met)
}

// TestTurnLogCost: a spawned run of the turns scenario measures the turns
// again on a server started with --turn-log=false, reports the ratio, and
// runs pgbench with and without the turn log row.
func TestTurnLogCost(t *testing.T) {
	exe := stelloBinary(t)
	dbURL := testutil.MigratedURL(t)
	var table, progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{Spawn: true, Exe: exe, DatabaseURL: dbURL, Scenario: "turns",
		Model: "fake", Duration: 500 * time.Millisecond, Clients: 2, Spaces: 2, SessionsPerClient: 1}, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 2, progress.String())
	with, without := rep.Scenarios[0], rep.Scenarios[1]
	assert.Equal(t, "turns", with.Name)
	assert.Equal(t, "turns, --turn-log=false", without.Name)
	for _, s := range rep.Scenarios {
		require.Zero(t, s.Errors, "%s: %v %v", s.Name, s.ErrorSamples, s.Extra)
		assert.Positive(t, s.Throughput, s.Name)
	}
	assert.Contains(t, without.Settings["serverArgs"], "--turn-log=false")
	assert.NotContains(t, with.Settings["serverArgs"], "--turn-log=false")
	require.Contains(t, without.Extra, "withLogOverWithout")
	assert.Positive(t, without.Extra["withLogOverWithout"])
	assert.Equal(t, without.Extra["withLogOverWithout"], with.Extra["turnLogRatio"])
	assert.Positive(t, with.Extra["pgbenchTps"])
	assert.Positive(t, with.Extra["pgbenchTpsWithoutLog"])
	assert.Positive(t, with.Extra["pgbenchLogRatio"])
	assert.Contains(t, table.String(), "turns, --turn-log=false")

	// The logged run's sessions have rows (one a turn, and one a pgbench
	// transaction with the log: pgbench ran at least 5 s); the unlogged
	// run's sessions committed turns and have none.
	st, err := pgstore.Open(context.Background(), dbURL, pgstore.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	var withRows, withoutRows, rows int
	require.NoError(t, st.Pool().QueryRow(context.Background(), `SELECT
		count(*) FILTER (WHERE EXISTS (SELECT 1 FROM turns t WHERE t.session_id = s.id)),
		count(*) FILTER (WHERE s.turn_count > 0 AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.session_id = s.id)),
		(SELECT count(*) FROM turns)
		FROM sessions s`).Scan(&withRows, &withoutRows, &rows))
	assert.Equal(t, 4, withRows, "the logged servers' sessions: the turns line and the log-on side of the comparison")
	assert.Equal(t, 2, withoutRows, "the --turn-log=false run's two sessions")
	assert.GreaterOrEqual(t, float64(rows), with.Extra["pgbenchTps"].(float64))
	// pgbench's commits were fenced by the leases the server held.
	var leased int
	require.NoError(t, st.Pool().QueryRow(context.Background(),
		`SELECT count(*) FROM bench_turn_sessions WHERE node_id IS NOT NULL AND epoch IS NOT NULL`).Scan(&leased))
	assert.Equal(t, 2, leased)
}

// TestTurnSQLMatchesCommitTurn: the pgbench script sends the statements of
// the commit of a turn, fence first, and its variant leaves out only the
// turn log row, inserted after the session update.
func TestTurnSQLMatchesCommitTurn(t *testing.T) {
	for name, script := range map[string]string{"with": pgbench.TurnSQL, "without": pgbench.TurnSQLWithoutLog} {
		fence := strings.Index(script, "SELECT stello_fence(")
		records := strings.Index(script, "INSERT INTO records")
		update := strings.Index(script, "UPDATE sessions")
		require.True(t, fence >= 0 && records > fence && update > records, "%s: fence, records, session update:\n%s", name, script)
		assert.Equal(t, 1, strings.Count(script, "UPDATE sessions"), name)
		assert.Contains(t, script, "WITH s AS (\n  UPDATE sessions", name)
		assert.Equal(t, 1, strings.Count(script, `\startpipeline`), name)
		assert.Equal(t, 1, strings.Count(script, `\endpipeline`), name)
	}
	update := strings.Index(pgbench.TurnSQL, "UPDATE sessions")
	logRow := strings.Index(pgbench.TurnSQL, "INSERT INTO turns")
	assert.Greater(t, logRow, update, "the session update comes first in the statement")
	assert.Contains(t, pgbench.TurnSQL[logRow:], "JOIN s ON", "the row is inserted from the session row the statement updates")
	assert.NotContains(t, pgbench.TurnSQLWithoutLog, "INSERT INTO turns")
}
