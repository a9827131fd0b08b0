package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }

// syncBuffer is a bytes.Buffer safe for a writer and a poller.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cli runs one command to completion.
func cli(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut syncBuffer
	err = run(ctx, args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// cliOK runs a command that must succeed and returns its stdout.
func cliOK(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := cli(t, args...)
	require.NoError(t, err, "stello %s\nstderr:\n%s", strings.Join(args, " "), errOut)
	return out
}

// openStore opens a store on url, closed at cleanup.
func openStore(t *testing.T, url string) *pgstore.Store {
	t.Helper()
	st, err := pgstore.Open(context.Background(), url, pgstore.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	return st
}

// decodeLine decodes stdout that must be exactly one JSON line.
func decodeLine(t *testing.T, out string, v any) {
	t.Helper()
	require.True(t, strings.HasSuffix(out, "\n"), "output ends with a newline: %q", out)
	require.Equal(t, 1, strings.Count(out, "\n"), "exactly one line: %q", out)
	require.NoError(t, json.Unmarshal([]byte(out), v), out)
}
