package openai_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/wiretest"
	"github.com/stellohq/stello/llm/openai"
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
		if r.Header.Get("Accept") == "text/event-stream" || string(b) != "" && sdkStream(b) {
			sseReply(chunk(`{"content":"ok"}`), `[DONE]`)(w, r)
			return
		}
		jsonReply(200, wholeCompletion)(w, r)
	}))
	t.Cleanup(bs.Close)
	return bs
}

func sdkStream(b []byte) bool {
	var v struct {
		Stream bool `json:"stream"`
	}
	_ = jsonUnmarshal(b, &v)
	return v.Stream
}

func (bs *bodyServer) last(t *testing.T) []byte {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	require.NotEmpty(t, bs.bodies)
	return bs.bodies[len(bs.bodies)-1]
}

// TestRequestBodyEqualsSDKEncoding: for every turn of a conversation with
// tool calls, a summary and multi-byte text, the body the server receives,
// built from the history encoded turn by turn, equals as JSON what the
// SDK's own marshalling produces for the same messages; streamed or not,
// with the history pre-encoded or not, and on either token field.
func TestRequestBodyEqualsSDKEncoding(t *testing.T) {
	for _, official := range []bool{false, true} {
		for _, stream := range []bool{false, true} {
			srv := newBodyServer(t)
			c, err := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "gpt-test", MaxTokens: 128, MaxRetries: 0})
			require.NoError(t, err)
			if official {
				// The official endpoint uses max_completion_tokens; test it
				// through a client whose host is api.openai.com, dialled to
				// the test server.
				c = officialClient(t, srv.URL)
			}
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
				want, err := sdkref.OpenAIBody(modelOf(official), 128, official, req, stream)
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
					wiretest.JSONEq(t, want, srv.last(t), "turn %d stream %v pre-encoded %v official %v", n, stream, pre, official)
				}
			}
		}
	}
}

// TestRequestBodyFormatsAndForeignEncodings: JSON mode without tools, and
// an encoding that does not fit the request (another provider's, or not
// covering the messages) is ignored rather than sent.
func TestRequestBodyFormatsAndForeignEncodings(t *testing.T) {
	srv := newBodyServer(t)
	c, err := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: "gpt-test", MaxRetries: 0})
	require.NoError(t, err)
	req, at, hist := wiretest.Request(3)
	req.Tools, req.MaxTokens, req.Format = nil, 0, llm.FormatJSON
	want, err := sdkref.OpenAIBody("gpt-test", 0, false, req, false)
	require.NoError(t, err)
	enc, err := c.EncodeHistory(nil, hist)
	require.NoError(t, err)
	foreign := *enc
	foreign.Provider = "anthropic"
	for name, r := range map[string]llm.Request{
		"pre-encoded":         withHistory(req, enc, at),
		"another provider's":  withHistory(req, &foreign, at),
		"past the messages":   withHistory(req, enc, len(req.Messages)),
		"before the messages": withHistory(req, enc, -1),
	} {
		_, err := c.Complete(context.Background(), r)
		require.NoError(t, err, name)
		wiretest.JSONEq(t, want, srv.last(t), name)
	}
}

func withHistory(r llm.Request, enc *llm.Encoded, at int) llm.Request {
	r.History, r.HistoryAt = enc, at
	return r
}
