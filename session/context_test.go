package session_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/session"
)

const (
	memoryPrefix  = "Memory of this session so far:\n"
	insightPrefix = "Insight from the coordinating session (consider it in this reply):\n"
	summaryPrefix = "Summary of the earlier conversation:\n"
)

func TestTurnContextOrder(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		space session.SpaceInput
		// setup returns the session to run the turn on.
		setup func(h *harness) string
		want  []msg
	}{
		{
			name:  "no optional parts",
			setup: func(h *harness) string { return h.rootID },
			want:  []msg{{"user", "hello"}},
		},
		{
			name:  "empty system prompt is omitted",
			space: session.SpaceInput{SystemPrompt: ptr("")},
			setup: func(h *harness) string { return h.rootID },
			want:  []msg{{"user", "hello"}},
		},
		{
			name:  "system prompt only",
			space: session.SpaceInput{SystemPrompt: ptr("You are terse.")},
			setup: func(h *harness) string { return h.rootID },
			want:  []msg{{"system", "You are terse."}, {"user", "hello"}},
		},
		{
			name: "all parts",
			setup: func(h *harness) string {
				c := h.fork(h.rootID, "Cats", ptr("Only cats"), ptr("You are a cat expert."))
				h.setSlot(c.Meta.ID, session.SlotMemory, "The user has two cats.")
				h.setSlot(c.Meta.ID, session.SlotInsight, "Ask about their names.")
				return c.Meta.ID
			},
			want: []msg{
				{"system", "You are a cat expert."},
				{"system", "Scope of this session: Only cats"},
				{"system", memoryPrefix + "The user has two cats."},
				{"system", insightPrefix + "Ask about their names."},
				{"user", "hello"},
			},
		},
		{
			name:  "history with a tool-call group",
			space: session.SpaceInput{SystemPrompt: ptr("Be kind.")},
			setup: func(h *harness) string {
				h.setSlot(h.rootID, session.SlotMemory, "Nothing yet.")
				h.commit(h.rootID, user("make a child"),
					toolCall("", call("call_a", session.CreateSessionToolName, `{"label":"X"}`)),
					toolResult("call_a", `{"sessionId":"s1"}`),
					assistant("done"))
				h.commit(h.rootID, user("thanks"), assistant("welcome"))
				return h.rootID
			},
			want: []msg{
				{"system", "Be kind."},
				{"system", memoryPrefix + "Nothing yet."},
				{"user", "make a child"},
				{"assistant", ""},
				{"tool", `{"sessionId":"s1"}`},
				{"assistant", "done"},
				{"user", "thanks"},
				{"assistant", "welcome"},
				{"user", "hello"},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, tc.space)
			id := tc.setup(h)
			h.mock.Enqueue(mockllm.Reply{Content: "hi"})
			_, err := h.turn(id, "hello")
			require.NoError(t, err)
			reqs := h.mock.Requests()
			require.Len(t, reqs, 1)
			assert.Equal(t, tc.want, msgs(reqs[0]))
			for i, m := range reqs[0].Messages {
				if m.Role == "assistant" && i+1 < len(reqs[0].Messages) && reqs[0].Messages[i+1].Role == "tool" {
					require.Len(t, m.ToolCalls, 1)
					assert.Equal(t, "call_a", m.ToolCalls[0].ID)
					assert.Equal(t, session.CreateSessionToolName, m.ToolCalls[0].Name)
					assert.JSONEq(t, `{"label":"X"}`, m.ToolCalls[0].Arguments)
					assert.Equal(t, "call_a", reqs[0].Messages[i+1].ToolCallID)
				}
			}
		})
	}
}

// assertPairedHistory checks what a provider requires of a history: no tool
// result opens it, every assistant tool call is followed by its results, and
// every result follows its call.
func assertPairedHistory(t *testing.T, ms []mockllm.RecordedMessage) {
	t.Helper()
	i := 0
	for i < len(ms) && ms[i].Role == "system" {
		i++
	}
	require.Less(t, i, len(ms))
	assert.Equal(t, "user", ms[i].Role, "the history after the head starts with a user message")
	for ; i < len(ms); i++ {
		m := ms[i]
		switch {
		case m.Role == "assistant" && len(m.ToolCalls) > 0:
			for k, c := range m.ToolCalls {
				j := i + 1 + k
				if assert.Less(t, j, len(ms), "result of %s missing", c.ID) {
					assert.Equal(t, "tool", ms[j].Role, "message after call %s", c.ID)
					assert.Equal(t, c.ID, ms[j].ToolCallID)
				}
			}
			i += len(m.ToolCalls)
		case m.Role == "tool":
			t.Errorf("message %d: tool result %q without its call right before it", i, m.ToolCallID)
		}
	}
}

func TestTurnHistorySanitisation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		recs []session.Record
		want []msg
	}{
		{
			name: "call without result and without text is dropped",
			recs: []session.Record{user("q1"), toolCall("", call("call_x", session.CreateSessionToolName, `{}`)), assistant("a1")},
			want: []msg{{"user", "q1"}, {"assistant", "a1"}, {"user", "next"}},
		},
		{
			name: "call without result keeps its text",
			recs: []session.Record{user("q1"), toolCall("let me check", call("call_x", "lookup", `{}`)), user("q2"), assistant("a2")},
			want: []msg{{"user", "q1"}, {"assistant", "let me check"}, {"user", "q2"}, {"assistant", "a2"}, {"user", "next"}},
		},
		{
			name: "two calls with only one result",
			recs: []session.Record{user("q1"),
				toolCall("", call("call_1", "lookup", `{}`), call("call_2", "lookup", `{}`)),
				toolResult("call_1", "r1"), assistant("a1")},
			want: []msg{{"user", "q1"}, {"assistant", "a1"}, {"user", "next"}},
		},
		{
			name: "result without call",
			recs: []session.Record{user("q1"), toolResult("call_z", "orphan"), assistant("a1")},
			want: []msg{{"user", "q1"}, {"assistant", "a1"}, {"user", "next"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, session.SpaceInput{})
			h.commit(h.rootID, tc.recs...)
			h.mock.Enqueue(mockllm.Reply{Content: "fine"})
			_, err := h.turn(h.rootID, "next")
			require.NoError(t, err)
			rr := lastRequest(t, h.mock)
			assert.Equal(t, tc.want, msgs(rr))
			for _, m := range rr.Messages {
				assert.Empty(t, m.ToolCalls, "no unpaired tool call is sent")
			}
			assertPairedHistory(t, rr.Messages)
		})
	}
}

// long returns a message of about n characters starting with tag.
func long(tag string, n int) string {
	return tag + " " + strings.Repeat("x", n-len(tag)-1)
}

func TestTurnSummarisesHistoryOverBudgetAndCachesIt(t *testing.T) {
	t.Parallel()
	// The next turn reads its history from the store, or gets the cached
	// history the previous turn returned (as the space actor does).
	for _, cached := range []bool{false, true} {
		t.Run(fmt.Sprintf("cached=%v", cached), func(t *testing.T) {
			t.Parallel()
			testSummaryCaching(t, cached)
		})
	}
}

func testSummaryCaching(t *testing.T, cached bool) {
	h := newHarness(t, session.Options{MaxContextTokens: 400}, session.SpaceInput{})
	var ids []int64
	for i := 1; i <= 5; i++ {
		ids = append(ids, h.commit(h.rootID, user(long(fmt.Sprintf("u%d", i), 150)), assistant(long(fmt.Sprintf("a%d", i), 150)))...)
	}
	h.mock.Enqueue(mockllm.Reply{Content: "<think>hmm</think>Turns one to three were about x."}, mockllm.Reply{Content: "ok"})

	res, err := h.turn(h.rootID, "next")
	require.NoError(t, err)
	reqs := h.mock.Requests()
	require.Len(t, reqs, 2, "a summary call, then the turn")

	// The summary call.
	sum := reqs[0].Messages
	require.Len(t, sum, 2)
	assert.Equal(t, "system", sum[0].Role)
	assert.Contains(t, sum[0].Content, "Summarise")
	assert.Equal(t, "user", sum[1].Role)
	assert.Contains(t, sum[1].Content, "user: u1 ")
	assert.Contains(t, sum[1].Content, "assistant: a3 ")
	assert.NotContains(t, sum[1].Content, "u4 ")
	assert.Empty(t, reqs[0].Tools)

	// The turn sees the summary and only the recent turns.
	want := []msg{
		{"system", summaryPrefix + "Turns one to three were about x."},
		{"user", long("u4", 150)}, {"assistant", long("a4", 150)},
		{"user", long("u5", 150)}, {"assistant", long("a5", 150)},
		{"user", "next"},
	}
	assert.Equal(t, want, msgs(reqs[1]))

	// The summary is cached up to the last summarised record.
	ms := h.memoryState(h.rootID)
	require.NotNil(t, ms.Summary)
	assert.Equal(t, "Turns one to three were about x.", *ms.Summary)
	assert.Equal(t, ids[5], ms.SummaryThrough, "through a3")
	require.NotNil(t, res.History)
	assert.Equal(t, ms.Summary, res.History.Summary)
	assert.Equal(t, ms.SummaryThrough, res.History.SummaryThrough)
	require.Len(t, res.History.Records, 6, "u4 a4 u5 a5 and the new turn")
	assert.Equal(t, ids[6], res.History.Records[0].ID)

	// The next turn reuses it without calling the summariser.
	h.mock.Enqueue(mockllm.Reply{Content: "again ok"})
	req := h.request(h.rootID, "again")
	if cached {
		req.History = res.History
	}
	_, err = h.eng.Turn(h.ctx, req)
	require.NoError(t, err)
	reqs = h.mock.Requests()
	require.Len(t, reqs, 3, "no second summary call")
	want = append(want, msg{"assistant", "ok"}, msg{"user", "again"})
	assert.Equal(t, want, msgs(reqs[2]))

	// The stored records are untouched by summarisation.
	assert.Len(t, h.records(h.rootID), 14)
}

func TestTurnSummaryNeverSplitsAToolCallGroup(t *testing.T) {
	t.Parallel()
	group := func(h *harness, n int, resultLen int) {
		id := fmt.Sprintf("call_%d", n)
		h.commit(h.rootID,
			user(fmt.Sprintf("turn %d please", n)),
			toolCall("", call(id, session.CreateSessionToolName, fmt.Sprintf(`{"label":"L%d"}`, n))),
			toolResult(id, long(fmt.Sprintf("result%d", n), resultLen)),
			assistant(fmt.Sprintf("done %d", n)))
	}
	cases := []struct {
		name string
		// fill writes the history and returns the first user message that
		// must be kept.
		fill     func(h *harness) string
		wantKept int // history messages sent
	}{
		{
			// The newest group alone is over the budget: the cut falls
			// before it, never inside it.
			name: "newest group over budget",
			fill: func(h *harness) string {
				h.commit(h.rootID, user(long("u1", 150)), assistant(long("a1", 150)))
				group(h, 2, 900)
				return "turn 2 please"
			},
			wantKept: 4,
		},
		{
			// The budget boundary falls inside the third group: the cut
			// moves to the next user message.
			name: "boundary inside an older group",
			fill: func(h *harness) string {
				for n := 1; n <= 5; n++ {
					group(h, n, 160)
				}
				return "turn 4 please"
			},
			wantKept: 8,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{MaxContextTokens: 400}, session.SpaceInput{})
			first := tc.fill(h)
			h.mock.Enqueue(mockllm.Reply{Content: "SUMMARY"}, mockllm.Reply{Content: "ok"})
			_, err := h.turn(h.rootID, "next")
			require.NoError(t, err)
			reqs := h.mock.Requests()
			require.Len(t, reqs, 2)
			assert.Contains(t, reqs[0].Messages[0].Content, "Summarise")
			assert.NotContains(t, reqs[0].Messages[1].Content, first, "kept turns are not summarised")

			ms := reqs[1].Messages
			require.GreaterOrEqual(t, len(ms), 2)
			assert.Equal(t, msg{"system", summaryPrefix + "SUMMARY"}, msg{ms[0].Role, ms[0].Content})
			assert.Equal(t, msg{"user", first}, msg{ms[1].Role, ms[1].Content})
			assert.Len(t, ms, 1+tc.wantKept+1)
			assertPairedHistory(t, ms)
			calls := 0
			for _, m := range ms {
				calls += len(m.ToolCalls)
			}
			assert.Equal(t, tc.wantKept/4, calls, "the kept groups keep their calls")
		})
	}
}

func TestTurnSummaryTranscriptShowsToolCalls(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{MaxContextTokens: 400}, session.SpaceInput{})
	h.commit(h.rootID, user("open a thread"),
		toolCall("", call("call_1", session.CreateSessionToolName, `{"label":"Cats"}`)),
		toolResult("call_1", `{"sessionId":"abc"}`),
		assistant(long("opened", 200)))
	h.commit(h.rootID, user(long("u2", 700)), assistant(long("a2", 300)))
	h.mock.Enqueue(mockllm.Reply{Content: "S"}, mockllm.Reply{Content: "ok"})
	_, err := h.turn(h.rootID, "next")
	require.NoError(t, err)
	reqs := h.mock.Requests()
	require.Len(t, reqs, 2)
	tr := reqs[0].Messages[1].Content
	assert.Contains(t, tr, "user: open a thread\n")
	assert.Contains(t, tr, "[assistant called stello_create_session] {")
	assert.Contains(t, tr, `"Cats"}`)
	assert.Contains(t, tr, `[tool result] {"sessionId":"abc"}`)
	assert.Contains(t, tr, "assistant: opened ")
	assertPairedHistory(t, reqs[1].Messages)
	assert.Equal(t, llm.RoleUser, llm.Role(reqs[1].Messages[1].Role))
}
