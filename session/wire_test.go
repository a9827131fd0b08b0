package session_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/openai"
	"github.com/stellohq/stello/llm/sdkref"
	"github.com/stellohq/stello/session"
)

// recordingClient is the real OpenAI client, keeping every request the
// engine makes (with the pre-encoded history it hands over).
type recordingClient struct {
	*openai.Client
	mu   sync.Mutex
	reqs []llm.Request
}

func (r *recordingClient) record(req llm.Request) {
	req.Messages = append([]llm.Message(nil), req.Messages...) // a client keeps a copy (llm.Request)
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
}

func (r *recordingClient) Complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	r.record(req)
	return r.Client.Complete(ctx, req)
}

func (r *recordingClient) Stream(ctx context.Context, req llm.Request, fn func(llm.Delta) error) (*llm.Response, error) {
	r.record(req)
	return r.Client.Stream(ctx, req, fn)
}

// assertBodiesMatchSDK checks every request since from: the body the mock
// received equals, as JSON, the SDK's own encoding of the engine's
// messages. It returns how many of them carried a pre-encoded history.
func assertBodiesMatchSDK(t *testing.T, h *harness, rc *recordingClient, from int) int {
	t.Helper()
	got := h.mock.Requests()
	rc.mu.Lock()
	reqs := append([]llm.Request(nil), rc.reqs...)
	rc.mu.Unlock()
	require.Equal(t, len(reqs), len(got))
	pre := 0
	for i := from; i < len(reqs); i++ {
		if reqs[i].History != nil {
			pre++
		}
		want, err := sdkref.OpenAIBody("m", 0, false, reqs[i], got[i].Stream)
		require.NoError(t, err)
		var w, g any
		require.NoError(t, json.Unmarshal(want, &w))
		require.NoError(t, json.Unmarshal(got[i].Body, &g), "request %d", i)
		assert.Equal(t, w, g, "request %d", i)
	}
	return pre
}

// TestTurnBodiesEqualSDKEncodingAcrossTurnsAndInvalidations: turn after
// turn from the cached history (tool calls, multi-byte text, streamed and
// not), after sanitising a loaded history, after a summary and after a
// consolidation, the body the model receives equals what the SDK would
// have sent, and the history is encoded once and then only extended.
func TestTurnBodiesEqualSDKEncodingAcrossTurnsAndInvalidations(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{MaxContextTokens: 1400}, session.SpaceInput{SystemPrompt: ptr("Système: réponds brièvement 🙂")})
	rc := &recordingClient{Client: h.client}
	h.eng = session.NewEngine(h.store, rc, nil, session.Options{MaxContextTokens: 1400})

	// A stored history with an unpaired tool call: loading it sanitises it.
	h.commit(h.rootID, user("old question"), toolCall("", call("call_x", "fork_session", `{"label":"lost"}`)))
	h.commit(h.rootID, user("日本語の質問 🎌"), assistant("答え \"quoted\" \\ <b>&</b>"))

	var hist *session.History
	turn := func(input string, stream bool) {
		t.Helper()
		req := h.request(h.rootID, input)
		req.History = hist
		if stream {
			req.OnDelta = func(string) {}
		}
		res, err := h.eng.Turn(h.ctx, req)
		require.NoError(t, err)
		hist = res.History
	}
	h.mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{ID: "call_1", Name: "no_such_tool", Arguments: `{"q":"ü"}`}}},
		mockllm.Reply{Content: "after the tool — ✓"},
		mockllm.Reply{Content: "second"},
		mockllm.Reply{Content: "third, streamed"},
	)
	turn("first — with a tool", false)
	turn("second", false)
	turn("third", true)
	assert.Equal(t, 4, assertBodiesMatchSDK(t, h, rc, 0), "every turn call carries the encoded history")

	// Consolidation writes memory, which is part of the head, not of the
	// history: the encoding stays valid.
	h.mock.Enqueue(mockllm.Reply{Content: "memory: likes 🍣"})
	sp, st := h.state(h.rootID)
	_, err := h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	n := len(h.mock.Requests())
	h.mock.Enqueue(mockllm.Reply{Content: "fourth"})
	turn("fourth", false)
	last := h.mock.Requests()[n]
	assert.Contains(t, string(last.Body), "likes 🍣")
	assertBodiesMatchSDK(t, h, rc, 0)

	// Long inputs push the history over the budget: it is summarised, the
	// encoding rebuilt, and later turns extend the new one.
	for i := 0; i < 4; i++ {
		h.mock.Enqueue(mockllm.Reply{Content: "summary so far ✓"}, mockllm.Reply{Content: "long reply " + strings.Repeat("é", 300)})
		turn("long input "+strings.Repeat("ß", 600), i%2 == 1)
	}
	require.NotNil(t, h.memoryState(h.rootID).Summary, "the history was summarised")
	pre := assertBodiesMatchSDK(t, h, rc, 0)
	assert.GreaterOrEqual(t, pre, 8)
}

// TestTurnEndingEarlyStoresNothing: a reply that ends before the model
// said it was complete fails the turn as a provider error and leaves the
// session as it was, streamed or not.
func TestTurnEndingEarlyStoresNothing(t *testing.T) {
	t.Parallel()
	for _, stream := range []bool{false, true} {
		h := newHarness(t, session.Options{}, session.SpaceInput{})
		h.mock.Enqueue(mockllm.Reply{Content: "a whole answer"})
		_, err := h.turn(h.rootID, "first")
		require.NoError(t, err)
		before := h.records(h.rootID)

		h.mock.Enqueue(mockllm.Reply{Content: "the answer is forty", EndEarly: true})
		req := h.request(h.rootID, "second")
		var chunks []string
		if stream {
			req.OnDelta = func(c string) { chunks = append(chunks, c) }
		}
		_, err = h.eng.Turn(h.ctx, req)
		require.Error(t, err)
		assert.ErrorIs(t, err, llm.ErrProvider, "stream %v", stream)
		assert.Equal(t, before, h.records(h.rootID), "stream %v", stream)
		_, st := h.state(h.rootID)
		assert.Equal(t, 1, st.Meta.TurnCount, "stream %v", stream)
	}
}

// TestAPITurnEndingEarlyAnswersLLMError: through the API, a truncated
// model reply is 502 LLM_ERROR (an SSE error event when streaming) and the
// session's records and turn count are unchanged.
func TestAPITurnEndingEarlyAnswersLLMError(t *testing.T) {
	t.Parallel()
	mock := mockllm.New(mockllm.Config{})
	client := testutil.ModelClient(t, mock)
	stack := testutil.NewStack(t, testutil.StackOptions{LLM: client})
	_, key := stack.User(t, "u")
	api := func(method, path string, body any, accept string) (*http.Response, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, stack.URL+path, rd)
		req.Header.Set("X-API-Key", key)
		req.Header.Set("Content-Type", "application/json")
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, b
	}
	var sp struct{ ID string }
	res, b := api(http.MethodPost, "/spaces", map[string]any{"label": "s"}, "")
	require.Equal(t, http.StatusCreated, res.StatusCode, string(b))
	require.NoError(t, json.Unmarshal(b, &sp))
	var root struct{ ID string }
	_, b = api(http.MethodGet, "/spaces/"+sp.ID+"/sessions", nil, "")
	require.NoError(t, json.Unmarshal(b, &root))
	turnPath := "/spaces/" + sp.ID + "/sessions/" + root.ID + "/turn"

	mock.Enqueue(mockllm.Reply{Content: "whole"})
	res, b = api(http.MethodPost, turnPath, map[string]any{"input": "one"}, "")
	require.Equal(t, http.StatusOK, res.StatusCode, string(b))

	state := func() (int, int) {
		var msgs []any
		_, b := api(http.MethodGet, "/spaces/"+sp.ID+"/sessions/"+root.ID+"/messages", nil, "")
		require.NoError(t, json.Unmarshal(b, &msgs))
		var meta struct{ TurnCount int }
		_, b = api(http.MethodGet, "/spaces/"+sp.ID+"/sessions/"+root.ID, nil, "")
		require.NoError(t, json.Unmarshal(b, &meta))
		return len(msgs), meta.TurnCount
	}
	msgs0, turns0 := state()
	require.Equal(t, 2, msgs0)
	require.Equal(t, 1, turns0)

	mock.Enqueue(mockllm.Reply{Content: "cut short", EndEarly: true})
	res, b = api(http.MethodPost, turnPath, map[string]any{"input": "two"}, "")
	assert.Equal(t, http.StatusBadGateway, res.StatusCode, string(b))
	assert.Contains(t, string(b), "LLM_ERROR")

	mock.Enqueue(mockllm.Reply{Content: "cut short too", EndEarly: true})
	res, b = api(http.MethodPost, turnPath, map[string]any{"input": "three"}, "text/event-stream")
	require.Equal(t, http.StatusOK, res.StatusCode, string(b))
	var ev, data string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			ev = v
		}
		if v, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			data = v
		}
	}
	assert.Equal(t, "error", ev, string(b))
	assert.Contains(t, data, "LLM_ERROR")

	msgs1, turns1 := state()
	assert.Equal(t, msgs0, msgs1, "records after truncated replies")
	assert.Equal(t, turns0, turns1, "turn count after truncated replies")
}

// TestModelNULIsStrippedAndCounted: NUL characters in a reply, in tool-call
// arguments (raw or escaped) and in streamed chunks are removed before
// anything is stored or sent on, and counted; the turn commits.
func TestModelNULIsStrippedAndCounted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{ID: "call_\u00001", Name: "no_such_tool", Arguments: `{"a":"x\u0000y","b\u0000":["\u0000"],"c":"\\u0000 is text"}`}}},
		mockllm.Reply{Content: "he\x00llo\x00", Chunks: []string{"he\x00", "llo\x00"}},
	)
	req := h.request(h.rootID, "q")
	var chunks []string
	req.OnDelta = func(c string) { chunks = append(chunks, c) }
	res, err := h.eng.Turn(h.ctx, req)
	require.NoError(t, err)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "hello", *res.FinalContent)
	assert.Equal(t, "hello", strings.Join(chunks, ""))
	recs := h.records(h.rootID)
	require.Len(t, recs, 4)
	assert.Equal(t, "hello", recs[3].Content)
	require.Len(t, recs[1].ToolCalls, 1)
	assert.Equal(t, "call_1", recs[1].ToolCalls[0].ID)
	assert.JSONEq(t, `{"a":"xy","b":[""],"c":"\\u0000 is text"}`, string(recs[1].ToolCalls[0].Input))
	assert.Equal(t, "call_1", recs[2].ToolCallID)
	assert.EqualValues(t, 6, h.eng.NULStripped())
	for _, r := range recs {
		assert.False(t, strings.ContainsRune(r.Content, 0), "record %+v", r)
	}

	// Memory work too.
	h.mock.Enqueue(mockllm.Reply{Content: "mem\x00ory"})
	sp, st := h.state(h.rootID)
	out, err := h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	assert.Equal(t, "memory", *out.Memory)
	assert.EqualValues(t, 7, h.eng.NULStripped())
	assert.False(t, errors.Is(err, llm.ErrProvider))
}
