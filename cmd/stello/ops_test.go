package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stellohq/stello/pgstore/pgtest"
)

// embeddedDir returns a fresh --data-dir. Not t.TempDir(): when running as
// root, PostgreSQL runs as another user, who cannot enter its 0700 parent.
func embeddedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "stello-cli-embedded-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "data")
}

// Two servers given the same --data-dir share its embedded PostgreSQL: the
// one that started it stops first and the other keeps serving; the last
// one to stop stops the database.
func TestServeTwoProcessesShareEmbeddedDatabase(t *testing.T) {
	t.Parallel()
	dir := embeddedDir(t)
	first := startServe(t, "--data-dir", dir, "--database-url", "")
	second := startServe(t, "--data-dir", dir, "--database-url", "")
	assert.Contains(t, first.stderr.String(), "started by this process")
	assert.Contains(t, second.stderr.String(), "already running")

	out := cliOK(t, "users", "create", "--name", "alice", "--json", "--data-dir", dir, "--database-url", "")
	var got map[string]string
	decodeLine(t, out, &got)
	key := got["apiKey"]

	require.NoError(t, first.stop(t))
	_, ok := runningPort(dir)
	require.True(t, ok, "the database outlives the process that started it while another uses it")
	assert.NoError(t, second.api("").Ready(callCtx(t)))
	createSpace(t, second, key, "after the first stopped")

	require.NoError(t, second.stop(t))
	_, ok = runningPort(dir)
	assert.False(t, ok, "the last process stopped the database")
}

// A CLI command that started the embedded database itself does not stop it
// from under a server that began using it meanwhile.
func TestCLIDoesNotStopEmbeddedDatabaseUsedByServer(t *testing.T) {
	t.Parallel()
	dir := embeddedDir(t)
	cliOK(t, "migrate", "--data-dir", dir, "--database-url", "") // starts and stops it
	_, ok := runningPort(dir)
	require.False(t, ok, "a lone CLI command stops the database it started")
	p := startServe(t, "--data-dir", dir, "--database-url", "")
	_, stderr, err := cli(t, "users", "create", "--name", "bob", "--data-dir", dir, "--database-url", "")
	require.NoError(t, err, stderr)
	assert.NoError(t, p.api("").Ready(callCtx(t)))
}

// CLI commands say on stderr which database they used: the embedded one's
// data directory, or the URL without its password.
func TestCLIPrintsWhichDatabase(t *testing.T) {
	t.Parallel()
	dir := embeddedDir(t)
	_, stderr, err := cli(t, "users", "create", "--name", "alice", "--data-dir", dir, "--database-url", "")
	require.NoError(t, err, stderr)
	abs, _ := filepath.Abs(dir)
	assert.Contains(t, stderr, "database: embedded PostgreSQL in "+abs)

	url := pgtest.NewDatabase(t)
	_, stderr, err = cli(t, "users", "list", "--database-url", url)
	require.NoError(t, err, stderr)
	assert.Contains(t, stderr, "database: "+url)

	_, stderr, err = cli(t, "migrate", "--database-url", url)
	require.NoError(t, err, stderr)
	assert.Contains(t, stderr, "database: "+url)
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://stello:s3cret@db:5432/stello?sslmode=disable": "postgres://stello:xxxxx@db:5432/stello?sslmode=disable",
		"postgres://stello@db/stello?password=s3cret":             "postgres://stello@db/stello?password=xxxxx",
		"host=db user=stello password=s3cret dbname=stello":       "host=db user=stello password=xxxxx dbname=stello",
		"host=db password='s3 cret' dbname=stello":                "host=db password=xxxxx dbname=stello",
		"postgres://stello@db/stello":                             "postgres://stello@db/stello",
	} {
		got := redactURL(in)
		assert.Equal(t, want, got)
		assert.NotContains(t, got, "s3")
	}
}

// Not parallel: these set the environment.

// A model key in the environment picks the real provider (as `make run`
// does): the start-up log says so loudly, naming provider and variable.
func TestLLMKeyFromEnvironmentIsAnnounced(t *testing.T) {
	for provider, envVar := range map[string]string{"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"} {
		t.Run(provider, func(t *testing.T) {
			t.Setenv("OPENAI_API_KEY", "")
			t.Setenv("ANTHROPIC_API_KEY", "")
			t.Setenv(envVar, "sk-test-not-a-real-key")
			core, logs := observer.New(zap.WarnLevel)
			var l llmFlags
			client, err := l.client(zap.New(core))
			require.NoError(t, err)
			require.NotNil(t, client)
			var found bool
			for _, e := range logs.All() {
				if e.ContextMap()["provider"] == provider && e.ContextMap()["variable"] == envVar {
					found = true
					assert.Contains(t, e.Message, "REAL")
					assert.Contains(t, e.Message, envVar)
				}
			}
			assert.True(t, found, "a warning names %s and %s: %v", provider, envVar, logs.All())
		})
	}
}

// --llm openai with neither a key nor a base URL refuses to start, as
// --llm anthropic without a key does.
func TestLLMOpenAIWithoutKeyOrBaseURLRefuses(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "")
	t.Setenv("ANTHROPIC_API_KEY", "")
	_, stderr, err := cli(t, "serve", "--llm", "openai", "--addr", "127.0.0.1:0", "--database-url", "postgres://nobody@127.0.0.1:1/none")
	require.Error(t, err, stderr)
	assert.Contains(t, err.Error(), "--llm openai needs an API key")
	assert.Equal(t, 2, exitCode(err))

	l := llmFlags{provider: "openai", baseURL: "http://127.0.0.1:1/v1"}
	_, err = l.client(zap.NewNop())
	assert.NoError(t, err, "a base URL alone is enough (local servers need no key)")
}
