package bench_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench"
	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
	binOut  []byte
)

// stelloBinary builds cmd/stello once for the spawned-mode tests (removed
// by TestMain).
func stelloBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "stello-bench-test-"); binErr != nil {
			return
		}
		binOut, binErr = exec.Command("go", "build", "-o", filepath.Join(binDir, "stello"), "github.com/stellohq/stello/cmd/stello").CombinedOutput()
	})
	require.NoError(t, binErr, string(binOut))
	return filepath.Join(binDir, "stello")
}

func removeBinary() {
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}

// metricsOf reads a server's /metrics.
func metricsOf(base string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return client.New(base, "").Metrics(ctx)
}

// firstURL is the first of a comma-separated list.
func firstURL(urls string) string {
	first, _, _ := strings.Cut(urls, ",")
	return first
}

func TestParseDurations(t *testing.T) {
	got, err := bench.ParseDurations(" 2s, 10s,500ms ")
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{2 * time.Second, 10 * time.Second, 500 * time.Millisecond}, got)
	for _, bad := range []string{"", " , ", "2", "2s,x", "0s", "-1s"} {
		_, err := bench.ParseDurations(bad)
		assert.Error(t, err, "%q", bad)
	}
}

func TestParseCounts(t *testing.T) {
	got, err := bench.ParseCounts("100_000, 0,1000,1000")
	require.NoError(t, err)
	assert.Equal(t, []int{0, 1000, 100000}, got, "sorted, without repeats")
	for _, bad := range []string{"", ",", "1k", "-5", "1,,x"} {
		_, err := bench.ParseCounts(bad)
		assert.Error(t, err, "%q", bad)
	}
}

// twoProcesses starts two servers over one database, a cluster of two,
// and returns their base URLs (comma-separated) and an API key.
func twoProcesses(t *testing.T) (string, string, [2]*testutil.Stack) {
	st := testutil.Store(t)
	a := testutil.NewStack(t, testutil.StackOptions{Store: st})
	b := testutil.NewStack(t, testutil.StackOptions{Store: st})
	_, key := a.User(t, "bench")
	return a.URL + "," + b.URL, key, [2]*testutil.Stack{a, b}
}

func TestSeveralProcessesNeedSpawnOrURLs(t *testing.T) {
	for _, cfg := range []bench.Config{
		{URL: "http://127.0.0.1:1", APIKey: "k", Scenario: "turns", Nodes: 2},
		{URL: "http://127.0.0.1:1", APIKey: "k", Scenario: "failover"},
		{URL: "http://127.0.0.1:1", APIKey: "k", Scenario: "leases"},
	} {
		_, err := bench.Run(context.Background(), cfg, &bytes.Buffer{}, &bytes.Buffer{})
		assert.ErrorContains(t, err, "spawn", "%+v", cfg)
	}
	urls, key, _ := twoProcesses(t)
	one := firstURL(urls)
	rep, err := bench.Run(context.Background(), bench.Config{URL: one, APIKey: key, Scenario: "forward", Duration: 100 * time.Millisecond},
		&bytes.Buffer{}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Len(t, rep.Scenarios, 1)
	assert.Equal(t, -1, rep.Scenarios[0].Errors, "forward with one process fails")
	assert.Contains(t, rep.Scenarios[0].Extra["failure"], "two processes")
}

// TestForwardScenario: spaces created through the first process are read
// through it and through the second, which forwards every read to the
// first; the /metrics counters confirm who owns them.
func TestForwardScenario(t *testing.T) {
	urls, key, _ := twoProcesses(t)
	var table, progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{URL: urls, APIKey: key, Scenario: "forward",
		Duration: 500 * time.Millisecond, Readers: 2, Spaces: 2}, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 2, progress.String())
	assert.Equal(t, "forward, 1 client", rep.Scenarios[0].Name)
	assert.Equal(t, "forward, 2 clients", rep.Scenarios[1].Name)
	for _, s := range rep.Scenarios {
		require.Zero(t, s.Errors, "%s: %v %v", s.Name, s.ErrorSamples, s.Extra)
		assert.Equal(t, true, s.Extra["ownerVerified"], "%s: %v", s.Name, s.Extra)
		assert.EqualValues(t, 0, s.Extra["ownerForwarded"], s.Name)
		assert.Positive(t, s.Extra["otherForwarded"], s.Name)
		assert.Positive(t, s.Extra["directP50Ms"], s.Name)
		assert.Positive(t, s.Extra["forwardedP50Ms"], s.Name)
		assert.Positive(t, s.Throughput, s.Name)
		assert.Contains(t, s.Extra, "loadAvgBefore")
	}
	assert.NotNil(t, rep.Scenarios[0].Met, "the one-client line carries the target")
	assert.Contains(t, table.String(), "forwarded reads/s")
}

// TestForwardScenarioSeesNoHop: the same process listed twice forwards
// nothing, and the scenario says the owner was not verified.
func TestForwardScenarioSeesNoHop(t *testing.T) {
	urls, key, _ := twoProcesses(t)
	one := firstURL(urls)
	var progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{URL: one + "," + one, APIKey: key, Scenario: "forward",
		Duration: 300 * time.Millisecond, Readers: 1, Spaces: 1}, &bytes.Buffer{}, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 1)
	s := rep.Scenarios[0]
	assert.Equal(t, false, s.Extra["ownerVerified"], s.Extra)
	require.NotNil(t, s.Met)
	assert.False(t, *s.Met)
}

// TestTurnsAndReadsOverSeveralProcesses: with two base URLs, turns and
// reads go to both processes in turn, so some reach a process that does
// not own their space and are forwarded.
func TestTurnsAndReadsOverSeveralProcesses(t *testing.T) {
	urls, key, stacks := twoProcesses(t)
	for _, sc := range []string{"turns", "reads"} {
		var progress bytes.Buffer
		rep, err := bench.Run(context.Background(), bench.Config{URL: urls, APIKey: key, Scenario: sc,
			Duration: 500 * time.Millisecond, Clients: 4, Spaces: 2, Readers: 2}, &bytes.Buffer{}, &progress)
		require.NoError(t, err, progress.String())
		require.Len(t, rep.Scenarios, 1)
		s := rep.Scenarios[0]
		assert.Equal(t, sc+", 2 processes", s.Name)
		require.Zero(t, s.Errors, "%v %v", s.ErrorSamples, s.Extra)
		assert.Positive(t, s.Throughput)
		assert.EqualValues(t, 2, s.Extra["nodes"])
		key := map[string]string{"turns": "forwardedPerTurn", "reads": "forwardedPerRequest"}[sc]
		assert.Positive(t, s.Extra[key], "%s: %v", sc, s.Extra)
	}
	for i, st := range stacks {
		text, err := metricsOf(st.URL)
		require.NoError(t, err)
		assert.Contains(t, text, `route="/spaces/{spaceId}/sessions/{id}/turn"`, "process %d served turns", i)
	}
}

// TestFailoverScenario: a spawned run kills (SIGKILL) and stops (SIGTERM)
// the owner of a space and reports when another process answered a turn
// on it.
func TestFailoverScenario(t *testing.T) {
	exe := stelloBinary(t)
	var table, progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{Spawn: true, Exe: exe, DatabaseURL: testutil.MigratedURL(t),
		Scenario: "failover", Nodes: 2, FailoverTTLs: []time.Duration{time.Second}, FailoverRounds: 1}, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 2, progress.String())
	assert.Equal(t, "failover SIGKILL, --lease-ttl 1s", rep.Scenarios[0].Name)
	assert.Equal(t, "failover SIGTERM, --lease-ttl 1s", rep.Scenarios[1].Name)
	for _, s := range rep.Scenarios {
		require.Zero(t, s.Errors, "%s: %v %v\n%s", s.Name, s.ErrorSamples, s.Extra, progress.String())
		assert.EqualValues(t, 1, s.Throughput, s.Name)
		assert.Len(t, s.Extra["failoverMs"], 1, s.Name)
		assert.Positive(t, s.P50Ms, s.Name)
		assert.Contains(t, s.Settings["serverArgs"], "--lease-ttl 1s")
	}
	assert.Len(t, rep.Scenarios[1].Extra["listenerClosedMs"], 1)
}

// TestLeasesScenario: a spawned process holds 0, then 20 active spaces
// (one lease each, as `stello cluster status` shows), and the database's
// counters are read over an idle window at each.
func TestLeasesScenario(t *testing.T) {
	exe := stelloBinary(t)
	var table, progress bytes.Buffer
	rep, err := bench.Run(context.Background(), bench.Config{Spawn: true, Exe: exe, DatabaseURL: testutil.MigratedURL(t),
		Scenario: "leases", LeaseSpaces: []int{20, 0}, Duration: time.Second, LeaseSettle: 100 * time.Millisecond}, &table, &progress)
	require.NoError(t, err, progress.String())
	require.Len(t, rep.Scenarios, 2, progress.String())
	assert.Equal(t, "leases, 0 active spaces", rep.Scenarios[0].Name)
	assert.Equal(t, "leases, 20 active spaces", rep.Scenarios[1].Name)
	for i, s := range rep.Scenarios {
		require.Zero(t, s.Errors, "%s: %v", s.Name, s.Extra)
		assert.Contains(t, []string{"stmts/s", "xacts/s"}, s.Unit)
		assert.Contains(t, s.Extra, "transactionsPerS")
		assert.EqualValues(t, []int{0, 20}[i], s.Extra["activeActors"], s.Name)
		assert.EqualValues(t, []int{0, 20}[i], s.Extra["leasesHeld"], s.Name)
	}
	assert.NotNil(t, rep.Scenarios[1].Met, "the largest count is compared with the smallest")
}
