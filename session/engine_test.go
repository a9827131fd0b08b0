package session_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/openai"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
)

// harness is one space in a fresh database, an engine using the real
// OpenAI client, and a scripted mock model behind it.
type harness struct {
	t      *testing.T
	ctx    context.Context
	store  *pgstore.Store
	mock   *mockllm.Server
	eng    *session.Engine
	client *openai.Client

	hookMu sync.Mutex
	hook   func(n int) // runs synchronously inside the n-th model call
	calls  atomic.Int64

	forks atomic.Int32 // calls of the Fork func handed to turns

	userID string
	space  session.Space
	rootID string
}

func newHarness(t *testing.T, opts session.Options, in session.SpaceInput) *harness {
	t.Helper()
	h := &harness{t: t, ctx: context.Background(), store: testutil.Store(t), mock: mockllm.New(mockllm.Config{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(h.calls.Add(1))
		h.hookMu.Lock()
		hook := h.hook
		h.hookMu.Unlock()
		if hook != nil {
			hook(n)
		}
		h.mock.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	client, err := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "m", MaxRetries: 0})
	require.NoError(t, err)
	h.client = client
	h.eng = session.NewEngine(h.store, client, nil, opts)

	u, _, err := h.store.CreateUser(h.ctx, "tester")
	require.NoError(t, err)
	h.userID = u.ID
	if in.Label == "" {
		in.Label = "Space"
	}
	sp, root, err := h.store.CreateSpace(h.ctx, u.ID, in)
	require.NoError(t, err)
	h.space, h.rootID = sp, root.Meta.ID
	return h
}

// onRequest sets a function run inside every model call, before it is
// answered; n is the 1-based ordinal of the call.
func (h *harness) onRequest(f func(n int)) {
	h.hookMu.Lock()
	h.hook = f
	h.hookMu.Unlock()
}

// state loads the space and one of its sessions from the database, as the
// space actor would hold them.
func (h *harness) state(sessionID string) (session.Space, session.State) {
	h.t.Helper()
	sp, states, err := h.store.LoadSpace(h.ctx, h.space.ID)
	require.NoError(h.t, err)
	for _, st := range states {
		if st.Meta.ID == sessionID {
			return sp, st
		}
	}
	h.t.Fatalf("session %s not in space %s", sessionID, h.space.ID)
	return sp, session.State{}
}

// fork creates a child session directly in the store, as the space actor's
// fork does.
func (h *harness) fork(parentID, label string, scope, systemPrompt *string) session.State {
	h.t.Helper()
	st, err := h.createChild(h.ctx, h.space.ID, parentID, label, scope, systemPrompt)
	require.NoError(h.t, err)
	return st
}

func (h *harness) createChild(ctx context.Context, spaceID, parentID, label string, scope, systemPrompt *string) (session.State, error) {
	now := time.Now().UTC().Truncate(time.Microsecond)
	pid := parentID
	st := session.State{
		Meta: session.Meta{ID: uuid.NewString(), SpaceID: spaceID, ParentID: &pid, SourceSessionID: &pid,
			Label: label, Role: session.RoleStandard, Status: session.StatusActive, Scope: scope, Depth: 1,
			CreatedAt: now, UpdatedAt: now, LastActiveAt: now},
		Data: session.Data{SystemPrompt: systemPrompt},
	}
	return st, h.store.CreateSession(ctx, st, false, nil)
}

// request builds a turn request from the session's stored state, with a
// Fork func that creates the child in the store.
func (h *harness) request(sessionID, input string) session.TurnRequest {
	h.t.Helper()
	sp, st := h.state(sessionID)
	return session.TurnRequest{Space: sp, Session: st, Input: input,
		Fork: func(ctx context.Context, o session.ForkOptions) (session.Meta, error) {
			h.forks.Add(1)
			if err := o.Validate(); err != nil {
				return session.Meta{}, err
			}
			child, err := h.createChild(ctx, sp.ID, sessionID, o.Label, o.Scope, o.SystemPrompt)
			return child.Meta, err
		}}
}

func (h *harness) turn(sessionID, input string) (session.TurnResult, error) {
	h.t.Helper()
	return h.eng.Turn(h.ctx, h.request(sessionID, input))
}

// commit stores records as one turn, bypassing the engine.
func (h *harness) commit(sessionID string, recs ...session.Record) []int64 {
	h.t.Helper()
	at := time.Now().UTC().Truncate(time.Microsecond)
	for i := range recs {
		recs[i].CreatedAt = at
	}
	_, ids, err := h.store.CommitTurn(h.ctx, session.TurnCommit{SpaceID: h.space.ID, SessionID: sessionID, Records: recs, At: at})
	require.NoError(h.t, err)
	return ids
}

func (h *harness) records(sessionID string) []session.Record {
	h.t.Helper()
	recs, err := h.store.ListRecords(h.ctx, h.space.ID, sessionID, 0, 0)
	require.NoError(h.t, err)
	return recs
}

func (h *harness) setSlot(sessionID string, slot session.Slot, v string) {
	h.t.Helper()
	require.NoError(h.t, h.store.SetSlot(h.ctx, h.space.ID, sessionID, slot, &v))
}

func (h *harness) memoryState(sessionID string) session.MemoryState {
	h.t.Helper()
	ms, err := h.store.MemoryState(h.ctx, h.space.ID, sessionID)
	require.NoError(h.t, err)
	return ms
}

// assertNothingPersisted checks that a failed turn left no trace.
func (h *harness) assertNothingPersisted(sessionID string) {
	h.t.Helper()
	assert.Empty(h.t, h.records(sessionID), "records of a failed turn")
	_, st := h.state(sessionID)
	assert.Equal(h.t, 0, st.Meta.TurnCount, "turn count after a failed turn")
}

func user(c string) session.Record      { return session.Record{Role: llm.RoleUser, Content: c} }
func assistant(c string) session.Record { return session.Record{Role: llm.RoleAssistant, Content: c} }
func toolResult(id, c string) session.Record {
	return session.Record{Role: llm.RoleTool, Content: c, ToolCallID: id}
}
func toolCall(content string, calls ...llm.ToolCall) session.Record {
	return session.Record{Role: llm.RoleAssistant, Content: content, ToolCalls: calls}
}
func call(id, name, input string) llm.ToolCall {
	return llm.ToolCall{ID: id, Name: name, Input: json.RawMessage(input)}
}

func ptr(s string) *string { return &s }

// msg is a sent message reduced to what the tests compare.
type msg struct {
	Role, Content string
}

func msgs(rr mockllm.RecordedRequest) []msg {
	out := make([]msg, len(rr.Messages))
	for i, m := range rr.Messages {
		out[i] = msg{Role: m.Role, Content: m.Content}
	}
	return out
}

func lastRequest(t *testing.T, m *mockllm.Server) mockllm.RecordedRequest {
	t.Helper()
	reqs := m.Requests()
	require.NotEmpty(t, reqs)
	return reqs[len(reqs)-1]
}

func TestTurnToolLoopForksAndPersistsTheWholeTurn(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{ID: "call_1", Name: session.CreateSessionToolName, Arguments: `{"label":"Child"}`}}},
		mockllm.Reply{Content: "I opened a thread for that."},
	)

	res, err := h.turn(h.rootID, "Let us explore a sub-topic")
	require.NoError(t, err)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "I opened a thread for that.", *res.FinalContent)
	assert.Equal(t, 1, res.ToolRoundCount)
	assert.Equal(t, 1, res.ToolCallsExecuted)
	assert.Equal(t, 1, res.TurnCount)
	assert.Equal(t, int32(1), h.forks.Load(), "the Fork func runs once")

	// The child exists under the root.
	_, states, err := h.store.LoadSpace(h.ctx, h.space.ID)
	require.NoError(t, err)
	require.Len(t, states, 2)
	child := states[1]
	assert.Equal(t, "Child", child.Meta.Label)
	require.NotNil(t, child.Meta.ParentID)
	assert.Equal(t, h.rootID, *child.Meta.ParentID)

	// Every model call offers the built-in tool.
	reqs := h.mock.Requests()
	require.Len(t, reqs, 2)
	for _, r := range reqs {
		assert.Contains(t, r.Tools, session.CreateSessionToolName)
	}
	// The second call carries the tool call and its result.
	second := reqs[1].Messages
	require.Len(t, second, 3)
	assert.Equal(t, msg{"user", "Let us explore a sub-topic"}, msg{second[0].Role, second[0].Content})
	assert.Equal(t, "assistant", second[1].Role)
	require.Len(t, second[1].ToolCalls, 1)
	assert.Equal(t, "call_1", second[1].ToolCalls[0].ID)
	assert.Equal(t, session.CreateSessionToolName, second[1].ToolCalls[0].Name)
	assert.JSONEq(t, `{"label":"Child"}`, second[1].ToolCalls[0].Arguments)
	assert.Equal(t, "tool", second[2].Role)
	assert.Equal(t, "call_1", second[2].ToolCallID)
	var out struct{ SessionID, Label, ParentID string }
	require.NoError(t, json.Unmarshal([]byte(second[2].Content), &out), second[2].Content)
	assert.Equal(t, child.Meta.ID, out.SessionID)
	assert.Equal(t, "Child", out.Label)
	assert.Equal(t, h.rootID, out.ParentID)

	// All four records are persisted, in order, with the turn count.
	recs := h.records(h.rootID)
	require.Len(t, recs, 4)
	assert.Equal(t, llm.RoleUser, recs[0].Role)
	assert.Equal(t, "Let us explore a sub-topic", recs[0].Content)
	assert.Equal(t, llm.RoleAssistant, recs[1].Role)
	require.Len(t, recs[1].ToolCalls, 1)
	assert.Equal(t, "call_1", recs[1].ToolCalls[0].ID)
	assert.Equal(t, session.CreateSessionToolName, recs[1].ToolCalls[0].Name)
	assert.Equal(t, llm.RoleTool, recs[2].Role)
	assert.Equal(t, "call_1", recs[2].ToolCallID)
	assert.Equal(t, second[2].Content, recs[2].Content)
	assert.Equal(t, llm.RoleAssistant, recs[3].Role)
	assert.Equal(t, "I opened a thread for that.", recs[3].Content)
	assert.Empty(t, recs[3].ToolCalls)
	_, root := h.state(h.rootID)
	assert.Equal(t, 1, root.Meta.TurnCount)
}

func TestTurnUnknownToolAnswersAnErrorAndCompletes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{ID: "call_x", Name: "no_such_tool", Arguments: `{}`}}},
		mockllm.Reply{Content: "Sorry, that did not work."},
	)

	res, err := h.turn(h.rootID, "do something")
	require.NoError(t, err)
	assert.Equal(t, 1, res.ToolRoundCount)
	assert.Equal(t, 1, res.ToolCallsExecuted)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "Sorry, that did not work.", *res.FinalContent)

	second := lastRequest(t, h.mock).Messages
	require.Len(t, second, 3)
	assert.Equal(t, "tool", second[2].Role)
	assert.Equal(t, "call_x", second[2].ToolCallID)
	var out map[string]string
	require.NoError(t, json.Unmarshal([]byte(second[2].Content), &out), "tool error is JSON: %s", second[2].Content)
	assert.Contains(t, out["error"], "no_such_tool")

	recs := h.records(h.rootID)
	require.Len(t, recs, 4)
	assert.Equal(t, []llm.Role{llm.RoleUser, llm.RoleAssistant, llm.RoleTool, llm.RoleAssistant},
		[]llm.Role{recs[0].Role, recs[1].Role, recs[2].Role, recs[3].Role})
	assert.Equal(t, second[2].Content, recs[2].Content)
}

func TestTurnToolRoundLimitFailsCleanly(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{MaxToolRounds: 2}, session.SpaceInput{})
	for i := 0; i < 3; i++ {
		h.mock.Enqueue(mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "no_such_tool", Arguments: `{}`}}})
	}
	h.mock.Enqueue(mockllm.Reply{Content: "never reached"})

	_, err := h.turn(h.rootID, "loop forever")
	require.Error(t, err)
	assert.ErrorIs(t, err, session.ErrToolLimit)
	assert.Equal(t, 3, h.mock.Calls(), "two tool rounds run, the third request is refused")
	h.assertNothingPersisted(h.rootID)
}

func TestTurnIsAtomic(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		replies   []mockllm.Reply
		timeout   time.Duration
		wantErr   error
		wantForks int32
	}{
		{
			name:    "model error",
			replies: []mockllm.Reply{{Status: http.StatusInternalServerError, ErrorMessage: "boom"}},
			wantErr: llm.ErrProvider,
		},
		{
			name:    "deadline",
			replies: []mockllm.Reply{{Content: "too late", Delay: time.Minute}},
			timeout: 300 * time.Millisecond,
			wantErr: llm.ErrTimeout,
		},
		{
			name: "model error after a tool round",
			replies: []mockllm.Reply{
				{ToolCalls: []mockllm.ToolCall{{ID: "call_1", Name: session.CreateSessionToolName, Arguments: `{"label":"Child"}`}}},
				{Status: http.StatusInternalServerError},
			},
			wantErr:   llm.ErrProvider,
			wantForks: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, session.SpaceInput{})
			h.mock.Enqueue(tc.replies...)
			ctx := h.ctx
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			_, err := h.eng.Turn(ctx, h.request(h.rootID, "hello"))
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.wantErr)
			assert.Equal(t, len(tc.replies), h.mock.Calls())
			assert.Equal(t, tc.wantForks, h.forks.Load())
			h.assertNothingPersisted(h.rootID)
		})
	}
}

func TestTurnRejectsEmptyInput(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	for _, in := range []string{"", "  \n\t"} {
		_, err := h.turn(h.rootID, in)
		require.Error(t, err)
		assert.ErrorIs(t, err, session.ErrInvalid)
		var fe *session.FieldError
		require.ErrorAs(t, err, &fe)
		assert.Equal(t, "input", fe.Field)
	}
	assert.Zero(t, h.mock.Calls())
	h.assertNothingPersisted(h.rootID)
}

func TestTurnInsightIsConsumedExactlyOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.setSlot(h.rootID, session.SlotInsight, "Mention the budget.")
	const shown = "Insight from the coordinating session (consider it in this reply):\nMention the budget."

	h.mock.Enqueue(mockllm.Reply{Content: "first"}, mockllm.Reply{Content: "second"})
	res, err := h.turn(h.rootID, "one")
	require.NoError(t, err)
	require.NotNil(t, res.ConsumedInsight)
	assert.Equal(t, "Mention the budget.", *res.ConsumedInsight)
	assert.Equal(t, []msg{{"system", shown}, {"user", "one"}}, msgs(lastRequest(t, h.mock)))

	_, st := h.state(h.rootID)
	assert.Nil(t, st.Data.Insight, "the insight is cleared by the commit")

	res, err = h.turn(h.rootID, "two")
	require.NoError(t, err)
	assert.Nil(t, res.ConsumedInsight)
	for _, m := range lastRequest(t, h.mock).Messages {
		assert.NotContains(t, m.Content, "Mention the budget.")
	}
}

func TestTurnKeepsAnInsightWrittenWhileItRuns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.setSlot(h.rootID, session.SlotInsight, "old advice")
	req := h.request(h.rootID, "hello")
	// Integration writes a new insight while the model is answering.
	h.onRequest(func(n int) {
		if n == 1 {
			v := "new advice"
			assert.NoError(t, h.store.SetSlot(h.ctx, h.space.ID, h.rootID, session.SlotInsight, &v))
		}
	})
	h.mock.Enqueue(mockllm.Reply{Content: "ok"})

	res, err := h.eng.Turn(h.ctx, req)
	require.NoError(t, err)
	require.NotNil(t, res.ConsumedInsight)
	assert.Equal(t, "old advice", *res.ConsumedInsight)
	assert.Contains(t, lastRequest(t, h.mock).Messages[0].Content, "old advice")

	_, st := h.state(h.rootID)
	require.NotNil(t, st.Data.Insight, "the newer insight survives the commit")
	assert.Equal(t, "new advice", *st.Data.Insight)
}

func TestTurnStreamsDeltas(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.mock.Enqueue(mockllm.Reply{Chunks: []string{"Hel", "lo ", "there"}})
	var mu sync.Mutex
	var got []string
	req := h.request(h.rootID, "hi")
	req.OnDelta = func(c string) {
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
	}
	res, err := h.eng.Turn(h.ctx, req)
	require.NoError(t, err)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "Hello there", *res.FinalContent)
	mu.Lock()
	assert.Equal(t, "Hello there", strings.Join(got, ""))
	mu.Unlock()
	assert.True(t, lastRequest(t, h.mock).Stream)
	recs := h.records(h.rootID)
	require.Len(t, recs, 2)
	assert.Equal(t, "Hello there", recs[1].Content)
}

func TestTurnUsesTheCallersHistory(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	// The store holds other records than the cache: the engine must not
	// read them when given a history.
	h.commit(h.rootID, user("stored question"), assistant("stored answer"))
	cached := &session.History{Records: make([]session.Record, 0, 16)}
	cached.Records = append(cached.Records,
		session.Record{ID: 1, Role: llm.RoleUser, Content: "cached question"},
		session.Record{ID: 2, Role: llm.RoleAssistant, Content: "cached answer"})
	before := append([]session.Record(nil), cached.Records...)

	h.mock.Enqueue(mockllm.Reply{Content: "reply"})
	req := h.request(h.rootID, "new question")
	req.History = cached
	res, err := h.eng.Turn(h.ctx, req)
	require.NoError(t, err)
	assert.Equal(t, []msg{{"user", "cached question"}, {"assistant", "cached answer"}, {"user", "new question"}},
		msgs(lastRequest(t, h.mock)))

	// The caller's history is untouched; the result extends it with the
	// committed records and their ids.
	assert.Equal(t, before, cached.Records)
	require.NotNil(t, res.History)
	require.Len(t, res.History.Records, 4)
	assert.Equal(t, before, res.History.Records[:2])
	stored := h.records(h.rootID)
	require.Len(t, stored, 4)
	for i, r := range res.History.Records[2:] {
		assert.Equal(t, stored[2+i].ID, r.ID)
		assert.Equal(t, stored[2+i].Role, r.Role)
		assert.Equal(t, stored[2+i].Content, r.Content)
	}
}

func TestTurnResultHistoryChainsLikeTheStore(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{ID: "call_1", Name: "no_such_tool", Arguments: `{}`}}},
		mockllm.Reply{Content: "r1"},
		mockllm.Reply{Content: "r2"},
		mockllm.Reply{Content: "r3"},
	)
	var hist *session.History
	for _, in := range []string{"q1", "q2"} {
		req := h.request(h.rootID, in)
		req.History = hist
		res, err := h.eng.Turn(h.ctx, req)
		require.NoError(t, err)
		hist = res.History
	}
	// The chained history equals what the store holds.
	stored := h.records(h.rootID)
	require.Len(t, hist.Records, len(stored))
	for i := range stored {
		assert.Equal(t, stored[i].ID, hist.Records[i].ID)
		assert.Equal(t, stored[i].Role, hist.Records[i].Role)
		assert.Equal(t, stored[i].Content, hist.Records[i].Content)
		assert.Equal(t, stored[i].ToolCallID, hist.Records[i].ToolCallID)
		assert.Len(t, hist.Records[i].ToolCalls, len(stored[i].ToolCalls))
	}

	// A turn from the cached history sends the same context as one read
	// from the store.
	req := h.request(h.rootID, "q3")
	req.History = hist
	_, err := h.eng.Turn(h.ctx, req)
	require.NoError(t, err)
	cachedCtx := lastRequest(t, h.mock)
	loaded, err := h.eng.LoadHistory(h.ctx, h.space.ID, h.rootID)
	require.NoError(t, err)
	require.Len(t, loaded.Records, len(stored)+2)
	var want []msg
	for _, r := range loaded.Records[:len(stored)] {
		want = append(want, msg{string(r.Role), r.Content})
	}
	want = append(want, msg{"user", "q3"})
	assert.Equal(t, want, msgs(cachedCtx))
	assertPairedHistory(t, cachedCtx.Messages)
}
