package openai_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/openai"
)

// cutReply writes head with a Content-Length promising more, then drops the
// connection: the body ends early at the transport level.
func cutReply(contentType, head string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		hj, ok := w.(http.Hijacker)
		if !ok {
			panic("no hijacker")
		}
		conn, buf, err := hj.Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(buf, "HTTP/1.1 200 OK\r\nContent-Type: "+contentType+"\r\nContent-Length: 100000\r\n\r\n"+head)
		_ = buf.Flush()
	}
}

func rawReply(contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, body)
	}
}

const wholeCompletion = `{"id":"c","object":"chat.completion","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"whole"}}]}`

// TestStreamEndingEarlyIsAnError: a streamed reply counts only when a
// choice has a finish_reason or the stream sent [DONE].
func TestStreamEndingEarlyIsAnError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"clean close without finish_reason or [DONE]", sseReply(chunk(`{"role":"assistant","content":"Hel"}`), chunk(`{"content":"lo, the answer is"}`))},
		{"usage chunk but no finish_reason", sseReply(chunk(`{"content":"partial"}`),
			`{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}`)},
		{"empty event stream", sseReply()},
		{"200 with an HTML page", rawReply("text/html; charset=utf-8", "<html><body>Gateway says hi</body></html>")},
		{"200 with a JSON completion", rawReply("application/json", wholeCompletion)},
		{"200 with a JSON error", rawReply("application/json", `{"error":{"message":"quota"}}`)},
		{"200 without a content type", rawReply("", "data: "+chunk(`{"content":"x"}`)+"\n\n")},
		{"connection cut mid-stream", cutReply("text/event-stream", "data: "+chunk(`{"content":"Hel"}`)+"\n\n")},
		{"malformed chunk", sseReply(`{"choices":[{"index":0,"delta":{"content":"x"`, `[DONE]`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.handler)
			c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
			var got string
			resp, err := c.Stream(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}},
				func(d llm.Delta) error { got += d.Text; return nil })
			require.Error(t, err, "reply %+v", resp)
			assert.Nil(t, resp)
			assert.ErrorIs(t, err, llm.ErrProvider)
			var pe *llm.ProviderError
			require.ErrorAs(t, err, &pe)
			assert.NotContains(t, pe.Message, apiKey)
		})
	}
}

// TestStreamCompleteByEitherSignal: finish_reason without [DONE], and
// [DONE] alone, both end a reply.
func TestStreamCompleteByEitherSignal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"finish_reason, connection closed before [DONE]", sseReply(chunk(`{"content":"Hi"}`),
			`{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`), "Hi"},
		{"[DONE] without finish_reason", sseReply(chunk(`{"content":"Hi"}`), `[DONE]`), "Hi"},
		{"text/event-stream with charset", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
			_, _ = io.WriteString(w, "data: "+chunk(`{"content":"Hi"}`)+"\n\ndata: [DONE]\n\n")
		}, "Hi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.handler)
			c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
			resp, err := c.Stream(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.want, resp.Content)
		})
	}
}

// TestCompleteIncompleteAnswerIsAnError: a non-streamed reply counts only
// if it is a chat completion whose choice has a finish_reason.
func TestCompleteIncompleteAnswerIsAnError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"200 with an HTML page", rawReply("text/html", "<html><body>Welcome to the captive portal</body></html>")},
		{"200 with plain text", rawReply("text/plain", "ok")},
		{"200 with an event stream", sseReply(chunk(`{"content":"x"}`), `[DONE]`)},
		{"truncated JSON", rawReply("application/json", `{"id":"c","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"whole`)},
		{"connection cut mid-body", cutReply("application/json", `{"id":"c","choices":[{"index":0,"finish_reason":"stop","message":{"content":"wh`)},
		{"no choices", rawReply("application/json", `{"id":"c","object":"chat.completion","choices":[]}`)},
		{"no finish_reason", rawReply("application/json", `{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"half"}}]}`)},
		{"null finish_reason", rawReply("application/json", `{"id":"c","choices":[{"index":0,"finish_reason":null,"message":{"role":"assistant","content":"half"}}]}`)},
		{"not a completion", rawReply("application/json", `{"status":"ok"}`)},
		{"empty body", rawReply("application/json", ``)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.handler)
			c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
			resp, err := c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}})
			require.Error(t, err, "reply %+v", resp)
			assert.Nil(t, resp)
			assert.ErrorIs(t, err, llm.ErrProvider)
		})
	}
	t.Run("a whole completion still counts", func(t *testing.T) {
		srv := newServer(t, rawReply("application/json; charset=utf-8", wholeCompletion))
		c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
		resp, err := c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}})
		require.NoError(t, err)
		assert.Equal(t, "whole", resp.Content)
	})
}
