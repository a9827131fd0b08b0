// Package wiretest holds what the providers' encoding tests share: a
// conversation that exercises every message shape, and a JSON comparison.
// It is imported by tests only.
package wiretest

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
)

// Tools are offered in every request of Turns.
var Tools = []llm.Tool{
	{Name: "fork_session", Description: "Fork a child session", Parameters: json.RawMessage(`{"type":"object","properties":{"label":{"type":"string","maxLength":200},"context":{"enum":["none","inherit"]}},"required":["label"]}`)},
	{Name: "no_params", Parameters: nil},
	{Name: "números", Description: "Zählt <&> \"Dinge\"", Parameters: json.RawMessage(`{"properties":{"n":{"type":"number","minimum":1.50}}}`)},
}

// Head is what precedes the history: the system prompt, memory and a
// summary of older turns.
var Head = []llm.Message{
	{Role: llm.RoleSystem, Content: "You are a test assistant.\nBe brief."},
	{Role: llm.RoleSystem, Content: "Memory of this session so far:\n- likes 🍣 and ünïcödé"},
	{Role: llm.RoleSystem, Content: "Summary of the earlier conversation:\nthe user asked about \"quotes\" and \\backslashes\\"},
}

// Turns are the committed turns of a conversation, one slice per turn: plain
// text, multi-byte text, every character JSON must escape, tool calls with
// and without text, several calls in one round, an empty tool result,
// invalid tool input and an empty reply.
var Turns = [][]llm.Message{
	{{Role: llm.RoleUser, Content: "Hello"}, {Role: llm.RoleAssistant, Content: "Hi! How can I help?"}},
	{{Role: llm.RoleUser, Content: "日本語で書いて 🎌 — «ça va?»"}, {Role: llm.RoleAssistant, Content: "はい、書きます。👍🏽 Ünïcödé ✓"}},
	{{Role: llm.RoleUser, Content: "control: \x01\x1f tab\t nl\n cr\r quote\" backslash\\ html <b>&amp;</b> sep\u2028\u2029 bad\xff utf8"},
		{Role: llm.RoleAssistant, Content: "noted \x7f"}},
	{{Role: llm.RoleUser, Content: "Fork two children"},
		{Role: llm.RoleAssistant, Content: "", ToolCalls: []llm.ToolCall{
			{ID: "call_1", Name: "fork_session", Input: json.RawMessage(`{"label":"a — ä"}`)},
			{ID: "call_2", Name: "fork_session", Input: json.RawMessage(` {"label" : "b",  "context":"inherit"} `)}}},
		{Role: llm.RoleTool, ToolCallID: "call_1", Content: `{"sessionId":"s1"}`},
		{Role: llm.RoleTool, ToolCallID: "call_2", Content: ""},
		{Role: llm.RoleAssistant, Content: "Forked both."}},
	{{Role: llm.RoleUser, Content: "Again, with words"},
		{Role: llm.RoleAssistant, Content: "Calling now…", ToolCalls: []llm.ToolCall{
			{ID: "call_3", Name: "no_params", Input: json.RawMessage(`not json`)}}},
		{Role: llm.RoleTool, ToolCallID: "call_3", Content: "error: unknown"},
		{Role: llm.RoleAssistant, Content: ""}},
	{{Role: llm.RoleUser, Content: "Still there?"}, {Role: llm.RoleAssistant, Content: "Yes."}},
}

// Input is the new user message of every request.
var Input = llm.Message{Role: llm.RoleUser, Content: "Next question — 次は?"}

// Request is turn n's request (0-based): the head, the first n turns as
// history and the input. It returns the index of the history in Messages
// and the history's messages.
func Request(n int) (llm.Request, int, []llm.Message) {
	var hist []llm.Message
	for _, t := range Turns[:n] {
		hist = append(hist, t...)
	}
	msgs := append(append(append([]llm.Message(nil), Head...), hist...), Input)
	return llm.Request{Messages: msgs, Tools: Tools, MaxTokens: 300}, len(Head), hist
}

// JSONEq checks that two JSON documents are equal as values.
func JSONEq(t *testing.T, want, got []byte, msgAndArgs ...any) {
	t.Helper()
	var w, g any
	require.NoError(t, json.Unmarshal(want, &w), "want: %s", want)
	require.NoError(t, json.Unmarshal(got, &g), "got: %s", got)
	assert.Equal(t, w, g, msgAndArgs...)
}
