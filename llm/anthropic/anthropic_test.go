package anthropic_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/anthropic"
)

const apiKey = "sk-ant-api03-SECRET-0123456789abcdef"

type recorded struct {
	Method string
	Path   string
	Header http.Header
	Body   map[string]any
}

// fakeServer mimics the Messages API. Each request is answered by the next
// handler in handlers (the last one repeats).
type fakeServer struct {
	*httptest.Server
	mu       sync.Mutex
	reqs     []recorded
	handlers []http.HandlerFunc
}

func newServer(t *testing.T, handlers ...http.HandlerFunc) *fakeServer {
	t.Helper()
	fs := &fakeServer{handlers: handlers}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(raw, &body)
		fs.mu.Lock()
		n := len(fs.reqs)
		fs.reqs = append(fs.reqs, recorded{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
		h := fs.handlers[min(n, len(fs.handlers)-1)]
		fs.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *fakeServer) requests() []recorded {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]recorded(nil), fs.reqs...)
}

func (fs *fakeServer) client(t *testing.T, mutate ...func(*anthropic.Config)) *anthropic.Client {
	t.Helper()
	cfg := anthropic.Config{BaseURL: fs.URL, APIKey: apiKey, Model: "claude-test"}
	for _, m := range mutate {
		m(&cfg)
	}
	c, err := anthropic.New(cfg)
	require.NoError(t, err)
	return c
}

func noRetry(c *anthropic.Config) { c.MaxRetries = 0 }

func jsonReply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// sse is one server-sent event.
type sse struct{ event, data string }

func sseReply(events ...sse) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for _, e := range events {
			_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.event, e.data)
			w.(http.Flusher).Flush()
		}
	}
}

func slowReply(w http.ResponseWriter, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(5 * time.Second):
	}
	w.WriteHeader(http.StatusGatewayTimeout)
}

var weatherTool = llm.Tool{
	Name:        "get_weather",
	Description: "Weather for a city",
	Parameters:  json.RawMessage(`{"type":"object","properties":{"city":{"type":"string","maxLength":64}},"required":["city"],"additionalProperties":false}`),
}

func conversation() llm.Request {
	return llm.Request{
		Messages: []llm.Message{
			{Role: llm.RoleSystem, Content: "You are terse."},
			{Role: llm.RoleSystem, Content: "Answer in English."},
			{Role: llm.RoleUser, Content: "Weather in Paris and Rome?"},
			{Role: llm.RoleAssistant, Content: "Checking.", ToolCalls: []llm.ToolCall{
				{ID: "toolu_1", Name: "get_weather", Input: json.RawMessage(`{"city":"Paris"}`)},
				{ID: "toolu_2", Name: "get_weather", Input: json.RawMessage(`{"city":"Rome"}`)},
			}},
			{Role: llm.RoleTool, ToolCallID: "toolu_1", Content: `{"temp":21}`},
			{Role: llm.RoleTool, ToolCallID: "toolu_2", Content: `{"temp":25}`},
			{Role: llm.RoleUser, Content: "Which is warmer?"},
		},
		Tools: []llm.Tool{weatherTool},
	}
}

func simpleRequest() llm.Request {
	return llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     anthropic.Config
		wantErr bool
	}{
		{"ok", anthropic.Config{Model: "m", BaseURL: "http://localhost:1"}, false},
		{"default base URL", anthropic.Config{Model: "m"}, false},
		{"missing model", anthropic.Config{}, true},
		{"bad base URL", anthropic.Config{Model: "m", BaseURL: "::"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := anthropic.New(tt.cfg)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "anthropic/m", c.Name())
		})
	}
}

func TestCompleteRequestAndResponse(t *testing.T) {
	srv := newServer(t, jsonReply(200, `{
		"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
		"content": [
			{"type": "text", "text": "Rome is warmer."},
			{"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}
		],
		"stop_reason": "tool_use", "stop_sequence": null,
		"usage": {"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 5}
	}`))
	c := srv.client(t, noRetry)

	resp, err := c.Complete(context.Background(), conversation())
	require.NoError(t, err)
	assert.Equal(t, "Rome is warmer.", resp.Content)
	require.Len(t, resp.ToolCalls, 1)
	assert.Equal(t, llm.ToolCall{ID: "toolu_9", Name: "get_weather", Input: json.RawMessage(`{"city": "Oslo"}`)}, resp.ToolCalls[0])
	assert.Equal(t, llm.Usage{InputTokens: 35, OutputTokens: 12}, resp.Usage)
	assert.Contains(t, resp.Raw, "msg_1")

	reqs := srv.requests()
	require.Len(t, reqs, 1)
	r := reqs[0]
	assert.Equal(t, http.MethodPost, r.Method)
	assert.Equal(t, "/v1/messages", r.Path)
	assert.Equal(t, apiKey, r.Header.Get("X-Api-Key"))
	assert.Empty(t, r.Header.Get("Authorization"))
	assert.NotEmpty(t, r.Header.Get("Anthropic-Version"))
	assert.Equal(t, "claude-test", r.Body["model"])
	assert.EqualValues(t, anthropic.DefaultMaxTokens, r.Body["max_tokens"])
	assert.Nil(t, r.Body["stream"])

	system := r.Body["system"].([]any)
	require.Len(t, system, 1)
	assert.Equal(t, "You are terse.\n\nAnswer in English.", system[0].(map[string]any)["text"])

	msgs := r.Body["messages"].([]any)
	want := `[
		{"role":"user","content":[{"type":"text","text":"Weather in Paris and Rome?"}]},
		{"role":"assistant","content":[
			{"type":"text","text":"Checking."},
			{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}},
			{"type":"tool_use","id":"toolu_2","name":"get_weather","input":{"city":"Rome"}}
		]},
		{"role":"user","content":[
			{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"{\"temp\":21}"}]},
			{"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"{\"temp\":25}"}]},
			{"type":"text","text":"Which is warmer?"}
		]}
	]`
	got, _ := json.Marshal(msgs)
	assert.JSONEq(t, want, string(got))

	tools := r.Body["tools"].([]any)
	require.Len(t, tools, 1)
	tool := tools[0].(map[string]any)
	assert.Equal(t, "get_weather", tool["name"])
	assert.Equal(t, "Weather for a city", tool["description"])
	schema, _ := json.Marshal(tool["input_schema"])
	assert.JSONEq(t, string(weatherTool.Parameters), string(schema))
}

func TestMaxTokensAndJSONFormat(t *testing.T) {
	tests := []struct {
		name     string
		cfgMax   int
		reqMax   int
		format   llm.Format
		wantMax  int
		wantJSON bool
	}{
		{"default", 0, 0, llm.FormatText, 1024, false},
		{"config", 300, 0, llm.FormatText, 300, false},
		{"request wins", 300, 50, llm.FormatJSON, 50, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, jsonReply(200, `{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"{}"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}`))
			c := srv.client(t, noRetry, func(c *anthropic.Config) { c.MaxTokens = tt.cfgMax })
			req := simpleRequest()
			req.MaxTokens = tt.reqMax
			req.Format = tt.format
			_, err := c.Complete(context.Background(), req)
			require.NoError(t, err)
			body := srv.requests()[0].Body
			assert.EqualValues(t, tt.wantMax, body["max_tokens"])
			if tt.wantJSON {
				system, _ := json.Marshal(body["system"])
				assert.Contains(t, string(system), "JSON")
			} else {
				assert.Nil(t, body["system"])
			}
			assert.Nil(t, body["tools"])
		})
	}
}

func streamEvents() []sse {
	return []sse{
		{"message_start", `{"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant","model":"claude-test","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}`},
		{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
		{"ping", `{"type":"ping"}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"check."}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":0}`},
		{"content_block_start", `{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_s","name":"get_weather","input":{}}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Os"}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"lo\"}"}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":1}`},
		{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":17}}`},
		{"message_stop", `{"type":"message_stop"}`},
	}
}

func TestStream(t *testing.T) {
	srv := newServer(t, sseReply(streamEvents()...))
	c := srv.client(t, noRetry)

	var deltas []llm.Delta
	resp, err := c.Stream(context.Background(), conversation(), func(d llm.Delta) error {
		deltas = append(deltas, d)
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, []llm.Delta{
		{Text: "Let me "},
		{Text: "check."},
		{IsToolCall: true, ToolCallIndex: 0, ToolCallID: "toolu_s", ToolCallName: "get_weather"},
		{IsToolCall: true, ToolCallIndex: 0, ArgsFragment: `{"city": "Os`},
		{IsToolCall: true, ToolCallIndex: 0, ArgsFragment: `lo"}`},
	}, deltas)

	assert.Equal(t, "Let me check.", resp.Content)
	require.Len(t, resp.ToolCalls, 1)
	assert.Equal(t, "toolu_s", resp.ToolCalls[0].ID)
	assert.Equal(t, "get_weather", resp.ToolCalls[0].Name)
	assert.JSONEq(t, `{"city":"Oslo"}`, string(resp.ToolCalls[0].Input))
	assert.Equal(t, llm.Usage{InputTokens: 25, OutputTokens: 17}, resp.Usage)
	assert.True(t, json.Valid([]byte(resp.Raw)), "raw: %s", resp.Raw)
	assert.Contains(t, resp.Raw, "Let me check.")

	r := srv.requests()[0]
	assert.Equal(t, "/v1/messages", r.Path)
	assert.Equal(t, apiKey, r.Header.Get("X-Api-Key"))
	assert.Equal(t, true, r.Body["stream"])
	assert.Equal(t, "claude-test", r.Body["model"])
	assert.Len(t, r.Body["messages"], 3)
	assert.NotNil(t, r.Body["system"])
}

func TestStreamCallbackErrorAbandonsCall(t *testing.T) {
	srv := newServer(t, sseReply(streamEvents()...))
	c := srv.client(t, noRetry)
	stop := errors.New("client went away")
	calls := 0
	_, err := c.Stream(context.Background(), simpleRequest(), func(llm.Delta) error {
		calls++
		return stop
	})
	require.ErrorIs(t, err, stop)
	assert.Equal(t, 1, calls)
}

func TestStreamErrorEvent(t *testing.T) {
	events := streamEvents()[:4]
	events = append(events, sse{"error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`})
	srv := newServer(t, sseReply(events...))
	c := srv.client(t, noRetry)
	_, err := c.Stream(context.Background(), simpleRequest(), nil)
	var pe *llm.ProviderError
	require.ErrorAs(t, err, &pe)
	assert.ErrorIs(t, err, llm.ErrProvider)
	assert.Equal(t, 0, pe.Status)
	assert.Contains(t, pe.Message, "Overloaded")
}

func TestStreamWithoutMessage(t *testing.T) {
	srv := newServer(t, sseReply(sse{"ping", `{"type":"ping"}`}))
	c := srv.client(t, noRetry)
	_, err := c.Stream(context.Background(), simpleRequest(), nil)
	require.ErrorIs(t, err, llm.ErrProvider)
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		wantStatus int
		wantMsg    string
	}{
		{
			name:       "unauthorized",
			status:     401,
			body:       `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key ` + apiKey + `"}}`,
			wantStatus: 401,
			wantMsg:    "invalid x-api-key",
		},
		{
			name:       "server error",
			status:     500,
			body:       `{"type":"error","error":{"type":"api_error","message":"Internal server error"}}`,
			wantStatus: 500,
			wantMsg:    "Internal server error",
		},
		{
			name:       "plain text",
			status:     502,
			body:       `upstream connect error`,
			wantStatus: 502,
			wantMsg:    "upstream connect error",
		},
	}
	for _, tt := range tests {
		for _, streaming := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", tt.name, streaming), func(t *testing.T) {
				srv := newServer(t, jsonReply(tt.status, tt.body))
				c := srv.client(t, noRetry)
				var err error
				if streaming {
					_, err = c.Stream(context.Background(), simpleRequest(), nil)
				} else {
					_, err = c.Complete(context.Background(), simpleRequest())
				}
				var pe *llm.ProviderError
				require.ErrorAs(t, err, &pe)
				assert.ErrorIs(t, err, llm.ErrProvider)
				assert.NotErrorIs(t, err, llm.ErrTimeout)
				assert.Equal(t, "anthropic", pe.Provider)
				assert.Equal(t, tt.wantStatus, pe.Status)
				assert.Contains(t, pe.Message, tt.wantMsg)
				assert.NotContains(t, err.Error(), apiKey)
				assert.NotContains(t, err.Error(), "SECRET")
				assert.Len(t, srv.requests(), 1, "no retries with MaxRetries 0")
			})
		}
	}
}

func TestRetriesServerErrors(t *testing.T) {
	fail := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After-Ms", "1")
		jsonReply(529, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)(w, r)
	}
	ok := jsonReply(200, `{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"recovered"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}`)

	t.Run("retried", func(t *testing.T) {
		srv := newServer(t, fail, ok)
		c := srv.client(t, func(c *anthropic.Config) { c.MaxRetries = 2 })
		resp, err := c.Complete(context.Background(), simpleRequest())
		require.NoError(t, err)
		assert.Equal(t, "recovered", resp.Content)
		assert.Len(t, srv.requests(), 2)
	})
	t.Run("streaming retried", func(t *testing.T) {
		srv := newServer(t, fail, sseReply(streamEvents()...))
		c := srv.client(t, func(c *anthropic.Config) { c.MaxRetries = 2 })
		resp, err := c.Stream(context.Background(), simpleRequest(), nil)
		require.NoError(t, err)
		assert.Equal(t, "Let me check.", resp.Content)
		assert.Len(t, srv.requests(), 2)
	})
	t.Run("retries exhausted", func(t *testing.T) {
		srv := newServer(t, fail)
		c := srv.client(t, func(c *anthropic.Config) { c.MaxRetries = 1 })
		_, err := c.Complete(context.Background(), simpleRequest())
		var pe *llm.ProviderError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, 529, pe.Status)
		assert.Contains(t, pe.Message, "Overloaded")
		assert.Len(t, srv.requests(), 2)
	})
}

func TestTimeout(t *testing.T) {
	tests := []struct {
		name      string
		cfgTO     time.Duration
		ctxTO     time.Duration
		streaming bool
	}{
		{"ctx deadline complete", 0, 100 * time.Millisecond, false},
		{"ctx deadline stream", 0, 100 * time.Millisecond, true},
		{"config timeout complete", 100 * time.Millisecond, 0, false},
		{"config timeout stream", 100 * time.Millisecond, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, slowReply)
			c := srv.client(t, noRetry, func(c *anthropic.Config) { c.Timeout = tt.cfgTO })
			ctx := context.Background()
			if tt.ctxTO > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTO)
				defer cancel()
			}
			start := time.Now()
			var err error
			if tt.streaming {
				_, err = c.Stream(ctx, simpleRequest(), nil)
			} else {
				_, err = c.Complete(ctx, simpleRequest())
			}
			require.ErrorIs(t, err, llm.ErrTimeout)
			var pe *llm.ProviderError
			require.ErrorAs(t, err, &pe)
			assert.True(t, pe.Timeout)
			assert.Less(t, time.Since(start), 3*time.Second)
		})
	}
}

func TestStreamTimeoutMidStream(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, e := range streamEvents()[:4] {
			_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.event, e.data)
		}
		w.(http.Flusher).Flush()
		slowReply(w, r)
	})
	c := srv.client(t, noRetry, func(c *anthropic.Config) { c.Timeout = 200 * time.Millisecond })
	var got strings.Builder
	_, err := c.Stream(context.Background(), simpleRequest(), func(d llm.Delta) error {
		got.WriteString(d.Text)
		return nil
	})
	require.ErrorIs(t, err, llm.ErrTimeout)
	assert.Equal(t, "Let me ", got.String())
}

func TestCancel(t *testing.T) {
	for _, streaming := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", streaming), func(t *testing.T) {
			srv := newServer(t, slowReply)
			c := srv.client(t, noRetry)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			var err error
			if streaming {
				_, err = c.Stream(ctx, simpleRequest(), nil)
			} else {
				_, err = c.Complete(ctx, simpleRequest())
			}
			require.ErrorIs(t, err, context.Canceled)
			assert.NotErrorIs(t, err, llm.ErrTimeout)
		})
	}
}

func TestInvalidRequest(t *testing.T) {
	c, err := anthropic.New(anthropic.Config{Model: "m", BaseURL: "http://127.0.0.1:1"})
	require.NoError(t, err)
	_, err = c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: "narrator", Content: "x"}}})
	require.ErrorIs(t, err, llm.ErrProvider)

	_, err = c.Complete(context.Background(), llm.Request{
		Messages: []llm.Message{{Role: llm.RoleUser, Content: "x"}},
		Tools:    []llm.Tool{{Name: "t", Parameters: json.RawMessage(`"nope"`)}},
	})
	require.ErrorIs(t, err, llm.ErrProvider)
}

func TestIgnoresEnvironment(t *testing.T) {
	t.Setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
	t.Setenv("ANTHROPIC_AUTH_TOKEN", "tok-from-env")
	srv := newServer(t, jsonReply(200, `{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}`))
	c := srv.client(t, noRetry)
	_, err := c.Complete(context.Background(), simpleRequest())
	require.NoError(t, err)
	h := srv.requests()[0].Header
	assert.Equal(t, apiKey, h.Get("X-Api-Key"))
	assert.Empty(t, h.Get("Authorization"))
}

// Streamed calls reuse the model connection (see the OpenAI client's test).
func TestStreamedCallsReuseTheConnection(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(sseReply(streamEvents()...))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := anthropic.New(anthropic.Config{BaseURL: srv.URL, APIKey: apiKey, Model: "claude-test"})
	require.NoError(t, err)
	for range 20 {
		_, err := c.Stream(context.Background(), conversation(), func(llm.Delta) error { return nil })
		require.NoError(t, err)
	}
	assert.Equal(t, int32(1), conns.Load(), "connections opened for 20 streamed calls")
}
