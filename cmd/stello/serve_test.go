package main

import (
	"context"
	"encoding/json"
	"errors"
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
	code, body := httpDo(t, http.MethodPost, p.url("/spaces"), key, `{"label":"`+label+`","systemPrompt":"be brief"}`)
	require.Equal(t, http.StatusCreated, code, body)
	var sp map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &sp))
	id, _ := sp["id"].(string)
	require.NotEmpty(t, id, body)
	return id
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

	code, body := httpDo(t, http.MethodGet, p.url("/healthz"), "", "")
	assert.Equal(t, http.StatusOK, code, body)
	code, body = httpDo(t, http.MethodGet, p.url("/readyz"), "", "")
	assert.Equal(t, http.StatusOK, code, body)
	code, body = httpDo(t, http.MethodGet, p.url("/metrics"), "", "")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "stello_active_actors")
	assert.Contains(t, body, "stello_http_requests_total")

	// Unauthenticated API calls are refused.
	code, _ = httpDo(t, http.MethodGet, p.url("/spaces"), "", "")
	assert.Equal(t, http.StatusUnauthorized, code)

	// A user made with the store (on the database serve migrated) works.
	st := openStore(t, url)
	u, key, err := st.CreateUser(t.Context(), "alice")
	require.NoError(t, err)
	id := createSpace(t, p, key, "From the CLI test")
	code, body = httpDo(t, http.MethodGet, p.url("/spaces"), key, "")
	require.Equal(t, http.StatusOK, code, body)
	var spaces []map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &spaces))
	require.Len(t, spaces, 1)
	assert.Equal(t, id, spaces[0]["id"])
	assert.Equal(t, u.ID, spaces[0]["userId"])

	// A turn with the fake model is persisted.
	code, body = httpDo(t, http.MethodGet, p.url("/spaces/"+id+"/sessions"), key, "")
	require.Equal(t, http.StatusOK, code, body)
	var tree map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &tree))
	rootID, _ := tree["id"].(string)
	require.NotEmpty(t, rootID, body)
	code, body = httpDo(t, http.MethodPost, p.url("/spaces/"+id+"/sessions/"+rootID+"/turn"), key, `{"input":"hello"}`)
	require.Equal(t, http.StatusOK, code, body)
	recs, err := st.ListRecords(t.Context(), id, rootID, 0, 0)
	require.NoError(t, err)
	assert.Len(t, recs, 2)

	_, body = httpDo(t, http.MethodGet, p.url("/metrics"), "", "")
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

	hdr := http.Header{}
	hdr.Set("X-API-Key", key)
	ws, res, err := websocket.DefaultDialer.DialContext(t.Context(), "ws://"+p.addr+"/spaces/"+id+"/ws", hdr)
	require.NoError(t, err)
	res.Body.Close()
	defer ws.Close()

	// One exchange, so the server has registered the connection.
	require.NoError(t, ws.WriteJSON(map[string]string{"type": "no.such.type", "id": "probe"}))
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(30*time.Second)))
	var reply map[string]any
	require.NoError(t, ws.ReadJSON(&reply))
	assert.Equal(t, "error", reply["type"])
	assert.Equal(t, "probe", reply["id"])
	assert.Equal(t, "UNKNOWN_TYPE", reply["code"])

	p.cancel() // begin the shutdown; stop below waits for it

	// Read until the connection ends: it must end with a 1001 close frame.
	var closeErr *websocket.CloseError
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			require.True(t, errors.As(err, &closeErr), "connection ended without a close frame: %v", err)
			break
		}
		t.Logf("message before close: %s", msg)
	}
	assert.Equal(t, websocket.CloseGoingAway, closeErr.Code, "close code")

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
	code, body := httpDo(t, http.MethodGet, p.url("/readyz"), "", "")
	require.Equal(t, http.StatusOK, code, body)
	port, ok := runningPort(dir)
	require.True(t, ok, "postmaster.pid of a live server in the data dir")

	// A second command on the same data dir reuses the running instance:
	// the key it makes works against the server.
	out := cliOK(t, "users", "create", "--name", "alice", "--json", "--data-dir", dir, "--database-url", "")
	var got map[string]string
	decodeLine(t, out, &got)
	key := got["apiKey"]
	require.NotEmpty(t, key, out)
	code, body = httpDo(t, http.MethodGet, p.url("/spaces"), key, "")
	require.Equal(t, http.StatusOK, code, body)
	assert.JSONEq(t, `[]`, body)
	createSpace(t, p, key, "embedded")
	again, ok := runningPort(dir)
	require.True(t, ok, "the server is still running after the second command")
	assert.Equal(t, port, again)

	require.NoError(t, p.stop(t))
	assertPortClosed(t, p.addr)
	_, ok = runningPort(dir)
	assert.False(t, ok, "serve stopped the PostgreSQL it started")
}
