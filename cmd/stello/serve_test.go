package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/pgstore/pgtest"
)

var listeningRe = regexp.MustCompile(`stello listening on http://(\S+)\n`)

// serveProc is a `stello serve` running in a goroutine.
type serveProc struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
	stdout *syncBuffer
	stderr *syncBuffer
}

// startServe runs `stello serve` with args on a free port and waits for its
// listening line. It is stopped at cleanup if the test did not stop it.
func startServe(t *testing.T, args ...string) *serveProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &serveProc{cancel: cancel, done: make(chan error, 1), stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	full := append([]string{"serve", "--addr", "127.0.0.1:0", "--llm", "fake", "--shutdown-timeout", "20s"}, args...)
	go func() { p.done <- run(ctx, full, p.stdout, p.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			t.Errorf("serve did not stop; stderr:\n%s", p.stderr.String())
		}
	})

	var exited bool
	var exitErr error
	require.Eventually(t, func() bool {
		select {
		case exitErr = <-p.done:
			exited = true
			return true
		default:
		}
		if m := listeningRe.FindStringSubmatch(p.stdout.String()); m != nil {
			p.addr = m[1]
			return true
		}
		return false
	}, 2*time.Minute, 10*time.Millisecond)
	if exited {
		p.done <- exitErr // for the cleanup
		t.Fatalf("serve exited before listening: %v\nstderr:\n%s", exitErr, p.stderr.String())
	}
	return p
}

// stop cancels serve's context and returns what run returned.
func (p *serveProc) stop(t *testing.T) error {
	t.Helper()
	p.cancel()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(time.Minute):
		t.Fatalf("serve did not return after its context was cancelled; stderr:\n%s", p.stderr.String())
		return nil
	}
}

func (p *serveProc) url(path string) string { return "http://" + p.addr + path }

// api returns a Go client of the server with key (none when empty).
func (p *serveProc) api(key string) *client.Client { return client.New(p.url(""), key) }

// callCtx bounds one call of a test to a minute.
func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// httpDo sends a raw request: for what the Go client does not cover, the
// admin listener's /metrics and /debug/pprof/ routes.
func httpDo(t *testing.T, method, url, key, body string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, r)
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, string(b)
}

// createSpace creates a space over REST and returns its id.
func createSpace(t *testing.T, p *serveProc, key, label string) string {
	t.Helper()
	sp, err := p.api(key).CreateSpace(callCtx(t), client.SpaceInput{Label: label, SystemPrompt: client.String("be brief")})
	require.NoError(t, err)
	require.NotEmpty(t, sp.ID)
	return sp.ID
}

// requireAPIError requires err to be the server's answer with status and
// code.
func requireAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var apiErr *client.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, status, apiErr.Status, "status")
	assert.Equal(t, code, apiErr.Code, "code")
}

func assertPortClosed(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after shutdown", addr)
	}
}

func TestServeEndToEndAndGracefulShutdown(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t) // not migrated: serve migrates at start-up
	p := startServe(t, "--database-url", url)

	anon := p.api("")
	assert.NoError(t, anon.Health(callCtx(t)))
	assert.NoError(t, anon.Ready(callCtx(t)))
	body, err := anon.Metrics(callCtx(t))
	assert.NoError(t, err)
	assert.Contains(t, body, "stello_active_actors")
	assert.Contains(t, body, "stello_http_requests_total")

	// Unauthenticated API calls are refused.
	_, err = anon.ListSpaces(callCtx(t))
	requireAPIError(t, err, http.StatusUnauthorized, "UNAUTHORIZED")

	// A user made with the store (on the database serve migrated) works.
	st := openStore(t, url)
	u, key, err := st.CreateUser(t.Context(), "alice")
	require.NoError(t, err)
	c := p.api(key)
	id := createSpace(t, p, key, "From the CLI test")
	spaces, err := c.ListSpaces(callCtx(t))
	require.NoError(t, err)
	require.Len(t, spaces, 1)
	assert.Equal(t, id, spaces[0].ID)
	assert.Equal(t, u.ID, spaces[0].UserID)

	// A turn with the fake model is persisted.
	tree, err := c.Tree(callCtx(t), id)
	require.NoError(t, err)
	require.NotEmpty(t, tree.ID)
	_, err = c.Turn(callCtx(t), id, tree.ID, "hello")
	require.NoError(t, err)
	recs, err := st.ListRecords(t.Context(), id, tree.ID, 0, 0)
	require.NoError(t, err)
	assert.Len(t, recs, 2)

	body, err = anon.Metrics(callCtx(t))
	require.NoError(t, err)
	assert.Regexp(t, `stello_http_requests_total\{method="POST",route="/spaces",status="201"\} 1`, body)
	assert.Regexp(t, `stello_http_requests_total\{method="POST",route="/spaces/\{spaceId\}/sessions/\{id\}/turn",status="200"\} 1`, body)
	assert.NotContains(t, body, id, "routes are labelled by pattern, not by id")

	// Graceful shutdown: run returns nil and the port closes.
	require.NoError(t, p.stop(t))
	assertPortClosed(t, p.addr)
	assert.Contains(t, p.stderr.String(), "stopped")
}

func TestServeClosesWebSocketsWith1001OnShutdown(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	p := startServe(t, "--database-url", url)
	st := openStore(t, url)
	_, key, err := st.CreateUser(t.Context(), "alice")
	require.NoError(t, err)
	id := createSpace(t, p, key, "ws")

	conn := openWS(t, p, key, id)

	p.cancel() // begin the shutdown; stop below waits for it

	// The connection must end with a 1001 close frame.
	assert.Equal(t, websocket.CloseGoingAway, closeCode(t, conn, time.Now().Add(time.Minute)), "close code")

	require.NoError(t, p.stop(t))
	assertPortClosed(t, p.addr)
}

// serve without --database-url runs an embedded PostgreSQL in --data-dir;
// another command on the same --data-dir uses the running instance.
func TestServeEmbeddedPostgres(t *testing.T) {
	t.Parallel()
	// Not t.TempDir(): when running as root, PostgreSQL runs as another
	// user, who cannot enter t.TempDir()'s 0700 parent.
	dir, err := os.MkdirTemp("", "stello-cli-embedded-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	p := startServe(t, "--data-dir", dir, "--database-url", "")
	require.NoError(t, p.api("").Ready(callCtx(t)))
	port, ok := runningPort(dir)
	require.True(t, ok, "postmaster.pid of a live server in the data dir")

	// A second command on the same data dir reuses the running instance:
	// the key it makes works against the server.
	out := cliOK(t, "users", "create", "--name", "alice", "--json", "--data-dir", dir, "--database-url", "")
	var got map[string]string
	decodeLine(t, out, &got)
	key := got["apiKey"]
	require.NotEmpty(t, key, out)
	spaces, err := p.api(key).ListSpaces(callCtx(t))
	require.NoError(t, err)
	assert.NotNil(t, spaces, "an empty list is [], not null")
	assert.Empty(t, spaces)
	createSpace(t, p, key, "embedded")
	again, ok := runningPort(dir)
	require.True(t, ok, "the server is still running after the second command")
	assert.Equal(t, port, again)

	require.NoError(t, p.stop(t))
	assertPortClosed(t, p.addr)
	_, ok = runningPort(dir)
	assert.False(t, ok, "serve stopped the PostgreSQL it started")
}
