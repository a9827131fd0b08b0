package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench"
	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
	"github.com/stellohq/stello/space"
)

func TestMain(m *testing.M) {
	leakcheck.Main(m, func() {
		pgtest.Stop()
		removeBinary()
	})
}

// TestHarnessAgainstAServer runs every scenario, scaled down, against a
// server given by URL, as a user measuring another deployment would.
func TestHarnessAgainstAServer(t *testing.T) {
	stack := testutil.NewStack(t, testutil.StackOptions{
		LLM:   fake.New(fake.Config{Latency: 5 * time.Millisecond}),
		Space: space.Options{IdleTTL: 200 * time.Millisecond},
	})
	_, key := stack.User(t, "bench")
	out := filepath.Join(t.TempDir(), "report.json")
	var table, progress bytes.Buffer
	cfg := bench.Config{
		URL: stack.URL, APIKey: key, Scenario: "all", Duration: 500 * time.Millisecond, ServerPID: os.Getpid(),
		Clients: 4, Spaces: 2, StreamClients: 4, StreamLatency: 5 * time.Millisecond, ResumeClients: 4, Conns: 20, Readers: 2,
		ChurnSpaces: 40, ChurnIdleTTL: 200 * time.Millisecond, JSONFile: out,
	}
	rep, err := bench.Run(context.Background(), cfg, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, len(bench.Scenarios))
	for i, s := range rep.Scenarios {
		assert.Equal(t, bench.Scenarios[i], s.Name)
		assert.Zero(t, s.Errors, "%s: %v", s.Name, s.ErrorSamples)
		assert.Positive(t, s.Throughput, s.Name)
	}
	assert.Contains(t, table.String(), "scenario")
	assert.Contains(t, table.String(), "machine:")

	var doc struct {
		Machine   map[string]any   `json:"machine"`
		Settings  map[string]any   `json:"settings"`
		Scenarios []map[string]any `json:"scenarios"`
	}
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &doc))
	assert.NotNil(t, doc.Machine["cpus"])
	assert.NotNil(t, doc.Machine["goVersion"])
	for _, s := range doc.Scenarios {
		for _, k := range []string{"name", "throughput", "p50Ms", "p95Ms", "p99Ms", "errors"} {
			assert.Contains(t, s, k, s["name"])
		}
	}
	byName := map[string]map[string]any{}
	for _, s := range doc.Scenarios {
		byName[s["name"].(string)] = s
	}
	assert.Contains(t, byName["connections"], "rssPerConnKiB")
	assert.EqualValues(t, 20, byName["connections"]["throughput"], "every connection answered")
	assert.Contains(t, byName["stream"], "firstChunkP50Ms")
	assert.EqualValues(t, 100, byName["resume"]["equalPct"])
	assert.EqualValues(t, 0, byName["churn"]["activeAfterEviction"])
}

// TestTurnsAgainstPgbench: the turns scenario runs turn.sql with pgbench on
// the server's database and reports the ratio.
func TestTurnsAgainstPgbench(t *testing.T) {
	url := testutil.MigratedURL(t)
	st, err := pgstore.Open(context.Background(), url, pgstore.PoolOptions{MaxConns: 8})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	stack := testutil.NewStack(t, testutil.StackOptions{Store: st})
	_, key := stack.User(t, "bench")
	var table, progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{URL: stack.URL, APIKey: key, Scenario: "turns",
		Duration: 500 * time.Millisecond, Clients: 2, Spaces: 2, DatabaseURL: url}, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 1)
	s := rep.Scenarios[0]
	assert.Zero(t, s.Errors, s.ErrorSamples)
	require.NotNil(t, s.PgbenchRatio, "%v\n%s", s.Extra, progress.String())
	assert.Positive(t, *s.PgbenchRatio)
	assert.Positive(t, s.Extra["pgbenchTps"])
	var turns int
	require.NoError(t, st.Pool().QueryRow(context.Background(), "SELECT sum(turn_count) FROM sessions").Scan(&turns))
	// pgbench ran at least 5 s at that rate on the same sessions.
	assert.GreaterOrEqual(t, float64(turns), s.Extra["pgbenchTps"].(float64), "pgbench's commits bump the sessions' turn counts")
	// Each client took its 8 sessions in turn: every one has turns.
	assert.EqualValues(t, 16, s.Settings["sessions"])
	var used int
	require.NoError(t, st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM sessions WHERE turn_count > 0").Scan(&used))
	assert.Equal(t, 16, used, "2 clients × 8 sessions each")
}

func TestUnknownScenario(t *testing.T) {
	_, err := bench.Run(context.Background(), bench.Config{URL: "http://127.0.0.1:1", APIKey: "k", Scenario: "nope"}, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "unknown scenario")
}

func TestURLRequiredWithoutSpawn(t *testing.T) {
	_, err := bench.Run(context.Background(), bench.Config{Scenario: "turns"}, &bytes.Buffer{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "--url and --api-key")
}

// TestCPUAndFootprintScenarios runs the cpu scenario (scaled down) and the
// footprint scenario against a server given by URL and pid: every phase
// runs its turns over REST, SSE and WebSocket and reports CPU per turn; the
// footprint reports idle RSS, the time of 1,000 creates and CPU per create.
func TestCPUAndFootprintScenarios(t *testing.T) {
	stack := testutil.NewStack(t, testutil.StackOptions{LLM: fake.New(fake.Config{})})
	_, key := stack.User(t, "bench")
	for _, sc := range []string{"cpu", "footprint"} {
		var table, progress bytes.Buffer
		rep, err := bench.Run(context.Background(), bench.Config{URL: stack.URL, APIKey: key, ServerPID: os.Getpid(), Scenario: sc,
			Clients: 4, Spaces: 2, CPUSessions: 4, CPULongSessions: 2, CPULongRounds: 2}, &table, &progress)
		require.NoError(t, err, progress.String())
		require.Len(t, rep.Scenarios, 1)
		s := rep.Scenarios[0]
		require.Zero(t, s.Errors, "%s: %v %v", sc, s.ErrorSamples, s.Extra)
		if sc == "footprint" {
			assert.Positive(t, s.Extra["idleRssKiB"])
			assert.Positive(t, s.Extra["create1000S"])
			// CPU per create is reported for the server (here the test
			// process itself); the database's only when the bench runs it.
			assert.Contains(t, s.Extra, "serverCpuPerCreateUs")
			assert.Contains(t, s.Extra, "benchCpuPerCreateUs")
			assert.NotContains(t, s.Extra, "dbCpuPerCreateUs")
			continue
		}
		b, err := json.Marshal(s)
		require.NoError(t, err)
		var doc struct {
			Phases []struct {
				Name, Mode   string
				Turns        int
				CPUPerTurnUs float64
			}
			GrowthOver10 float64 `json:"growth200over10"`
		}
		require.NoError(t, json.Unmarshal(b, &doc))
		var names []string
		for _, p := range doc.Phases {
			names = append(names, p.Name)
			assert.Positive(t, p.Turns, p.Name)
		}
		assert.Equal(t, []string{"history10", "history20-rest", "history20-sse", "history20-websocket", "long-history10", "history200"}, names)
		assert.Contains(t, table.String(), "µs CPU/turn")
	}
}
