package transport_test

import (
	"bufio"
	"bytes"
	"encoding/json"

	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/transport"
)

// turnGate holds every model request until a token is given (one request
// per token) or the gate is opened for all; it counts requests that arrived.
type turnGate struct {
	next    chan struct{}
	open    chan struct{}
	once    sync.Once
	arrived atomic.Int32
}

func newTurnGate() *turnGate {
	return &turnGate{next: make(chan struct{}, 64), open: make(chan struct{})}
}

func (g *turnGate) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.arrived.Add(1)
		select {
		case <-g.next:
		case <-g.open:
		case <-r.Context().Done():
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (g *turnGate) openAll() { g.once.Do(func() { close(g.open) }) }
func (g *turnGate) wait(t *testing.T, n int32) {
	t.Helper()
	require.Eventually(t, func() bool { return g.arrived.Load() >= n }, 10*time.Second, 2*time.Millisecond,
		"waiting for %d model requests", n)
}

// turnsEnv is a stack over the real OpenAI client talking to the mock
// model behind a gate.
type turnsEnv struct {
	*restEnv
	mock    *mockllm.Server
	gate    *turnGate
	spaceID string
	root    string
	path    string
}

func newTurnsEnv(t *testing.T, o testutil.StackOptions, extra func(http.Handler) http.Handler) *turnsEnv {
	t.Helper()
	g := newTurnGate()
	t.Cleanup(g.openAll)
	mock, cl := mockModel(t, func(h http.Handler) http.Handler {
		if extra != nil {
			h = extra(h)
		}
		return g.wrap(h)
	})
	o.LLM = cl
	e := &turnsEnv{restEnv: newRESTEnv(t, o), mock: mock, gate: g}
	sp, root := e.space(t, e.c, map[string]any{"label": "turns"})
	e.spaceID, e.root = sp.ID, root
	e.path = "/spaces/" + sp.ID + "/sessions/" + root
	return e
}

// rawResp is an HTTP answer read whole.
type rawResp struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// post sends a request without testing.T, so it may run on any goroutine.
func (e *turnsEnv) send(method, path, body string, hdr ...string) rawResp {
	req, err := http.NewRequest(method, e.c.base+path, strings.NewReader(body))
	if err != nil {
		return rawResp{err: err}
	}
	req.Header.Set("X-API-Key", e.c.key)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return rawResp{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return rawResp{status: res.StatusCode, header: res.Header, body: b, err: err}
}

func (e *turnsEnv) goSend(method, path, body string, hdr ...string) <-chan rawResp {
	ch := make(chan rawResp, 1)
	go func() { ch <- e.send(method, path, body, hdr...) }()
	return ch
}

func recvResp(t *testing.T, ch <-chan rawResp) rawResp {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no answer")
		return rawResp{}
	}
}

func respCode(t *testing.T, r rawResp) string {
	t.Helper()
	var e struct{ Code string }
	require.NoError(t, json.Unmarshal(r.body, &e), string(r.body))
	return e.Code
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	id, name, data string
}

// sseStream reads events from a streamed response as they come.
type sseStream struct {
	res *http.Response
	sc  *bufio.Scanner
}

func (e *turnsEnv) openSSE(t *testing.T, method, path, body string, hdr ...string) *sseStream {
	t.Helper()
	req, err := http.NewRequest(method, e.c.base+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-API-Key", e.c.key)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("status %d: %s", res.StatusCode, b)
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20) // a catch-up event holds the whole text so far
	return &sseStream{res: res, sc: sc}
}

func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	var ev sseEvent
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			ev.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		case line == "" && ev.name != "":
			return ev
		}
	}
	t.Fatalf("stream ended without an event: %v", s.sc.Err())
	return ev
}

// rest reads events until end or error and returns the text of the deltas
// and the last event.
func (s *sseStream) rest(t *testing.T) (string, sseEvent) {
	t.Helper()
	var text strings.Builder
	for {
		ev := s.next(t)
		switch ev.name {
		case "delta":
			var d struct{ Chunk string }
			require.NoError(t, json.Unmarshal([]byte(ev.data), &d))
			text.WriteString(d.Chunk)
		case "end", "error":
			return text.String(), ev
		}
	}
}

func startTurnID(t *testing.T, ev sseEvent) string {
	t.Helper()
	require.Equal(t, "start", ev.name, ev.data)
	var s struct{ TurnID, SessionID string }
	require.NoError(t, json.Unmarshal([]byte(ev.data), &s))
	require.NotEmpty(t, s.TurnID)
	return s.TurnID
}

func (e *turnsEnv) getTurn(t *testing.T, id string) transport.TurnObject {
	t.Helper()
	return restOK[transport.TurnObject](t, e.c.do("GET", e.path+"/turns/"+id, nil), http.StatusOK)
}

func TestTurnIDsAndTheTurnLog(t *testing.T) {
	t.Parallel()
	e := newTurnsEnv(t, testutil.StackOptions{}, nil)
	e.gate.openAll()
	e.mock.Enqueue(mockllm.Reply{Content: "first answer"})
	r := e.c.do("POST", e.path+"/turn", map[string]any{"input": "hello"})
	res := restOK[transport.TurnResult](t, r, http.StatusOK)
	require.NotEmpty(t, res.TurnID)
	assert.Equal(t, res.TurnID, r.Header.Get("Stello-Turn-Id"))

	got := e.getTurn(t, res.TurnID)
	assert.Equal(t, "completed", got.State)
	assert.Equal(t, "hello", got.Input)
	assert.Equal(t, e.root, got.SessionID)
	require.NotNil(t, got.FinishedAt)
	require.NotNil(t, got.Result)
	assert.Equal(t, res.TurnID, got.Result.TurnID)
	require.NotNil(t, got.Result.Turn.FinalContent)
	assert.Equal(t, "first answer", *got.Result.Turn.FinalContent)
	assert.Nil(t, got.Error)

	// A turn is found only under its own space and session.
	child := e.fork(t, e.c, e.spaceID, e.root, map[string]any{"label": "other"})
	restErr(t, e.c.do("GET", "/spaces/"+e.spaceID+"/sessions/"+child.ID+"/turns/"+res.TurnID, nil), http.StatusNotFound, "NOT_FOUND")
	sp2, root2 := e.space(t, e.c, map[string]any{"label": "elsewhere"})
	restErr(t, e.c.do("GET", "/spaces/"+sp2.ID+"/sessions/"+root2+"/turns/"+res.TurnID, nil), http.StatusNotFound, "NOT_FOUND")
	restErr(t, e.c.do("GET", e.path+"/turns/{"+res.TurnID+"}", nil), http.StatusNotFound, "NOT_FOUND")
	_, bob := e.user(t, "bob")
	restErr(t, bob.do("GET", e.path+"/turns/"+res.TurnID, nil), http.StatusForbidden, "FORBIDDEN")

	// A failed turn leaves a row with its error.
	e.mock.Enqueue(mockllm.Reply{Status: 500, ErrorMessage: "model on fire"})
	r = e.c.do("POST", e.path+"/turn", map[string]any{"input": "fail please"})
	restErr(t, r, http.StatusBadGateway, "LLM_ERROR")
	failedID := r.Header.Get("Stello-Turn-Id")
	require.NotEmpty(t, failedID)
	failed := e.getTurn(t, failedID) // at once: from memory until its row is written
	assert.Equal(t, "failed", failed.State)
	require.Eventually(t, func() bool {
		var n int
		err := e.stack.Store.Pool().QueryRow(t.Context(), "SELECT count(*) FROM turns WHERE id = $1", failedID).Scan(&n)
		return err == nil && n == 1
	}, 5*time.Second, 10*time.Millisecond, "the failed turn's row is written")
	failed = e.getTurn(t, failedID)
	assert.Equal(t, "failed", failed.State)
	require.NotNil(t, failed.Error)
	assert.Equal(t, "LLM_ERROR", failed.Error.Code)
	assert.Nil(t, failed.Result)
}

func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	e := newTurnsEnv(t, testutil.StackOptions{}, nil)
	e.gate.openAll()

	// Repeat after completion: the stored result, the model is called once.
	e.mock.Enqueue(mockllm.Reply{Content: "only once"})
	first := restOK[transport.TurnResult](t, e.c.do("POST", e.path+"/turn", map[string]any{"input": "pay"}, "Idempotency-Key", "k1"), http.StatusOK)
	again := e.c.do("POST", e.path+"/turn", map[string]any{"input": "pay"}, "Idempotency-Key", "k1")
	second := restOK[transport.TurnResult](t, again, http.StatusOK)
	assert.Equal(t, first.TurnID, second.TurnID)
	assert.Equal(t, first.TurnID, again.Header.Get("Stello-Turn-Id"))
	assert.Equal(t, *first.Turn.FinalContent, *second.Turn.FinalContent)
	assert.Equal(t, 1, e.mock.Calls())
	assert.Len(t, e.messages(t, e.c, e.spaceID, e.root), 2, "the turn is stored once")

	// Also as a stream: start with the same id, the stored text, end.
	s := e.openSSE(t, "POST", e.path+"/turn", `{"input":"pay"}`, "Idempotency-Key", "k1")
	assert.Equal(t, first.TurnID, startTurnID(t, s.next(t)))
	text, last := s.rest(t)
	assert.Equal(t, "end", last.name)
	assert.Equal(t, "only once", text)
	assert.Equal(t, 1, e.mock.Calls())

	// Same key, another input: 409 CONFLICT.
	restErr(t, e.c.do("POST", e.path+"/turn", map[string]any{"input": "pay twice"}, "Idempotency-Key", "k1"), http.StatusConflict, "CONFLICT")

	// A key whose turn failed may be used again: the repeat runs anew.
	e.mock.Enqueue(mockllm.Reply{Status: 500}, mockllm.Reply{Content: "second try"})
	bad := e.c.do("POST", e.path+"/turn", map[string]any{"input": "retry me"}, "Idempotency-Key", "k2")
	restErr(t, bad, http.StatusBadGateway, "LLM_ERROR")
	good := restOK[transport.TurnResult](t, e.c.do("POST", e.path+"/turn", map[string]any{"input": "retry me"}, "Idempotency-Key", "k2"), http.StatusOK)
	assert.NotEqual(t, bad.Header.Get("Stello-Turn-Id"), good.TurnID)
	assert.Equal(t, "second try", *good.Turn.FinalContent)

	// Keys are validated.
	restErr(t, e.c.do("POST", e.path+"/turn", map[string]any{"input": "x"}, "Idempotency-Key", strings.Repeat("k", 256)),
		http.StatusBadRequest, "BAD_REQUEST")
}

func TestIdempotencyRepeatWhileRunningAttaches(t *testing.T) {
	t.Parallel()
	e := newTurnsEnv(t, testutil.StackOptions{}, nil)
	e.mock.Enqueue(mockllm.Reply{Content: "shared answer"})
	a := e.goSend("POST", e.path+"/turn", `{"input":"once"}`, "Idempotency-Key", "same")
	e.gate.wait(t, 1)
	b := e.goSend("POST", e.path+"/turn", `{"input":"once"}`, "Idempotency-Key", "same")
	time.Sleep(100 * time.Millisecond) // b reaches the space while a runs
	e.gate.openAll()
	ra, rb := recvResp(t, a), recvResp(t, b)
	require.Equal(t, http.StatusOK, ra.status, string(ra.body))
	require.Equal(t, http.StatusOK, rb.status, string(rb.body))
	assert.Equal(t, ra.header.Get("Stello-Turn-Id"), rb.header.Get("Stello-Turn-Id"))
	assert.JSONEq(t, string(ra.body), string(rb.body))
	assert.Equal(t, 1, e.mock.Calls())
	assert.Len(t, e.messages(t, e.c, e.spaceID, e.root), 2)
}

func TestIdempotencyHoldsAcrossARestart(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	e := newTurnsEnv(t, testutil.StackOptions{Store: st}, nil)
	e.gate.openAll()
	e.mock.Enqueue(mockllm.Reply{Content: "before the restart"})
	first := restOK[transport.TurnResult](t, e.c.do("POST", e.path+"/turn", map[string]any{"input": "remember"}, "Idempotency-Key", "r1"), http.StatusOK)

	// A second server over the same database (a restart, or another process).
	mock2, cl2 := mockModel(t, nil)
	st2 := testutil.NewStack(t, testutil.StackOptions{Store: st, LLM: cl2})
	c2 := restClient{t: t, base: st2.URL, key: e.c.key}
	again := restOK[transport.TurnResult](t, c2.do("POST", e.path+"/turn", map[string]any{"input": "remember"}, "Idempotency-Key", "r1"), http.StatusOK)
	assert.Equal(t, first.TurnID, again.TurnID)
	assert.Equal(t, "before the restart", *again.Turn.FinalContent)
	assert.Zero(t, mock2.Calls(), "the model is not called again")
}

func TestIfBusyPolicies(t *testing.T) {
	t.Parallel()
	e := newTurnsEnv(t, testutil.StackOptions{}, nil)
	e.mock.Enqueue(mockllm.Reply{Content: "never stored"}, mockllm.Reply{Content: "the last word"})
	running := e.goSend("POST", e.path+"/turn", `{"input":"one"}`)
	e.gate.wait(t, 1)

	restErr(t, e.c.do("POST", e.path+"/turn?ifBusy=reject", map[string]any{"input": "two"}), http.StatusConflict, "SESSION_BUSY")
	msg := restErr(t, e.c.do("POST", e.path+"/turn?ifBusy=later", map[string]any{"input": "two"}), http.StatusBadRequest, "BAD_REQUEST")
	assert.Contains(t, msg, "ifBusy")

	queued := e.goSend("POST", e.path+"/turn?ifBusy=enqueue", `{"input":"three"}`)
	require.Eventually(t, func() bool {
		return strings.Contains(string(e.c.do("GET", e.path, nil).Body), `"turnCount":0`)
	}, time.Second, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond) // three is queued behind one
	interrupt := e.goSend("POST", e.path+"/turn?ifBusy=interrupt", `{"input":"four"}`)

	r1, r3 := recvResp(t, running), recvResp(t, queued)
	assert.Equal(t, http.StatusConflict, r1.status, string(r1.body))
	assert.Equal(t, "CANCELLED", respCode(t, r1))
	assert.Equal(t, http.StatusConflict, r3.status, string(r3.body))
	assert.Equal(t, "CANCELLED", respCode(t, r3))

	e.gate.openAll()
	r4 := recvResp(t, interrupt)
	require.Equal(t, http.StatusOK, r4.status, string(r4.body))
	msgs := e.messages(t, e.c, e.spaceID, e.root)
	require.Len(t, msgs, 2, "only the interrupting turn is stored")
	assert.Equal(t, "four", msgs[0].Content)
	for _, r := range []rawResp{r1, r3} {
		id := r.header.Get("Stello-Turn-Id")
		assert.Equal(t, "cancelled", e.getTurn(t, id).State)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	e := newTurnsEnv(t, testutil.StackOptions{}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(&wsGatedWriter{ResponseWriter: w, n: 3, gate: gate, done: r.Context().Done()}, r)
		})
	})
	e.mock.Enqueue(mockllm.Reply{Chunks: []string{"one ", "two ", "three"}})
	e.gate.openAll()

	// While streaming: the stream ends with CANCELLED, nothing is stored.
	s := e.openSSE(t, "POST", e.path+"/turn", `{"input":"stream then stop"}`)
	id := startTurnID(t, s.next(t))
	first := s.next(t)
	require.Equal(t, "delta", first.name)

	// A second turn queued behind it, cancelled while queued.
	q := e.openSSE(t, "POST", e.path+"/turn", `{"input":"queued then stop"}`)
	qid := startTurnID(t, q.next(t))
	c := restOK[transport.TurnObject](t, e.c.do("POST", e.path+"/turns/"+qid+"/cancel", nil), http.StatusAccepted)
	assert.Equal(t, "cancelled", c.State)
	_, last := q.rest(t)
	assert.Equal(t, "error", last.name)
	assert.Contains(t, last.data, `"code":"CANCELLED"`)

	c = restOK[transport.TurnObject](t, e.c.do("POST", e.path+"/turns/"+id+"/cancel", nil), http.StatusAccepted)
	assert.Equal(t, "cancelled", c.State)
	_, last = s.rest(t)
	assert.Equal(t, "error", last.name)
	assert.Contains(t, last.data, `"code":"CANCELLED"`)
	assert.Empty(t, e.messages(t, e.c, e.spaceID, e.root), "nothing of a cancelled turn is stored")
	open()

	// A turn that committed stays committed.
	e.mock.Enqueue(mockllm.Reply{Content: "done"})
	res := restOK[transport.TurnResult](t, e.c.do("POST", e.path+"/turn", map[string]any{"input": "finish"}), http.StatusOK)
	c = restOK[transport.TurnObject](t, e.c.do("POST", e.path+"/turns/"+res.TurnID+"/cancel", nil), http.StatusAccepted)
	assert.Equal(t, "completed", c.State)
	assert.Len(t, e.messages(t, e.c, e.spaceID, e.root), 2)

	restErr(t, e.c.do("POST", e.path+"/turns/00000000-0000-0000-0000-000000000000/cancel", nil), http.StatusNotFound, "NOT_FOUND")
}

func TestResumeFromOffsets(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	e := newTurnsEnv(t, testutil.StackOptions{}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(&wsGatedWriter{ResponseWriter: w, n: 3, gate: gate, done: r.Context().Done()}, r)
		})
	})
	chunks := []string{"Grüße ", "aus ", "東京 ", "und 🌸 ", "Ende"}
	want := strings.Join(chunks, "")
	e.mock.Enqueue(mockllm.Reply{Chunks: chunks})
	e.gate.openAll()

	s := e.openSSE(t, "POST", e.path+"/turn", `{"input":"greet"}`)
	id := startTurnID(t, s.next(t))
	d := s.next(t)
	require.Equal(t, "delta", d.name)
	var first struct{ Chunk string }
	require.NoError(t, json.Unmarshal([]byte(d.data), &first))
	off, err := strconv.Atoi(d.id)
	require.NoError(t, err)
	assert.Equal(t, len([]rune(first.Chunk)), off, "the event id is the code points delivered so far")

	// While running: from the last event id, and from the middle of it.
	r1 := e.openSSE(t, "GET", e.path+"/turns/"+id+"/stream", "", "Last-Event-ID", d.id)
	assert.Equal(t, id, startTurnID(t, r1.next(t)))
	r2 := e.openSSE(t, "GET", e.path+"/turns/"+id+"/stream?from=2", "")
	assert.Equal(t, id, startTurnID(t, r2.next(t)))
	open()
	rest1, end1 := r1.rest(t)
	rest2, end2 := r2.rest(t)
	orig, endO := s.rest(t)
	for _, ev := range []sseEvent{end1, end2, endO} {
		assert.Equal(t, "end", ev.name, ev.data)
	}
	assert.Equal(t, want, first.Chunk+orig)
	assert.Equal(t, want, first.Chunk+rest1)
	assert.Equal(t, want, string([]rune(want)[:2])+rest2)

	// After completion: from the stored reply.
	for _, from := range []int{0, 7, 12, len([]rune(want)), len([]rune(want)) + 5} {
		r := e.openSSE(t, "GET", e.path+"/turns/"+id+"/stream?from="+strconv.Itoa(from), "")
		assert.Equal(t, id, startTurnID(t, r.next(t)))
		text, end := r.rest(t)
		assert.Equal(t, "end", end.name)
		wantRest := ""
		if from < len([]rune(want)) {
			wantRest = string([]rune(want)[from:])
		}
		assert.Equal(t, wantRest, text, "from %d", from)
	}
	for _, bad := range []string{"-1", "x", "1.5", "99999999999999999999"} {
		msg := restErr(t, e.c.do("GET", e.path+"/turns/"+id+"/stream?from="+bad, nil), http.StatusBadRequest, "BAD_REQUEST")
		assert.Contains(t, msg, "from")
	}
	restErr(t, e.c.do("GET", e.path+"/turns/"+id+"/stream", nil, "Last-Event-ID", "abc"), http.StatusBadRequest, "BAD_REQUEST")
}

func TestWSTurnObjectsAndSpaceEvents(t *testing.T) {
	t.Parallel()
	mock, cl := mockModel(t, nil)
	e := newWSEnv(t, testutil.StackOptions{LLM: cl})
	c := e.dial(t, e.spaceID)
	quiet := e.dial(t, e.spaceID) // never subscribes
	wsSend(t, c, map[string]any{"type": "space.subscribe", "id": "sub"})
	wsEnter(t, c, e.rootID)

	// A streamed turn: start, deltas and end all carry the turn id.
	mock.Enqueue(mockllm.Reply{Chunks: []string{"a ", "b ", "c"}})
	wsSend(t, c, map[string]any{"type": "session.stream", "id": "s", "input": "go", "idempotencyKey": "w1"})
	var turnID, text string
	var sawCommit bool
	for done := false; !done; {
		m := wsRead(t, c)
		switch m.Type {
		case "stream.start":
			turnID = wsTurnID(t, m)
		case "stream.delta":
			assert.Equal(t, turnID, wsTurnID(t, m))
			text += m.Chunk
		case "stream.end":
			assert.Equal(t, turnID, wsTurnID(t, m))
			done = true
		case "space.event":
			sawCommit = sawCommit || strings.Contains(m.raw, `"event":"turn.committed"`)
		default:
			t.Fatalf("unexpected %s", m.raw)
		}
	}
	assert.Equal(t, "a b c", text)
	if !sawCommit {
		m := wsRead(t, c)
		assert.Contains(t, m.raw, `"event":"turn.committed"`)
		assert.Contains(t, m.raw, turnID)
		assert.Contains(t, m.raw, `"turnCount":1`)
	}

	// Attach from an offset after completion.
	wsSend(t, c, map[string]any{"type": "turn.attach", "id": "att", "turnId": turnID, "from": 2})
	m := wsRead(t, c)
	require.Equal(t, "stream.start", m.Type, m.raw)
	m = wsRead(t, c)
	require.Equal(t, "stream.delta", m.Type, m.raw)
	assert.Equal(t, "b c", m.Chunk)
	m = wsRead(t, c)
	require.Equal(t, "stream.end", m.Type, m.raw)

	// Events whoever causes them: a fork and an archive over REST, a fork
	// by the model's tool, a consolidation.
	child := e.fork(t, e.rootID, map[string]any{"label": "by REST"})
	expectEvent(t, c, "session.created", child)
	wsREST(t, e.stack, http.MethodPost, "/spaces/"+e.spaceID+"/sessions/"+child+"/archive", e.key, nil, http.StatusOK, nil)
	expectEvent(t, c, "session.archived", child)
	wsREST(t, e.stack, http.MethodPut, "/spaces/"+e.spaceID+"/sessions/"+e.rootID+"/system-prompt", e.key,
		map[string]any{"content": "be brief"}, http.StatusOK, nil)
	expectEvent(t, c, "session.updated", e.rootID)

	mock.Enqueue(mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "stello_create_session", Arguments: `{"label":"by the model"}`}}},
		mockllm.Reply{Content: "forked"})
	wsREST(t, e.stack, http.MethodPost, "/spaces/"+e.spaceID+"/sessions/"+e.rootID+"/turn", e.key,
		map[string]any{"input": "make a fork"}, http.StatusOK, nil)
	ev := expectEvent(t, c, "session.created", "")
	assert.Contains(t, ev.raw, "by the model")
	expectEvent(t, c, "turn.committed", e.rootID)

	mock.Enqueue(mockllm.Reply{Content: "the memory"})
	wsREST(t, e.stack, http.MethodPost, "/spaces/"+e.spaceID+"/sessions/"+e.rootID+"/consolidate", e.key, nil, http.StatusOK, nil)
	expectEvent(t, c, "memory.updated", e.rootID)

	// The connection that did not subscribe got none of it.
	require.NoError(t, quiet.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	_, data, err := quiet.ReadMessage()
	require.Error(t, err, "a connection that did not subscribe receives no event: %s", data)
}

func wsTurnID(t *testing.T, m wsMsg) string {
	t.Helper()
	var v struct {
		TurnID string `json:"turnId"`
	}
	require.NoError(t, json.Unmarshal([]byte(m.raw), &v))
	require.NotEmpty(t, v.TurnID, m.raw)
	return v.TurnID
}

// expectEvent reads until a space event of the kind (for the session, when
// given) and returns it.
func expectEvent(t *testing.T, c interface {
	ReadMessage() (int, []byte, error)
	SetReadDeadline(time.Time) error
}, kind, sessionID string) wsMsg {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wsWait)))
	for {
		_, data, err := c.ReadMessage()
		require.NoError(t, err, "waiting for %s", kind)
		var m wsMsg
		require.NoError(t, json.Unmarshal(data, &m))
		m.raw = string(data)
		if m.Type != "space.event" {
			continue
		}
		var ev struct{ Event, SessionID string }
		require.NoError(t, json.Unmarshal(data, &ev))
		if ev.Event == kind && (sessionID == "" || ev.SessionID == sessionID) {
			return m
		}
	}
}

func FuzzParseOffset(f *testing.F) {
	for _, s := range []string{"", "0", "7", "007", "-1", "+1", " 1", "1 ", "1e3", "0x10", "99999999999999999999", "１２", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := transport.ParseOffset(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("%q parsed to a negative offset %d", s, n)
		}
		if s != "" && strings.TrimLeft(s, "0") != strings.TrimLeft(strconv.Itoa(n), "0") {
			t.Fatalf("%q parsed to %d", s, n)
		}
		if bytes.ContainsAny([]byte(s), " +-") {
			t.Fatalf("%q accepted", s)
		}
	})
}
