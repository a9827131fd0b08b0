package openai_test

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
	"github.com/stellohq/stello/llm/openai"
)

const apiKey = "sk-test-SECRET-0123456789abcdef"

// recorded is one request the fake server received.
type recorded struct {
	Method string
	Path   string
	Header http.Header
	Body   map[string]any
}

// fakeServer mimics an OpenAI-compatible endpoint. Each request is answered
// by the next handler in handlers (the last one repeats).
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

func (fs *fakeServer) client(t *testing.T, mutate ...func(*openai.Config)) *openai.Client {
	t.Helper()
	cfg := openai.Config{BaseURL: fs.URL + "/v1", APIKey: apiKey, Model: "test-model", MaxTokens: 256}
	for _, m := range mutate {
		m(&cfg)
	}
	c, err := openai.New(cfg)
	require.NoError(t, err)
	return c
}

func jsonReply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func sseReply(events ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for _, e := range events {
			_, _ = fmt.Fprintf(w, "data: %s\n\n", e)
			w.(http.Flusher).Flush()
		}
	}
}

// slowReply waits until the client gives up (or a safety timeout).
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
	Parameters:  json.RawMessage(`{"type":"object","properties":{"city":{"type":"string","maxLength":64}},"required":["city"]}`),
}

func conversation() llm.Request {
	return llm.Request{
		Messages: []llm.Message{
			{Role: llm.RoleSystem, Content: "You are terse."},
			{Role: llm.RoleUser, Content: "Weather in Paris?"},
			{Role: llm.RoleAssistant, Content: "", ToolCalls: []llm.ToolCall{
				{ID: "call_1", Name: "get_weather", Input: json.RawMessage(`{"city":"Paris"}`)},
			}},
			{Role: llm.RoleTool, ToolCallID: "call_1", Content: `{"temp":21}`},
			{Role: llm.RoleUser, Content: "And in JSON?"},
		},
		Tools:  []llm.Tool{weatherTool},
		Format: llm.FormatJSON,
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     openai.Config
		wantErr bool
	}{
		{"ok", openai.Config{Model: "m", BaseURL: "http://localhost:1/v1"}, false},
		{"default base URL", openai.Config{Model: "m"}, false},
		{"missing model", openai.Config{BaseURL: "http://localhost:1/v1"}, true},
		{"bad base URL", openai.Config{Model: "m", BaseURL: "not a url"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := openai.New(tt.cfg)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "openai/m", c.Name())
		})
	}
}

func TestCompleteRequestAndResponse(t *testing.T) {
	srv := newServer(t, jsonReply(200, `{
		"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "test-model",
		"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
			"role": "assistant", "content": "{\"ok\":true}",
			"tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]
		}}],
		"usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
	}`))
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })

	resp, err := c.Complete(context.Background(), conversation())
	require.NoError(t, err)

	assert.Equal(t, `{"ok":true}`, resp.Content)
	require.Len(t, resp.ToolCalls, 1)
	assert.Equal(t, "call_9", resp.ToolCalls[0].ID)
	assert.Equal(t, "get_weather", resp.ToolCalls[0].Name)
	assert.JSONEq(t, `{"city":"Rome"}`, string(resp.ToolCalls[0].Input))
	assert.Equal(t, llm.Usage{InputTokens: 42, OutputTokens: 7}, resp.Usage)
	assert.Contains(t, resp.Raw, "chatcmpl-1")

	reqs := srv.requests()
	require.Len(t, reqs, 1)
	r := reqs[0]
	assert.Equal(t, http.MethodPost, r.Method)
	assert.Equal(t, "/v1/chat/completions", r.Path)
	assert.Equal(t, "Bearer "+apiKey, r.Header.Get("Authorization"))
	assert.Equal(t, "test-model", r.Body["model"])
	assert.EqualValues(t, 256, r.Body["max_tokens"])
	assert.Nil(t, r.Body["stream"])
	assert.Equal(t, map[string]any{"type": "json_object"}, r.Body["response_format"])

	msgs := r.Body["messages"].([]any)
	require.Len(t, msgs, 5)
	roles := make([]string, len(msgs))
	for i, m := range msgs {
		roles[i] = m.(map[string]any)["role"].(string)
	}
	assert.Equal(t, []string{"system", "user", "assistant", "tool", "user"}, roles)
	assert.Equal(t, "You are terse.", msgs[0].(map[string]any)["content"])

	asst := msgs[2].(map[string]any)
	calls := asst["tool_calls"].([]any)
	require.Len(t, calls, 1)
	call := calls[0].(map[string]any)
	assert.Equal(t, "call_1", call["id"])
	assert.Equal(t, "function", call["type"])
	fn := call["function"].(map[string]any)
	assert.Equal(t, "get_weather", fn["name"])
	assert.JSONEq(t, `{"city":"Paris"}`, fn["arguments"].(string))

	tool := msgs[3].(map[string]any)
	assert.Equal(t, "call_1", tool["tool_call_id"])
	assert.Equal(t, `{"temp":21}`, tool["content"])

	tools := r.Body["tools"].([]any)
	require.Len(t, tools, 1)
	td := tools[0].(map[string]any)
	assert.Equal(t, "function", td["type"])
	tf := td["function"].(map[string]any)
	assert.Equal(t, "get_weather", tf["name"])
	assert.Equal(t, "Weather for a city", tf["description"])
	params, _ := json.Marshal(tf["parameters"])
	assert.JSONEq(t, string(weatherTool.Parameters), string(params))
}

func TestRequestMaxTokensOverridesConfig(t *testing.T) {
	srv := newServer(t, jsonReply(200, `{"id":"x","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}`))
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
	_, err := c.Complete(context.Background(), llm.Request{
		Messages:  []llm.Message{{Role: llm.RoleUser, Content: "hi"}},
		MaxTokens: 10,
	})
	require.NoError(t, err)
	body := srv.requests()[0].Body
	assert.EqualValues(t, 10, body["max_tokens"])
	assert.Nil(t, body["tools"])
	assert.Nil(t, body["response_format"])
}

func chunk(delta string, extra ...string) string {
	s := `{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1700000000,"model":"test-model","choices":[{"index":0,"delta":` + delta + `,"finish_reason":null}]`
	for _, e := range extra {
		s += "," + e
	}
	return s + "}"
}

func TestStream(t *testing.T) {
	events := []string{
		chunk(`{"role":"assistant","content":""}`),
		chunk(`{"content":"Hel"}`),
		chunk(`{"content":"lo"}`),
		chunk(`{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]}`),
		chunk(`{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}`),
		chunk(`{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]}`),
		chunk(`{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]}`),
		`{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1700000000,"model":"test-model","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`,
		`{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1700000000,"model":"test-model","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}}`,
		`[DONE]`,
	}
	srv := newServer(t, sseReply(events...))
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })

	var deltas []llm.Delta
	resp, err := c.Stream(context.Background(), conversation(), func(d llm.Delta) error {
		deltas = append(deltas, d)
		return nil
	})
	require.NoError(t, err)

	assert.Equal(t, []llm.Delta{
		{Text: "Hel"},
		{Text: "lo"},
		{IsToolCall: true, ToolCallIndex: 0, ToolCallID: "call_a", ToolCallName: "get_weather"},
		{IsToolCall: true, ToolCallIndex: 0, ArgsFragment: `{"ci`},
		{IsToolCall: true, ToolCallIndex: 0, ArgsFragment: `ty":"Oslo"}`},
		{IsToolCall: true, ToolCallIndex: 1, ToolCallID: "call_b", ToolCallName: "get_time", ArgsFragment: `{}`},
	}, deltas)

	assert.Equal(t, "Hello", resp.Content)
	require.Len(t, resp.ToolCalls, 2)
	assert.Equal(t, "call_a", resp.ToolCalls[0].ID)
	assert.Equal(t, "get_weather", resp.ToolCalls[0].Name)
	assert.JSONEq(t, `{"city":"Oslo"}`, string(resp.ToolCalls[0].Input))
	assert.Equal(t, "call_b", resp.ToolCalls[1].ID)
	assert.JSONEq(t, `{}`, string(resp.ToolCalls[1].Input))
	assert.Equal(t, llm.Usage{InputTokens: 11, OutputTokens: 5}, resp.Usage)
	assert.True(t, json.Valid([]byte(resp.Raw)), "raw: %s", resp.Raw)
	assert.Contains(t, resp.Raw, "Hello")

	body := srv.requests()[0].Body
	assert.Equal(t, true, body["stream"])
	assert.Equal(t, map[string]any{"include_usage": true}, body["stream_options"])
	assert.Equal(t, "test-model", body["model"])
	assert.Len(t, body["messages"], 5)
	assert.Equal(t, "Bearer "+apiKey, srv.requests()[0].Header.Get("Authorization"))
}

func TestStreamWithoutUsageChunk(t *testing.T) {
	srv := newServer(t, sseReply(
		chunk(`{"role":"assistant","content":"Just "}`),
		chunk(`{"content":"text"}`),
		`[DONE]`,
	))
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
	resp, err := c.Stream(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}, nil)
	require.NoError(t, err)
	assert.Equal(t, "Just text", resp.Content)
	assert.Empty(t, resp.ToolCalls)
	assert.Equal(t, llm.Usage{}, resp.Usage)
}

func TestStreamCallbackErrorAbandonsCall(t *testing.T) {
	srv := newServer(t, sseReply(chunk(`{"content":"a"}`), chunk(`{"content":"b"}`), `[DONE]`))
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
	stop := errors.New("client went away")
	calls := 0
	_, err := c.Stream(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}, func(llm.Delta) error {
		calls++
		return stop
	})
	require.ErrorIs(t, err, stop)
	assert.Equal(t, 1, calls)
}

func TestStreamErrorEvent(t *testing.T) {
	srv := newServer(t, sseReply(chunk(`{"content":"a"}`), `{"error":{"message":"upstream overloaded","type":"server_error"}}`))
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
	_, err := c.Stream(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}, nil)
	var pe *llm.ProviderError
	require.ErrorAs(t, err, &pe)
	assert.ErrorIs(t, err, llm.ErrProvider)
	assert.Contains(t, pe.Message, "upstream overloaded")
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
			name:       "unauthorized echoes masked key",
			status:     401,
			body:       `{"error":{"message":"Incorrect API key provided: ` + apiKey + `. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`,
			wantStatus: 401,
			wantMsg:    "Incorrect API key provided",
		},
		{
			name:       "server error",
			status:     500,
			body:       `{"error":{"message":"The server had an error while processing your request.","type":"server_error"}}`,
			wantStatus: 500,
			wantMsg:    "The server had an error",
		},
		{
			name:       "non-JSON body",
			status:     502,
			body:       `<html><body>upstream unavailable</body></html>`,
			wantStatus: 502,
			wantMsg:    "upstream unavailable",
		},
		{
			name:       "FastAPI style detail",
			status:     404,
			body:       `{"detail":"model 'nope' not found"}`,
			wantStatus: 404,
			wantMsg:    "model 'nope' not found",
		},
	}
	for _, tt := range tests {
		for _, streaming := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", tt.name, streaming), func(t *testing.T) {
				srv := newServer(t, jsonReply(tt.status, tt.body))
				c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
				req := llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}
				var err error
				if streaming {
					_, err = c.Stream(context.Background(), req, nil)
				} else {
					_, err = c.Complete(context.Background(), req)
				}
				require.Error(t, err)
				var pe *llm.ProviderError
				require.ErrorAs(t, err, &pe)
				assert.ErrorIs(t, err, llm.ErrProvider)
				assert.NotErrorIs(t, err, llm.ErrTimeout)
				assert.Equal(t, "openai", pe.Provider)
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
		jsonReply(503, `{"error":{"message":"try again"}}`)(w, r)
	}
	ok := jsonReply(200, `{"id":"x","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"recovered"}}]}`)

	t.Run("retried", func(t *testing.T) {
		srv := newServer(t, fail, ok)
		c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 2 })
		resp, err := c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}})
		require.NoError(t, err)
		assert.Equal(t, "recovered", resp.Content)
		assert.Len(t, srv.requests(), 2)
	})
	t.Run("retries exhausted", func(t *testing.T) {
		srv := newServer(t, fail)
		c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 1 })
		_, err := c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}})
		var pe *llm.ProviderError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, 503, pe.Status)
		assert.Len(t, srv.requests(), 2)
	})
}

func TestTimeout(t *testing.T) {
	req := llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}
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
			c := srv.client(t, func(c *openai.Config) {
				c.MaxRetries = 0
				c.Timeout = tt.cfgTO
			})
			ctx := context.Background()
			if tt.ctxTO > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTO)
				defer cancel()
			}
			start := time.Now()
			var err error
			if tt.streaming {
				_, err = c.Stream(ctx, req, nil)
			} else {
				_, err = c.Complete(ctx, req)
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
		_, _ = fmt.Fprintf(w, "data: %s\n\n", chunk(`{"content":"first"}`))
		w.(http.Flusher).Flush()
		slowReply(w, r)
	})
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0; c.Timeout = 200 * time.Millisecond })
	var got strings.Builder
	_, err := c.Stream(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}, func(d llm.Delta) error {
		got.WriteString(d.Text)
		return nil
	})
	require.ErrorIs(t, err, llm.ErrTimeout)
	assert.Equal(t, "first", got.String())
}

func TestCancel(t *testing.T) {
	for _, streaming := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", streaming), func(t *testing.T) {
			srv := newServer(t, slowReply)
			c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			req := llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}}
			var err error
			if streaming {
				_, err = c.Stream(ctx, req, nil)
			} else {
				_, err = c.Complete(ctx, req)
			}
			require.ErrorIs(t, err, context.Canceled)
			assert.NotErrorIs(t, err, llm.ErrTimeout)
		})
	}
}

func TestInvalidRequest(t *testing.T) {
	c, err := openai.New(openai.Config{Model: "m", BaseURL: "http://127.0.0.1:1/v1"})
	require.NoError(t, err)
	_, err = c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: "narrator", Content: "x"}}})
	require.ErrorIs(t, err, llm.ErrProvider)

	_, err = c.Complete(context.Background(), llm.Request{
		Messages: []llm.Message{{Role: llm.RoleUser, Content: "x"}},
		Tools:    []llm.Tool{{Name: "t", Parameters: json.RawMessage(`[1,2]`)}},
	})
	require.ErrorIs(t, err, llm.ErrProvider)
}

func TestConnectionRefused(t *testing.T) {
	c, err := openai.New(openai.Config{Model: "m", BaseURL: "http://127.0.0.1:1/v1", APIKey: apiKey, MaxRetries: 0})
	require.NoError(t, err)
	_, err = c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "x"}}})
	var pe *llm.ProviderError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, 0, pe.Status)
	assert.NotContains(t, err.Error(), apiKey)
}

// redirect sends every request to target, whatever its URL says.
type redirect struct{ target string }

func (rt redirect) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme = "http"
	r.URL.Host = strings.TrimPrefix(rt.target, "http://")
	r.Host = r.URL.Host
	return http.DefaultTransport.RoundTrip(r)
}

func TestOfficialEndpointUsesMaxCompletionTokens(t *testing.T) {
	srv := newServer(t, jsonReply(200, `{"id":"x","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}`))
	c, err := openai.New(openai.Config{
		APIKey:     apiKey,
		Model:      "gpt-test",
		MaxTokens:  99,
		HTTPClient: &http.Client{Transport: redirect{target: srv.URL}},
	})
	require.NoError(t, err)
	_, err = c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}})
	require.NoError(t, err)
	r := srv.requests()[0]
	assert.Equal(t, "/v1/chat/completions", r.Path)
	assert.EqualValues(t, 99, r.Body["max_completion_tokens"])
	assert.Nil(t, r.Body["max_tokens"])
	assert.Equal(t, "Bearer "+apiKey, r.Header.Get("Authorization"))
}

func TestEmptyAPIKeyIgnoresEnvironment(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "sk-from-env-should-not-leak")
	srv := newServer(t, jsonReply(200, `{"id":"x","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}`))
	c := srv.client(t, func(c *openai.Config) { c.APIKey = ""; c.MaxRetries = 0 })
	_, err := c.Complete(context.Background(), llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: "hi"}}})
	require.NoError(t, err)
	assert.Empty(t, srv.requests()[0].Header.Get("Authorization"))
}

// Streamed calls reuse the model connection: the stream's reader leaves the
// response at its end, so the transport can keep the connection. Each call
// must not pay a new dial (and the endpoint a new accept).
func TestStreamedCallsReuseTheConnection(t *testing.T) {
	events := []string{chunk(`{"role":"assistant","content":""}`), chunk(`{"content":"Hi"}`),
		`{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1700000000,"model":"test-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
		`[DONE]`}
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(sseReply(events...))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := openai.New(openai.Config{BaseURL: srv.URL + "/v1", APIKey: apiKey, Model: "test-model"})
	require.NoError(t, err)
	for range 20 {
		resp, err := c.Stream(context.Background(), conversation(), func(llm.Delta) error { return nil })
		require.NoError(t, err)
		require.Equal(t, "Hi", resp.Content)
	}
	assert.Equal(t, int32(1), conns.Load(), "connections opened for 20 streamed calls")
}

// A server that keeps the response open after [DONE] costs the connection,
// not the call: the reply is returned without waiting for the response's end.
func TestStreamReturnsAtDoneWhenTheResponseStaysOpen(t *testing.T) {
	release := make(chan struct{})
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		sseReply(chunk(`{"content":"Hi"}`), `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`, `[DONE]`)(w, r)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	c := srv.client(t, func(c *openai.Config) { c.MaxRetries = 0 })
	done := make(chan error, 1)
	go func() {
		resp, err := c.Stream(context.Background(), conversation(), func(llm.Delta) error { return nil })
		if err == nil && resp.Content != "Hi" {
			err = fmt.Errorf("content %q", resp.Content)
		}
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the call waited for the end of a response that stays open")
	}
}
