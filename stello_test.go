package stello_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stellohq/stello"
	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }

// mockModel is an OpenAI-compatible mock server and a client of it.
func mockModel(t *testing.T) (*mockllm.Server, llm.Client) {
	t.Helper()
	mock := mockllm.New(mockllm.Config{})
	cl := testutil.ModelClient(t, mock)
	return mock, cl
}

// started is a Server served by httptest, with one user.
type started struct {
	srv  *stello.Server
	base string
	key  string
}

// start runs New with cfg (over a fresh migrated database unless cfg names
// one) and serves its Handler; it is closed at cleanup.
func start(t *testing.T, cfg stello.Config) *started {
	t.Helper()
	if cfg.Pool == nil && cfg.DatabaseURL == "" {
		cfg.DatabaseURL = testutil.MigratedURL(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := stello.New(ctx, cfg)
	require.NoError(t, err)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		assert.NoError(t, srv.Close(cctx))
	})
	_, key, err := srv.Store().CreateUser(ctx, "alice")
	require.NoError(t, err)
	return &started{srv: srv, base: hs.URL, key: key}
}

// do sends a JSON request and decodes a successful answer into out; it
// returns the status and the raw body.
func (s *started) do(t *testing.T, method, path string, body, out any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, rd)
	require.NoError(t, err)
	req.Header.Set("X-API-Key", s.key)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	if out != nil && res.StatusCode < 300 {
		require.NoError(t, json.Unmarshal(raw, out), "body: %s", raw)
	}
	return res.StatusCode, raw
}

// createSpace creates a space with config and returns its id; creating a
// space does not load it.
func (s *started) createSpace(t *testing.T, label string, config map[string]any) string {
	t.Helper()
	var sp struct {
		ID string `json:"id"`
	}
	body := map[string]any{"label": label}
	if config != nil {
		body["config"] = config
	}
	st, raw := s.do(t, "POST", "/spaces", body, &sp)
	require.Equal(t, http.StatusCreated, st, "%s", raw)
	return sp.ID
}

// space creates a space with config and returns its id and root session
// (reading the tree loads the space).
func (s *started) space(t *testing.T, label string, config map[string]any) (string, string) {
	t.Helper()
	id := s.createSpace(t, label, config)
	var root struct {
		ID string `json:"id"`
	}
	st, raw := s.do(t, "GET", "/spaces/"+id+"/sessions", nil, &root)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	return id, root.ID
}

// rootOf reads a space's root session from the database, without loading
// the space.
func (s *started) rootOf(t *testing.T, spaceID string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, states, err := s.srv.Store().LoadSpace(ctx, spaceID)
	require.NoError(t, err)
	for _, st := range states {
		if st.Meta.Role == session.RoleMain {
			return st.Meta.ID
		}
	}
	t.Fatalf("space %s has no root", spaceID)
	return ""
}

// turn runs a turn and returns its final content.
func (s *started) turn(t *testing.T, spaceID, sessionID, input string) string {
	t.Helper()
	var res struct {
		Turn struct {
			FinalContent *string `json:"finalContent"`
		} `json:"turn"`
	}
	st, raw := s.do(t, "POST", "/spaces/"+spaceID+"/sessions/"+sessionID+"/turn", map[string]string{"input": input}, &res)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	require.NotNil(t, res.Turn.FinalContent)
	return *res.Turn.FinalContent
}

// configOf decodes a space's config.
func configOf(t *testing.T, sp session.Space) map[string]any {
	t.Helper()
	cfg := map[string]any{}
	if len(sp.Config) > 0 {
		require.NoError(t, json.Unmarshal(sp.Config, &cfg))
	}
	return cfg
}

func TestNewWithURLMigratesAndOwnsThePool(t *testing.T) {
	url := pgtest.NewDatabase(t) // not migrated
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := stello.New(ctx, stello.Config{DatabaseURL: url})
	require.NoError(t, err)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	_, key, err := srv.Store().CreateUser(ctx, "alice")
	require.NoError(t, err, "New migrated the database")
	s := &started{srv: srv, base: hs.URL, key: key}
	spaceID, rootID := s.space(t, "Notes", nil)
	assert.NotEmpty(t, s.turn(t, spaceID, rootID, "hello"), "the default model (the fake) answers")

	require.NoError(t, srv.Close(ctx))
	assert.Error(t, srv.Store().Ping(ctx), "Close closed the pool New opened")
	assert.NoError(t, srv.Close(ctx), "a second Close is harmless")
}

func TestNewWithPoolLeavesItOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	require.NoError(t, err)
	defer pool.Close()
	srv, err := stello.New(ctx, stello.Config{Pool: pool})
	require.NoError(t, err)
	_, _, err = srv.Store().CreateUser(ctx, "alice")
	require.NoError(t, err, "New migrated the database through the pool")
	require.NoError(t, srv.Close(ctx))
	assert.NoError(t, pool.Ping(ctx), "the caller's pool is still open")
}

func TestNewSkipMigrate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := stello.New(ctx, stello.Config{DatabaseURL: pgtest.NewDatabase(t), SkipMigrate: true})
	require.Error(t, err, "no schema without migrations")
	assert.ErrorContains(t, err, "not migrated (run `stello migrate`)")
}

func TestNewNeedsExactlyOneDatabase(t *testing.T) {
	ctx := context.Background()
	_, err := stello.New(ctx, stello.Config{})
	assert.ErrorContains(t, err, "Config.Pool")
	pool, err := pgxpool.New(ctx, "postgres://127.0.0.1:1/none")
	require.NoError(t, err) // lazy: connects on first use
	defer pool.Close()
	_, err = stello.New(ctx, stello.Config{Pool: pool, DatabaseURL: "postgres://127.0.0.1:1/none"})
	assert.ErrorContains(t, err, "Config.Pool")
	_, err = stello.New(ctx, stello.Config{DatabaseURL: "postgres://127.0.0.1:1/none?connect_timeout=2"})
	assert.Error(t, err, "an unreachable database fails New")
}

func TestBuildSpaceChoosesTheModelPerSpace(t *testing.T) {
	mockA, modelA := mockModel(t)
	mockB, modelB := mockModel(t)
	mockDefault, modelDefault := mockModel(t)
	mockA.Enqueue(mockllm.Reply{Content: "from A"}, mockllm.Reply{Content: "memory by A"})
	mockB.Enqueue(mockllm.Reply{Content: "from B"})
	mockDefault.Enqueue(mockllm.Reply{Content: "from the default"})
	s := start(t, stello.Config{Model: modelDefault, BuildSpace: func(_ context.Context, sp session.Space) (stello.SpaceSetup, error) {
		switch configOf(t, sp)["model"] {
		case "a":
			return stello.SpaceSetup{Model: modelA}, nil
		case "b":
			return stello.SpaceSetup{Model: modelB}, nil
		}
		return stello.SpaceSetup{}, nil
	}})
	a, aRoot := s.space(t, "A", map[string]any{"model": "a"})
	b, bRoot := s.space(t, "B", map[string]any{"model": "b"})
	c, cRoot := s.space(t, "C", nil)

	assert.Equal(t, "from A", s.turn(t, a, aRoot, "hi A"))
	assert.Equal(t, "from B", s.turn(t, b, bRoot, "hi B"))
	assert.Equal(t, "from the default", s.turn(t, c, cRoot, "hi C"))
	assert.Equal(t, 1, mockA.Calls())
	assert.Equal(t, 1, mockB.Calls())
	assert.Equal(t, 1, mockDefault.Calls())

	// Memory work of a space uses its model too.
	var mem struct {
		Content *string `json:"content"`
	}
	st, raw := s.do(t, "POST", "/spaces/"+a+"/sessions/"+aRoot+"/consolidate", nil, &mem)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	require.NotNil(t, mem.Content)
	assert.Equal(t, "memory by A", *mem.Content)
	assert.Equal(t, 2, mockA.Calls())
	assert.Equal(t, 1, mockB.Calls())
	assert.Equal(t, 1, mockDefault.Calls())
}

// recordTool records its calls and answers with its canned result.
type recordTool struct {
	name   string
	answer string
	calls  atomic.Int32
}

func (r *recordTool) Definition() llm.Tool {
	return llm.Tool{Name: r.name, Description: "test tool", Parameters: json.RawMessage(`{"type":"object","properties":{}}`)}
}

func (r *recordTool) Call(context.Context, session.ToolEnv, json.RawMessage) (string, error) {
	r.calls.Add(1)
	return r.answer, nil
}

func TestBuildSpaceAddsTools(t *testing.T) {
	mock, model := mockModel(t)
	spaceTool := &recordTool{name: "space_tool", answer: `{"answer":"from the space tool"}`}
	everywhere := &recordTool{name: "global_tool", answer: `{"answer":"from the global tool"}`}
	s := start(t, stello.Config{Model: model, Tools: []session.Tool{everywhere},
		BuildSpace: func(_ context.Context, sp session.Space) (stello.SpaceSetup, error) {
			if configOf(t, sp)["tool"] == true {
				return stello.SpaceSetup{Tools: []session.Tool{spaceTool}}, nil
			}
			return stello.SpaceSetup{}, nil
		}})
	withTool, withRoot := s.space(t, "With", map[string]any{"tool": true})
	without, withoutRoot := s.space(t, "Without", nil)

	mock.Enqueue(mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "space_tool", Arguments: `{}`}}}, mockllm.Reply{Content: "done"})
	assert.Equal(t, "done", s.turn(t, withTool, withRoot, "use it"))
	assert.Equal(t, int32(1), spaceTool.calls.Load())
	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	assert.ElementsMatch(t, []string{"global_tool", "space_tool", session.CreateSessionToolName}, reqs[0].Tools)

	var msgs []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	st, raw := s.do(t, "GET", "/spaces/"+withTool+"/sessions/"+withRoot+"/messages", nil, &msgs)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	require.Len(t, msgs, 4)
	assert.Equal(t, "tool", msgs[2].Role)
	assert.JSONEq(t, `{"answer":"from the space tool"}`, msgs[2].Content)

	// The other space is not offered it; a call to it is refused as an
	// unknown tool and the tool does not run.
	mock.Enqueue(mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "space_tool", Arguments: `{}`}}}, mockllm.Reply{Content: "done"})
	assert.Equal(t, "done", s.turn(t, without, withoutRoot, "use it"))
	assert.Equal(t, int32(1), spaceTool.calls.Load())
	reqs = mock.Requests()
	require.Len(t, reqs, 4)
	assert.ElementsMatch(t, []string{"global_tool", session.CreateSessionToolName}, reqs[2].Tools)
	st, raw = s.do(t, "GET", "/spaces/"+without+"/sessions/"+withoutRoot+"/messages", nil, &msgs)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	require.Len(t, msgs, 4)
	assert.Contains(t, msgs[2].Content, `unknown tool \"space_tool\"`)
}

func TestBuildSpaceSetsDefaultPrompts(t *testing.T) {
	mock, model := mockModel(t)
	s := start(t, stello.Config{Model: model, BuildSpace: func(context.Context, session.Space) (stello.SpaceSetup, error) {
		return stello.SpaceSetup{SystemPrompt: "HOOK SYSTEM", ConsolidatePrompt: "HOOK CONSOLIDATE"}, nil
	}})
	spaceID, root := s.space(t, "Prompts", nil)
	mock.Enqueue(mockllm.Reply{Content: "ok"}, mockllm.Reply{Content: "memory"})
	s.turn(t, spaceID, root, "hello")
	st, raw := s.do(t, "POST", "/spaces/"+spaceID+"/sessions/"+root+"/consolidate", nil, nil)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	assert.Equal(t, "system", reqs[0].Messages[0].Role)
	assert.Equal(t, "HOOK SYSTEM", reqs[0].Messages[0].Content, "a session without a system prompt gets the hook's")
	assert.Equal(t, "HOOK CONSOLIDATE", reqs[1].Messages[0].Content, "a space without a consolidate prompt gets the hook's")

	// The space's and the session's own prompts win over the hook's.
	own := "OWN SYSTEM"
	spaceID, root = s.space(t, "Own", nil)
	st, raw = s.do(t, "PUT", "/spaces/"+spaceID+"/sessions/"+root+"/system-prompt", map[string]string{"content": own}, nil)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	st, raw = s.do(t, "PATCH", "/spaces/"+spaceID, map[string]string{"consolidatePrompt": "SPACE CONSOLIDATE"}, nil)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	mock.Enqueue(mockllm.Reply{Content: "ok"}, mockllm.Reply{Content: "memory"})
	s.turn(t, spaceID, root, "hello")
	st, raw = s.do(t, "POST", "/spaces/"+spaceID+"/sessions/"+root+"/consolidate", nil, nil)
	require.Equal(t, http.StatusOK, st, "%s", raw)
	reqs = mock.Requests()
	require.Len(t, reqs, 4)
	assert.Equal(t, own, reqs[2].Messages[0].Content)
	assert.Equal(t, "SPACE CONSOLIDATE", reqs[3].Messages[0].Content)
}

func TestBuildSpaceErrorIs503AndRetried(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	var fail atomic.Bool
	fail.Store(true)
	var builds atomic.Int32
	s := start(t, stello.Config{Logger: zap.New(core), BuildSpace: func(context.Context, session.Space) (stello.SpaceSetup, error) {
		builds.Add(1)
		if fail.Load() {
			return stello.SpaceSetup{}, errors.New("tenant settings service is down")
		}
		return stello.SpaceSetup{}, nil
	}})
	spaceID := s.createSpace(t, "Broken", nil) // creating does not load the space
	root := s.rootOf(t, spaceID)
	st, raw := s.do(t, "GET", "/spaces/"+spaceID, nil, nil)
	assert.Equal(t, http.StatusServiceUnavailable, st)
	var body struct {
		Code  string `json:"code"`
		Error string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(raw, &body))
	assert.Equal(t, "UNAVAILABLE", body.Code)
	assert.Contains(t, body.Error, "could not be set up")
	st, _ = s.do(t, "POST", "/spaces/"+spaceID+"/sessions/"+root+"/turn", map[string]string{"input": "hi"}, nil)
	assert.Equal(t, http.StatusServiceUnavailable, st)
	_, err := s.srv.Pool().Get(context.Background(), spaceID)
	assert.ErrorIs(t, err, space.ErrBuild)

	logged := logs.FilterMessage("load space").All()
	require.NotEmpty(t, logged, "the failure is logged")
	assert.Contains(t, fmt.Sprint(logged[0].ContextMap()["error"]), "tenant settings service is down")

	fail.Store(false)
	st, raw = s.do(t, "GET", "/spaces/"+spaceID, nil, nil)
	assert.Equal(t, http.StatusOK, st, "the next request builds the space again: %s", raw)
	assert.GreaterOrEqual(t, builds.Load(), int32(4))
}

func TestBuildSpacePanicIs503(t *testing.T) {
	s := start(t, stello.Config{BuildSpace: func(context.Context, session.Space) (stello.SpaceSetup, error) {
		panic("hook exploded")
	}})
	spaceID := s.createSpace(t, "Panics", nil)
	st, raw := s.do(t, "GET", "/spaces/"+spaceID, nil, nil)
	assert.Equal(t, http.StatusServiceUnavailable, st, "%s", raw)
	st, _ = s.do(t, "GET", "/healthz", nil, nil)
	assert.Equal(t, http.StatusOK, st, "the server lives on")
}

func TestPoolGetEvictLen(t *testing.T) {
	var builds atomic.Int32
	tool := &recordTool{name: "pool_tool", answer: "{}"}
	s := start(t, stello.Config{BuildSpace: func(context.Context, session.Space) (stello.SpaceSetup, error) {
		builds.Add(1)
		return stello.SpaceSetup{Tools: []session.Tool{tool}, SystemPrompt: "pool"}, nil
	}})
	pool := s.srv.Pool()
	spaceID := s.createSpace(t, "Pooled", map[string]any{"k": "v"})
	assert.Equal(t, 0, pool.Len(), "creating a space starts no actor")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := pool.Get(ctx, spaceID)
	require.NoError(t, err)
	assert.Equal(t, spaceID, a.Space.ID)
	assert.Equal(t, "v", configOf(t, a.Space)["k"])
	require.Len(t, a.Setup.Tools, 1)
	assert.Equal(t, "pool_tool", a.Setup.Tools[0].Definition().Name)
	assert.Equal(t, "pool", a.Setup.SystemPrompt)
	assert.Equal(t, 1, pool.Len())
	_, err = pool.Get(ctx, spaceID)
	require.NoError(t, err)
	assert.Equal(t, int32(1), builds.Load(), "a resident actor is not built again")

	assert.True(t, pool.Evict(spaceID))
	require.Eventually(t, func() bool { return pool.Len() == 0 }, 10*time.Second, 5*time.Millisecond)
	assert.False(t, pool.Evict(spaceID), "not resident any more")
	_, err = pool.Get(ctx, spaceID)
	require.NoError(t, err)
	assert.Equal(t, int32(2), builds.Load(), "a new actor runs the hook again")

	_, err = pool.Get(ctx, "00000000-0000-4000-8000-000000000000")
	assert.ErrorIs(t, err, session.ErrNotFound)
	assert.Same(t, s.srv.Spaces(), s.srv.Spaces())
}

func TestCloseAnswersInFlightRequestsAndStopsActors(t *testing.T) {
	mock, model := mockModel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := stello.New(ctx, stello.Config{DatabaseURL: testutil.MigratedURL(t), Model: model})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	_, key, err := srv.Store().CreateUser(ctx, "alice")
	require.NoError(t, err)
	s := &started{srv: srv, base: "http://" + ln.Addr().String(), key: key}
	spaceID, root := s.space(t, "Closing", nil)

	// A WebSocket bound to the space.
	hdr := http.Header{"X-API-Key": {key}}
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+ln.Addr().String()+"/spaces/"+spaceID+"/ws", hdr)
	require.NoError(t, err)
	defer ws.Close()

	// A turn in flight when Close starts: the model answers after a while.
	mock.Enqueue(mockllm.Reply{Content: "finished during shutdown", Delay: 500 * time.Millisecond})
	turn := make(chan string, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				turn <- fmt.Sprint("panic: ", v)
			}
		}()
		turn <- s.turn(t, spaceID, root, "slow")
	}()
	require.Eventually(t, func() bool { return mock.Calls() == 1 }, 30*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, srv.Pool().Len())

	require.NoError(t, srv.Close(ctx))
	select {
	case got := <-turn:
		assert.Equal(t, "finished during shutdown", got, "the in-flight turn was answered")
	case <-ctx.Done():
		t.Fatal("the in-flight turn was never answered")
	}
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
	assert.Equal(t, 0, srv.Pool().Len(), "every actor stopped")

	require.NoError(t, ws.SetReadDeadline(time.Now().Add(30*time.Second)))
	for {
		_, _, err = ws.ReadMessage()
		if err != nil {
			break
		}
	}
	var ce *websocket.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, websocket.CloseGoingAway, ce.Code)

	_, err = net.DialTimeout("tcp", ln.Addr().String(), time.Second)
	assert.Error(t, err, "the listener is closed")
	assert.ErrorIs(t, srv.Serve(newListener(t)), http.ErrServerClosed, "Serve after Close refuses")
	assert.True(t, strings.HasPrefix(s.base, "http://"))
}

func newListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

func TestBuildSpaceToolHidesOneOfTheSameName(t *testing.T) {
	mock, model := mockModel(t)
	global := &recordTool{name: "shared_name", answer: `{"from":"global"}`}
	local := &recordTool{name: "shared_name", answer: `{"from":"space"}`}
	s := start(t, stello.Config{Model: model, Tools: []session.Tool{global},
		BuildSpace: func(context.Context, session.Space) (stello.SpaceSetup, error) {
			return stello.SpaceSetup{Tools: []session.Tool{local}}, nil
		}})
	spaceID, root := s.space(t, "Shadow", nil)
	mock.Enqueue(mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "shared_name", Arguments: `{}`}}}, mockllm.Reply{Content: "done"})
	assert.Equal(t, "done", s.turn(t, spaceID, root, "call it"))
	assert.Equal(t, int32(1), local.calls.Load(), "the space's tool ran")
	assert.Equal(t, int32(0), global.calls.Load(), "the global tool of the same name did not")
	reqs := mock.Requests()
	require.NotEmpty(t, reqs)
	assert.ElementsMatch(t, []string{"shared_name", session.CreateSessionToolName}, reqs[0].Tools, "offered once")
}

// TestRestartOnTheSameAddressTakesOverAtOnce: a process that starts on
// the address where a predecessor served (killed, its heartbeat still
// fresh) takes that predecessor's spaces at once instead of answering
// 503 until the predecessor's lease lapses.
func TestRestartOnTheSameAddressTakesOverAtOnce(t *testing.T) {
	url := testutil.MigratedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := pgstore.Open(ctx, url, pgstore.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	defer st.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := "http://" + ln.Addr().String()
	u, key, err := st.CreateUser(ctx, "alice")
	require.NoError(t, err)
	sp, root, err := st.CreateSpace(ctx, u.ID, session.SpaceInput{Label: "kept"})
	require.NoError(t, err)
	predecessor := uuid.NewString()
	require.NoError(t, st.RegisterNode(ctx, predecessor, addr, time.Hour))
	_, owner, err := st.AcquireSpace(ctx, sp.ID, predecessor)
	require.NoError(t, err)
	require.Nil(t, owner)
	elsewhere := uuid.NewString() // another live process, at another address
	require.NoError(t, st.RegisterNode(ctx, elsewhere, "http://127.0.0.1:1", time.Hour))

	srv, err := stello.New(ctx, stello.Config{DatabaseURL: url})
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		require.NoError(t, srv.Close(context.Background()))
		select {
		case err := <-served:
			require.ErrorIs(t, err, http.ErrServerClosed)
		case <-time.After(time.Minute):
			t.Fatal("Serve did not return after Close")
		}
	}()
	c := client.New(addr, key)
	require.Eventually(t, func() bool { return c.Health(ctx) == nil }, 10*time.Second, 10*time.Millisecond)
	meta, err := c.Session(ctx, sp.ID, root.Meta.ID)
	require.NoError(t, err, "served at once by the process now at the address")
	assert.Equal(t, "kept", meta.Label)
	var node string
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT node_id::text FROM space_leases WHERE space_id = $1", sp.ID).Scan(&node))
	assert.Equal(t, srv.NodeID(), node)
	nodes, err := st.Nodes(ctx)
	require.NoError(t, err)
	ids := []string{}
	for _, n := range nodes {
		ids = append(ids, n.ID)
	}
	assert.ElementsMatch(t, []string{srv.NodeID(), elsewhere}, ids, "only the predecessor at this address was replaced")
}
