package anthropic_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
)

// cutReply writes head with a Content-Length promising more, then drops the
// connection: the body ends early at the transport level.
func cutReply(contentType, head string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
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

const wholeMessage = `{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"whole"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}`

// TestStreamEndingEarlyIsAnError: a streamed reply counts only after
// message_stop.
func TestStreamEndingEarlyIsAnError(t *testing.T) {
	all := streamEvents()
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"clean close mid-text", sseReply(all[:5]...)},
		{"clean close after message_delta, before message_stop", sseReply(all[:len(all)-1]...)},
		{"only pings", sseReply(sse{"ping", `{"type":"ping"}`})},
		{"empty event stream", sseReply()},
		{"200 with an HTML page", rawReply("text/html", "<html><body>proxy</body></html>")},
		{"200 with a JSON message", rawReply("application/json", wholeMessage)},
		{"connection cut mid-stream", cutReply("text/event-stream", "event: message_start\ndata: "+all[0].data+"\n\n")},
		{"malformed event", sseReply(all[0], sse{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"te`}, all[len(all)-1])},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.handler)
			c := srv.client(t, noRetry)
			resp, err := c.Stream(context.Background(), simpleRequest(), nil)
			require.Error(t, err, "reply %+v", resp)
			assert.Nil(t, resp)
			assert.ErrorIs(t, err, llm.ErrProvider)
		})
	}
	t.Run("the whole stream still counts", func(t *testing.T) {
		srv := newServer(t, sseReply(all...))
		c := srv.client(t, noRetry)
		resp, err := c.Stream(context.Background(), simpleRequest(), nil)
		require.NoError(t, err)
		assert.Equal(t, "Let me check.", resp.Content)
	})
}

// TestCompleteIncompleteAnswerIsAnError: a non-streamed reply counts only
// if it is a message with a stop_reason.
func TestCompleteIncompleteAnswerIsAnError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"200 with an HTML page", rawReply("text/html", "<html><body>captive portal</body></html>")},
		{"200 with an event stream", sseReply(streamEvents()...)},
		{"truncated JSON", rawReply("application/json", wholeMessage[:60])},
		{"connection cut mid-body", cutReply("application/json", wholeMessage[:60])},
		{"no stop_reason", rawReply("application/json", `{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"half"}],"stop_reason":null}`)},
		{"not a message", rawReply("application/json", `{"type":"completion","completion":"hi"}`)},
		{"empty body", rawReply("application/json", ``)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.handler)
			c := srv.client(t, noRetry)
			resp, err := c.Complete(context.Background(), simpleRequest())
			require.Error(t, err, "reply %+v", resp)
			assert.Nil(t, resp)
			assert.ErrorIs(t, err, llm.ErrProvider)
		})
	}
	t.Run("a whole message still counts", func(t *testing.T) {
		srv := newServer(t, rawReply("application/json", wholeMessage))
		c := srv.client(t, noRetry)
		resp, err := c.Complete(context.Background(), simpleRequest())
		require.NoError(t, err)
		assert.Equal(t, "whole", resp.Content)
	})
}
