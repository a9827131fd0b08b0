package transport_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
)

// TestSSEClientGoneMidStreamTurnPersists: a client that drops an SSE turn
// after the first delta does not cancel it; the turn commits whole.
func TestSSEClientGoneMidStreamTurnPersists(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	mock, client := mockModel(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&gateAfterFirstWrite{ResponseWriter: w, gate: release}, r)
		})
	})
	mock.Enqueue(mockllm.Reply{Chunks: []string{"one ", "two ", "three"}})
	e := newRESTEnv(t, testutil.StackOptions{LLM: client})
	sp, root := e.space(t, e.c, map[string]any{"label": "s"})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.stack.URL+"/spaces/"+sp.ID+"/sessions/"+root+"/turn",
		strings.NewReader(`{"input":"hello"}`))
	require.NoError(t, err)
	req.Header.Set("X-API-Key", e.c.key)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	sc := bufio.NewScanner(resp.Body)
	event := ""
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "event: ") {
			event = strings.TrimPrefix(sc.Text(), "event: ")
		}
		if strings.HasPrefix(sc.Text(), "data: ") && event == "delta" {
			assert.JSONEq(t, `{"chunk":"one "}`, strings.TrimPrefix(sc.Text(), "data: "))
			break
		}
	}
	cancel() // the client goes away mid-stream
	resp.Body.Close()
	require.Empty(t, e.messages(t, e.c, sp.ID, root), "nothing is written before the turn ends")
	once.Do(func() { close(release) })

	require.Eventually(t, func() bool { return len(e.messages(t, e.c, sp.ID, root)) == 2 }, 10*time.Second, 20*time.Millisecond)
	msgs := e.messages(t, e.c, sp.ID, root)
	assert.Equal(t, "hello", msgs[0].Content)
	assert.Equal(t, "one two three", msgs[1].Content)
	assert.Equal(t, 1, mock.Calls())
}

// gateAfterFirstWrite holds the model's stream after its first write until
// gate closes.
type gateAfterFirstWrite struct {
	http.ResponseWriter
	gate   <-chan struct{}
	writes int
}

func (w *gateAfterFirstWrite) Write(b []byte) (int, error) {
	w.writes++
	if w.writes == 3 { // headers flushed, role chunk, first content chunk written
		<-w.gate
	}
	return w.ResponseWriter.Write(b)
}

func (w *gateAfterFirstWrite) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// TestForkOptionsReachTheModel: a child forked with systemPrompt, scope,
// context "inherit" and prompt sends exactly those to the model.
func TestForkOptionsReachTheModel(t *testing.T) {
	t.Parallel()
	mock, client := mockModel(t, nil)
	mock.Enqueue(mockllm.Reply{Content: "parent reply"}, mockllm.Reply{Content: "child reply"})
	e := newRESTEnv(t, testutil.StackOptions{LLM: client})
	sp, root := e.space(t, e.c, map[string]any{"label": "s", "systemPrompt": "parent prompt"})
	e.turn(t, e.c, sp.ID, root, "parent question")
	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "c", "systemPrompt": "child prompt",
		"scope": "only the child topic", "context": "inherit", "prompt": "Welcome to the child."})
	e.turn(t, e.c, sp.ID, child.ID, "child question")

	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	type m struct{ Role, Content string }
	var got []m
	for _, msg := range reqs[1].Messages {
		got = append(got, m{msg.Role, msg.Content})
	}
	assert.Equal(t, []m{
		{"system", "child prompt"},
		{"system", "Scope of this session: only the child topic"},
		{"user", "parent question"},
		{"assistant", "parent reply"},
		{"assistant", "Welcome to the child."},
		{"user", "child question"},
	}, got)
	b, _ := json.Marshal(got)
	assert.NotContains(t, string(b), "parent prompt", "the child's own system prompt replaces the parent's")
}

// TestDatabaseUnreachableIs503: with the database gone, requests answer
// 503 UNAVAILABLE (not a 500), and /readyz says so too.
func TestDatabaseUnreachableIs503(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://stello@127.0.0.1:1/stello?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	st := testutil.NewStack(t, testutil.StackOptions{Store: pgstore.New(pool), NoCluster: true})
	c := restClient{t: t, base: st.URL, key: "sk_stello_whatever"}
	restErr(t, c.do("GET", "/spaces", nil), http.StatusServiceUnavailable, "UNAVAILABLE")
	restErr(t, c.do("GET", "/readyz", nil), http.StatusServiceUnavailable, "UNAVAILABLE")
	resp, err := http.Get(st.URL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the process is up")
}
