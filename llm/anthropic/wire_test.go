package anthropic_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/anthropic"
	"github.com/stellohq/stello/llm/internal/wiretest"
	"github.com/stellohq/stello/llm/sdkref"
)

// bodyServer answers every call with a whole reply (streamed or not) and
// keeps the raw request bodies.
type bodyServer struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
}

func newBodyServer(t *testing.T) *bodyServer {
	bs := &bodyServer{}
	bs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bs.mu.Lock()
		bs.bodies = append(bs.bodies, b)
		bs.mu.Unlock()
		var v struct {
			Stream bool `json:"stream"`
		}
		_ = json.Unmarshal(b, &v)
		if v.Stream {
			sseReply(streamEvents()...)(w, r)
			return
		}
		jsonReply(200, wholeMessage)(w, r)
	}))
	t.Cleanup(bs.Close)
	return bs
}

func (bs *bodyServer) last(t *testing.T) []byte {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	require.NotEmpty(t, bs.bodies)
	return bs.bodies[len(bs.bodies)-1]
}

// TestRequestBodyEqualsSDKEncoding: for every turn of a conversation with
// tool calls (consecutive results joined into one user message), a summary
// and multi-byte text, the body the server receives, built from the history
// encoded turn by turn, equals as JSON what the SDK's own marshalling
// produces for the same messages; streamed or not, pre-encoded or not.
func TestRequestBodyEqualsSDKEncoding(t *testing.T) {
	for _, stream := range []bool{false, true} {
		srv := newBodyServer(t)
		c, err := anthropic.New(anthropic.Config{BaseURL: srv.URL, Model: "claude-test", MaxTokens: 128, MaxRetries: 0})
		require.NoError(t, err)
		var enc *llm.Encoded
		for n := 0; n <= len(wiretest.Turns); n++ {
			if n == 0 {
				enc, err = c.EncodeHistory(nil, nil)
			} else {
				enc, err = c.EncodeHistory(enc, wiretest.Turns[n-1])
			}
			require.NoError(t, err)
			req, at, hist := wiretest.Request(n)
			require.Equal(t, len(hist), enc.Messages)
			want, err := sdkref.AnthropicBody("claude-test", 128, req, stream)
			require.NoError(t, err)
			for _, pre := range []bool{true, false} {
				r := req
				if pre {
					r.History, r.HistoryAt = enc, at
				}
				if stream {
					_, err = c.Stream(context.Background(), r, nil)
				} else {
					_, err = c.Complete(context.Background(), r)
				}
				require.NoError(t, err)
				wiretest.JSONEq(t, want, srv.last(t), "turn %d stream %v pre-encoded %v", n, stream, pre)
			}
		}
	}
}

// TestRequestBodyJoinsAcrossTheHistoryBoundary: a history ending in tool
// results or a user message is joined with what follows it, as the SDK
// path does; JSON mode, no tools and foreign encodings are handled.
func TestRequestBodyJoinsAcrossTheHistoryBoundary(t *testing.T) {
	srv := newBodyServer(t)
	c, err := anthropic.New(anthropic.Config{BaseURL: srv.URL, Model: "claude-test", MaxRetries: 0})
	require.NoError(t, err)
	hists := map[string][]llm.Message{
		"ends with tool results": {
			{Role: llm.RoleUser, Content: "q"},
			{Role: llm.RoleAssistant, ToolCalls: []llm.ToolCall{{ID: "t1", Name: "f", Input: json.RawMessage(`{}`)}}},
			{Role: llm.RoleTool, ToolCallID: "t1", Content: "r"}},
		"ends with a user message": {{Role: llm.RoleUser, Content: "first"}},
		"ends with an empty reply": {{Role: llm.RoleUser, Content: "q"}, {Role: llm.RoleAssistant}},
		"empty":                    nil,
	}
	for name, hist := range hists {
		enc, err := c.EncodeHistory(nil, hist)
		require.NoError(t, err)
		msgs := append(append([]llm.Message{{Role: llm.RoleSystem, Content: "sys"}}, hist...), llm.Message{Role: llm.RoleUser, Content: "next"})
		req := llm.Request{Messages: msgs, Format: llm.FormatJSON}
		want, err := sdkref.AnthropicBody("claude-test", 0, req, false)
		require.NoError(t, err)
		foreign := *enc
		foreign.Provider = "openai"
		for how, r := range map[string]llm.Request{
			"pre-encoded":          {Messages: msgs, Format: llm.FormatJSON, History: enc, HistoryAt: 1},
			"another provider's":   {Messages: msgs, Format: llm.FormatJSON, History: &foreign, HistoryAt: 1},
			"after a user message": {Messages: append([]llm.Message{{Role: llm.RoleUser, Content: "x"}}, msgs...), Format: llm.FormatJSON, History: enc, HistoryAt: 2},
		} {
			if how == "after a user message" {
				w, err := sdkref.AnthropicBody("claude-test", 0, r, false)
				require.NoError(t, err)
				r.History, r.HistoryAt = enc, 2
				_, err = c.Complete(context.Background(), r)
				require.NoError(t, err)
				wiretest.JSONEq(t, w, srv.last(t), "%s, %s", name, how)
				continue
			}
			_, err := c.Complete(context.Background(), r)
			require.NoError(t, err, "%s, %s", name, how)
			wiretest.JSONEq(t, want, srv.last(t), "%s, %s", name, how)
		}
	}
	_, err = c.EncodeHistory(nil, []llm.Message{{Role: llm.RoleSystem, Content: "no"}})
	require.Error(t, err, "a system message cannot be encoded into the history")
}
