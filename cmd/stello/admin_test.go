package main

import (
	"net/http"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/pgstore/pgtest"
)

var adminRe = regexp.MustCompile(`admin listening on http://(\S+)\n`)

// With --admin-addr, /metrics and /debug/pprof/ answer on that listener
// only; --addr answers 404 for them and still serves the API. Which
// listener answers which path is checked with raw requests (the Go client
// has no pprof); the API and the metrics' content through the client.
func TestServeAdminAddr(t *testing.T) {
	t.Parallel()
	p := startServe(t, "--database-url", pgtest.NewDatabase(t), "--admin-addr", "127.0.0.1:0", "--pprof")
	m := adminRe.FindStringSubmatch(p.stdout.String())
	require.NotNil(t, m, "admin address printed: %q", p.stdout.String())
	admin := "http://" + m[1]

	assert.NoError(t, p.api("").Health(callCtx(t)))
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/cmdline"} {
		code, _ := httpDo(t, http.MethodGet, p.url(path), "", "")
		assert.Equal(t, http.StatusNotFound, code, "--addr %s", path)
		code, _ = httpDo(t, http.MethodGet, admin+path, "", "")
		assert.Equal(t, http.StatusOK, code, "--admin-addr %s", path)
	}
	body, err := client.New(admin, "").Metrics(callCtx(t))
	require.NoError(t, err)
	assert.Contains(t, body, "stello_http_requests_total")
	assert.Contains(t, body, `route="/healthz"`)

	require.NoError(t, p.stop(t))
}

// Without --admin-addr, /metrics stays on --addr, and pprof only with --pprof.
func TestServeMetricsOnMainAddrWithoutAdminAddr(t *testing.T) {
	t.Parallel()
	p := startServe(t, "--database-url", pgtest.NewDatabase(t))
	_, err := p.api("").Metrics(callCtx(t))
	assert.NoError(t, err)
	code, _ := httpDo(t, http.MethodGet, p.url("/debug/pprof/"), "", "") // raw: the client has no pprof
	assert.Equal(t, http.StatusNotFound, code)
}
