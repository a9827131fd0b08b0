package mockllm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// Test-side view of the wire format, decoded with plain encoding/json.

type tToolCall struct {
	Index    *int   `json:"index,omitempty"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type tMessage struct {
	Role      string      `json:"role"`
	Content   *string     `json:"content"`
	ToolCalls []tToolCall `json:"tool_calls"`
}

type tUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type tCompletion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int      `json:"index"`
		Message      tMessage `json:"message"`
		FinishReason string   `json:"finish_reason"`
	} `json:"choices"`
	Usage *tUsage `json:"usage"`
}

type tChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int      `json:"index"`
		Delta        tMessage `json:"delta"`
		FinishReason *string  `json:"finish_reason"`
	} `json:"choices"`
	Usage *tUsage `json:"usage"`
}

type tError struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
	} `json:"error"`
}

func newTest(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	s := New(cfg)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

func post(t *testing.T, ctx context.Context, url string, body any, header ...string) *http.Response {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func userReq(text string, stream bool) map[string]any {
	r := map[string]any{
		"model":    "gpt-test",
		"messages": []map[string]any{{"role": "user", "content": text}},
	}
	if stream {
		r["stream"] = true
		r["stream_options"] = map[string]any{"include_usage": true}
	}
	return r
}

func decodeBody[T any](t *testing.T, resp *http.Response) T {
	t.Helper()
	defer resp.Body.Close()
	var v T
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

// readEvents reads a whole SSE body and returns the data payloads, checking
// the framing ("data: X\n\n" only) on the way.
func readEvents(t *testing.T, resp *http.Response) []string {
	t.Helper()
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q", ct)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	if !strings.HasSuffix(s, "\n\n") {
		t.Fatalf("stream does not end with a blank line: %q", s)
	}
	var out []string
	for _, ev := range strings.Split(strings.TrimSuffix(s, "\n\n"), "\n\n") {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("bad event %q", ev)
		}
		out = append(out, data)
	}
	return out
}

func decodeChunks(t *testing.T, events []string) []tChunk {
	t.Helper()
	if len(events) == 0 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("stream must end with [DONE]: %q", events)
	}
	var out []tChunk
	for _, e := range events[:len(events)-1] {
		var c tChunk
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatalf("chunk %s: %v", e, err)
		}
		out = append(out, c)
	}
	return out
}

// assembled is a stream folded back into one message.
type assembled struct {
	content   string
	toolCalls []tToolCall
	argFrags  map[int]int
	finish    string
	usage     *tUsage
}

func assemble(t *testing.T, chunks []tChunk) assembled {
	t.Helper()
	a := assembled{argFrags: map[int]int{}}
	for i, c := range chunks {
		if c.ID != chunks[0].ID || c.ID == "" {
			t.Fatalf("chunk %d id %q, want %q", i, c.ID, chunks[0].ID)
		}
		if c.Object != "chat.completion.chunk" || c.Created == 0 || c.Model == "" {
			t.Fatalf("chunk %d header: %+v", i, c)
		}
		if c.Usage != nil {
			if len(c.Choices) != 0 || i != len(chunks)-1 {
				t.Fatalf("usage chunk must be last with no choices: %+v", c)
			}
			a.usage = c.Usage
			continue
		}
		if len(c.Choices) != 1 || c.Choices[0].Index != 0 {
			t.Fatalf("chunk %d choices: %+v", i, c.Choices)
		}
		d := c.Choices[0].Delta
		if i == 0 {
			if d.Role != "assistant" {
				t.Fatalf("first chunk role = %q", d.Role)
			}
		} else if d.Role != "" {
			t.Fatalf("chunk %d repeats role", i)
		}
		if d.Content != nil {
			a.content += *d.Content
		}
		for _, tc := range d.ToolCalls {
			if tc.Index == nil {
				t.Fatalf("tool call delta without index")
			}
			idx := *tc.Index
			if idx == len(a.toolCalls) {
				if tc.ID == "" || tc.Type != "function" || tc.Function.Name == "" {
					t.Fatalf("first tool call fragment must carry id, type and name: %+v", tc)
				}
				a.toolCalls = append(a.toolCalls, tc)
				a.toolCalls[idx].Function.Arguments = tc.Function.Arguments
				continue
			}
			if idx != len(a.toolCalls)-1 || tc.ID != "" || tc.Function.Name != "" {
				t.Fatalf("bad continuation fragment: %+v", tc)
			}
			a.toolCalls[idx].Function.Arguments += tc.Function.Arguments
			a.argFrags[idx]++
		}
		if fr := c.Choices[0].FinishReason; fr != nil {
			if a.finish != "" {
				t.Fatal("two finish chunks")
			}
			a.finish = *fr
		} else if a.finish != "" {
			t.Fatal("chunk after finish chunk")
		}
	}
	return a
}

func TestNonStreamingShape(t *testing.T) {
	_, ts := newTest(t, Config{})
	for _, path := range []string{"/v1/chat/completions", "/chat/completions"} {
		resp := post(t, context.Background(), ts.URL+path, userReq("hello there, how are you?", false))
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: status %d, type %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		c := decodeBody[tCompletion](t, resp)
		if !strings.HasPrefix(c.ID, "chatcmpl-") || c.Object != "chat.completion" || c.Created == 0 || c.Model != "gpt-test" {
			t.Fatalf("header fields: %+v", c)
		}
		if len(c.Choices) != 1 || c.Choices[0].Index != 0 || c.Choices[0].FinishReason != "stop" {
			t.Fatalf("choices: %+v", c.Choices)
		}
		m := c.Choices[0].Message
		if m.Role != "assistant" || m.Content == nil || len(m.ToolCalls) != 0 {
			t.Fatalf("message: %+v", m)
		}
		if !strings.HasPrefix(*m.Content, "Mock reply to: hello there, how are you?") {
			t.Fatalf("content %q", *m.Content)
		}
		if n := len(strings.Fields(*m.Content)); n != 20 {
			t.Fatalf("content has %d words, want 20: %q", n, *m.Content)
		}
		u := c.Usage
		if u == nil || u.PromptTokens != 5 || u.CompletionTokens != 20 || u.TotalTokens != 25 {
			t.Fatalf("usage %+v", u)
		}
	}
}

func TestGeneratedReplyDeterministic(t *testing.T) {
	get := func(cfg Config, text string) string {
		_, ts := newTest(t, cfg)
		c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq(text, false)))
		return *c.Choices[0].Message.Content
	}
	a := get(Config{Seed: 1, ReplyTokens: 40}, "one two three four five six seven eight nine ten")
	if b := get(Config{Seed: 1, ReplyTokens: 40}, "one two three four five six seven eight nine ten"); a != b {
		t.Fatalf("not deterministic: %q vs %q", a, b)
	}
	if !strings.HasPrefix(a, "Mock reply to: one two three four five six seven eight …") || len(strings.Fields(a)) != 40 {
		t.Fatalf("content %q", a)
	}
	if c := get(Config{Seed: 2, ReplyTokens: 40}, "one two three four five six seven eight nine ten"); c == a {
		t.Fatalf("seed has no effect: %q", c)
	}
	if c := get(Config{ReplyTokens: 2}, "hello world"); c != "Mock reply" {
		t.Fatalf("short reply %q", c)
	}
}

func TestMaxTokensTruncates(t *testing.T) {
	_, ts := newTest(t, Config{ReplyTokens: 30})
	req := userReq("hi", false)
	req["max_completion_tokens"] = 5
	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", req))
	if got := *c.Choices[0].Message.Content; len(strings.Fields(got)) != 5 || c.Choices[0].FinishReason != "length" {
		t.Fatalf("content %q finish %q", got, c.Choices[0].FinishReason)
	}
}

func TestModels(t *testing.T) {
	_, ts := newTest(t, Config{Model: "my-model"})
	for _, path := range []string{"/v1/models", "/models"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		l := decodeBody[struct {
			Object string `json:"object"`
			Data   []struct {
				ID     string `json:"id"`
				Object string `json:"object"`
			} `json:"data"`
		}](t, resp)
		if l.Object != "list" || len(l.Data) != 1 || l.Data[0].ID != "my-model" || l.Data[0].Object != "model" {
			t.Fatalf("%s: %+v", path, l)
		}
	}
	// Requests without a model get Config.Model.
	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions",
		`{"messages":[{"role":"user","content":"x"}]}`))
	if c.Model != "my-model" {
		t.Fatalf("model %q", c.Model)
	}
}

func TestRoutingErrors(t *testing.T) {
	s, ts := newTest(t, Config{})
	resp, err := http.Get(ts.URL + "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeBody[tError](t, resp); resp.StatusCode != 405 || e.Error.Message == "" {
		t.Fatalf("GET chat: %d %+v", resp.StatusCode, e)
	}
	resp, err = http.Get(ts.URL + "/v1/nope")
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeBody[tError](t, resp); resp.StatusCode != 404 || e.Error.Type != "invalid_request_error" {
		t.Fatalf("unknown path: %d %+v", resp.StatusCode, e)
	}

	// A malformed body is a 400, is recorded, and does not eat a scripted reply.
	s.Enqueue(Reply{Content: "scripted"})
	resp = post(t, context.Background(), ts.URL+"/v1/chat/completions", `{"messages": 42}`)
	if e := decodeBody[tError](t, resp); resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" {
		t.Fatalf("bad body: %d %+v", resp.StatusCode, e)
	}
	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false)))
	if *c.Choices[0].Message.Content != "scripted" {
		t.Fatalf("scripted reply lost: %q", *c.Choices[0].Message.Content)
	}
	reqs := s.Requests()
	if len(reqs) != 2 || string(reqs[0].Body) != `{"messages": 42}` || s.Calls() != 2 {
		t.Fatalf("recorded %d, calls %d", len(reqs), s.Calls())
	}
}

func TestStreamingSequence(t *testing.T) {
	_, ts := newTest(t, Config{ReplyTokens: 12})
	resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("stream me please", true))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	events := readEvents(t, resp)
	chunks := decodeChunks(t, events)
	// role + 12 content + finish + usage
	if len(chunks) != 15 {
		t.Fatalf("%d chunks: %q", len(chunks), events)
	}
	if c := chunks[0].Choices[0].Delta; c.Content == nil || *c.Content != "" {
		t.Fatalf("role chunk content: %+v", c)
	}
	a := assemble(t, chunks)
	if a.finish != "stop" || len(a.toolCalls) != 0 {
		t.Fatalf("finish %q tool calls %v", a.finish, a.toolCalls)
	}
	if a.usage == nil || a.usage.PromptTokens != 3 || a.usage.CompletionTokens != 12 || a.usage.TotalTokens != 15 {
		t.Fatalf("usage %+v", a.usage)
	}
	// Same text as the non-streaming answer.
	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("stream me please", false)))
	if a.content != *c.Choices[0].Message.Content {
		t.Fatalf("stream %q != non-stream %q", a.content, *c.Choices[0].Message.Content)
	}

	// Without include_usage there is no usage chunk.
	req := userReq("no usage", true)
	delete(req, "stream_options")
	chunks = decodeChunks(t, readEvents(t, post(t, context.Background(), ts.URL+"/v1/chat/completions", req)))
	if a := assemble(t, chunks); a.usage != nil || a.finish != "stop" {
		t.Fatalf("usage %+v finish %q", a.usage, a.finish)
	}
}

func TestScriptedChunks(t *testing.T) {
	s, ts := newTest(t, Config{})
	s.Enqueue(Reply{Chunks: []string{"Hel", "lo, ", "wor", "ld"}})
	s.Enqueue(Reply{Chunks: []string{"Hel", "lo"}})
	chunks := decodeChunks(t, readEvents(t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", true))))
	var got []string
	for _, c := range chunks[1:] {
		if len(c.Choices) == 1 && c.Choices[0].Delta.Content != nil {
			got = append(got, *c.Choices[0].Delta.Content)
		}
	}
	if strings.Join(got, "|") != "Hel|lo, |wor|ld" {
		t.Fatalf("chunks %q", got)
	}
	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false)))
	if *c.Choices[0].Message.Content != "Hello" {
		t.Fatalf("non-streaming content of chunked reply: %q", *c.Choices[0].Message.Content)
	}
}

var weatherCalls = []ToolCall{
	{ID: "call_abc", Name: "get_weather", Arguments: `{"city":"Paris","unit":"celsius","note":"ünïcödé ✓ long enough to need several fragments"}`},
	{Name: "noop", Arguments: `{}`},
}

func TestToolCallScriptNonStreaming(t *testing.T) {
	s, ts := newTest(t, Config{})
	s.Enqueue(Reply{ToolCalls: weatherCalls}, Reply{Content: "Checking.", ToolCalls: weatherCalls[:1]})

	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("weather?", false)))
	ch := c.Choices[0]
	if ch.FinishReason != "tool_calls" || ch.Message.Content != nil || len(ch.Message.ToolCalls) != 2 {
		t.Fatalf("choice %+v", ch)
	}
	tc := ch.Message.ToolCalls
	if tc[0].ID != "call_abc" || tc[0].Type != "function" || tc[0].Function.Name != "get_weather" || tc[0].Function.Arguments != weatherCalls[0].Arguments {
		t.Fatalf("tool call 0: %+v", tc[0])
	}
	if !strings.HasPrefix(tc[1].ID, "call_") || tc[1].Function.Name != "noop" || tc[1].Function.Arguments != "{}" {
		t.Fatalf("tool call 1: %+v", tc[1])
	}
	if weatherCalls[1].ID != "" {
		t.Fatal("Enqueue's slice was modified")
	}

	c = decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("weather?", false)))
	ch = c.Choices[0]
	if ch.Message.Content == nil || *ch.Message.Content != "Checking." || len(ch.Message.ToolCalls) != 1 {
		t.Fatalf("content+tool call: %+v", ch.Message)
	}
}

func TestToolCallScriptStreaming(t *testing.T) {
	s, ts := newTest(t, Config{})
	s.Enqueue(Reply{Content: "Let me look.", ToolCalls: weatherCalls})
	chunks := decodeChunks(t, readEvents(t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("weather?", true))))
	a := assemble(t, chunks)
	if a.content != "Let me look." || a.finish != "tool_calls" || len(a.toolCalls) != 2 {
		t.Fatalf("assembled %+v", a)
	}
	for i, want := range weatherCalls {
		got := a.toolCalls[i]
		if (want.ID != "" && got.ID != want.ID) || got.Function.Name != want.Name || got.Function.Arguments != want.Arguments {
			t.Fatalf("tool call %d: %+v", i, got)
		}
		if a.argFrags[i] < 2 {
			t.Fatalf("tool call %d arguments in %d fragments, want ≥ 2", i, a.argFrags[i])
		}
	}
	if a.usage == nil || a.usage.CompletionTokens == 0 {
		t.Fatalf("usage %+v", a.usage)
	}
}

func TestErrorStatusScript(t *testing.T) {
	s, ts := newTest(t, Config{})
	s.Enqueue(
		Reply{Status: 429, ErrorMessage: "slow down"},
		Reply{Status: 503},
		Reply{Status: 500, ErrorMessage: "boom"},
	)
	resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false))
	e := decodeBody[tError](t, resp)
	if resp.StatusCode != 429 || e.Error.Message != "slow down" || e.Error.Type != "server_error" {
		t.Fatalf("%d %+v", resp.StatusCode, e)
	}
	resp = post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false))
	if e := decodeBody[tError](t, resp); resp.StatusCode != 503 || e.Error.Message != "Service Unavailable" {
		t.Fatalf("%d %+v", resp.StatusCode, e)
	}
	// Streaming requests get the same plain JSON error.
	resp = post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", true))
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	if e := decodeBody[tError](t, resp); resp.StatusCode != 500 || e.Error.Message != "boom" {
		t.Fatalf("%d %+v", resp.StatusCode, e)
	}
	// Queue drained: generated reply.
	resp = post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false))
	if c := decodeBody[tCompletion](t, resp); resp.StatusCode != 200 || !strings.HasPrefix(*c.Choices[0].Message.Content, "Mock reply") {
		t.Fatalf("%d %+v", resp.StatusCode, c)
	}
}

func TestRecordedRequests(t *testing.T) {
	s, ts := newTest(t, Config{})
	body := `{
	  "model": "gpt-4o-mini",
	  "messages": [
	    {"role": "system", "content": "You are terse."},
	    {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "image_url", "image_url": {"url": "http://x"}}, {"type": "text", "text": "world"}]},
	    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
	    {"role": "tool", "tool_call_id": "call_1", "content": "result text"}
	  ],
	  "tools": [
	    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
	    {"type": "function", "function": {"name": "save"}}
	  ],
	  "response_format": {"type": "json_object"},
	  "max_completion_tokens": 256,
	  "stream": true
	}`
	resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", body, "Authorization", "Bearer sk-test")
	readEvents(t, resp)
	resp = post(t, context.Background(), ts.URL+"/chat/completions", `{"model":"m2","max_tokens":7,"messages":[{"role":"user","content":"plain"}]}`)
	resp.Body.Close()

	reqs := s.Requests()
	if len(reqs) != 2 || s.Calls() != 2 {
		t.Fatalf("%d requests, %d calls", len(reqs), s.Calls())
	}
	r := reqs[0]
	if r.Model != "gpt-4o-mini" || !r.Stream || r.MaxTokens != 256 || r.ResponseFormat != "json_object" {
		t.Fatalf("request fields: %+v", r)
	}
	if r.Header.Get("Authorization") != "Bearer sk-test" || string(r.Body) != body {
		t.Fatalf("header/body not recorded")
	}
	if strings.Join(r.Tools, ",") != "lookup,save" {
		t.Fatalf("tools %q", r.Tools)
	}
	want := []RecordedMessage{
		{Role: "system", Content: "You are terse."},
		{Role: "user", Content: "Hello world"},
		{Role: "assistant", ToolCalls: []ToolCall{{ID: "call_1", Name: "lookup", Arguments: `{"q":"x"}`}}},
		{Role: "tool", Content: "result text", ToolCallID: "call_1"},
	}
	if got, w := fmt.Sprintf("%+v", r.Messages), fmt.Sprintf("%+v", want); got != w {
		t.Fatalf("messages\n got %s\nwant %s", got, w)
	}
	if r2 := reqs[1]; r2.Model != "m2" || r2.MaxTokens != 7 || r2.Stream || r2.ResponseFormat != "" || len(r2.Tools) != 0 {
		t.Fatalf("second request: %+v", r2)
	}

	s.Enqueue(Reply{Content: "queued"})
	s.Reset()
	if len(s.Requests()) != 0 || s.Calls() != 0 {
		t.Fatal("Reset did not clear requests")
	}
	c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false)))
	if *c.Choices[0].Message.Content == "queued" {
		t.Fatal("Reset did not clear the queue")
	}
}

func TestFIFOConcurrent(t *testing.T) {
	s, ts := newTest(t, Config{})
	const n = 40
	for i := range n {
		s.Enqueue(Reply{Content: fmt.Sprintf("reply-%d", i)})
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq(fmt.Sprint("q", i), i%2 == 0))
			var content string
			if i%2 == 0 {
				content = assemble(t, decodeChunks(t, readEvents(t, resp))).content
			} else {
				content = *decodeBody[tCompletion](t, resp).Choices[0].Message.Content
			}
			mu.Lock()
			seen[content] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	for i := range n {
		if !seen[fmt.Sprintf("reply-%d", i)] {
			t.Fatalf("reply-%d not served; got %v", i, seen)
		}
	}
	if s.Calls() != n || len(s.Requests()) != n {
		t.Fatalf("calls %d", s.Calls())
	}

	// Sequential requests consume strictly in order.
	s.Enqueue(Reply{Content: "first"}, Reply{Content: "second"})
	for _, want := range []string{"first", "second"} {
		c := decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false)))
		if got := *c.Choices[0].Message.Content; got != want {
			t.Fatalf("got %q want %q", got, want)
		}
	}
}

func TestTTFTHonoured(t *testing.T) {
	const ttft = 120 * time.Millisecond
	_, ts := newTest(t, Config{TTFT: ttft, ReplyTokens: 5})

	start := time.Now()
	resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false))
	decodeBody[tCompletion](t, resp)
	if el := time.Since(start); el < ttft {
		t.Fatalf("non-streaming answered after %v < TTFT %v", el, ttft)
	}

	start = time.Now()
	resp = post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", true))
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, `"content":"`) && !strings.Contains(line, `"content":""`) {
			break // first content token
		}
	}
	if el := time.Since(start); el < ttft {
		t.Fatalf("first token after %v < TTFT %v", el, ttft)
	}
}

func TestTokensPerSecondPacing(t *testing.T) {
	// 10 words at 200 tokens/s: ≥ 9 intervals of 5ms after the first token.
	_, ts := newTest(t, Config{TokensPerSecond: 200, ReplyTokens: 10})
	for _, stream := range []bool{true, false} {
		start := time.Now()
		resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", stream))
		if stream {
			readEvents(t, resp)
		} else {
			decodeBody[tCompletion](t, resp)
		}
		if el := time.Since(start); el < 45*time.Millisecond {
			t.Fatalf("stream=%v finished after %v, want ≥ 45ms", stream, el)
		}
	}
}

// trackingServer wraps a Server and reports when ServeHTTP returns.
func trackingServer(t *testing.T, s *Server) (*httptest.Server, <-chan struct{}) {
	returned := make(chan struct{}, 16)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.ServeHTTP(w, r)
		returned <- struct{}{}
	}))
	t.Cleanup(ts.Close)
	return ts, returned
}

func waitReturned(t *testing.T, returned <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: handler still running after client went away", what)
	}
}

func TestClientDisconnect(t *testing.T) {
	t.Run("scripted delay", func(t *testing.T) {
		s := New(Config{})
		ts, returned := trackingServer(t, s)
		s.Enqueue(Reply{Content: "late", Delay: time.Hour})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/chat/completions", strings.NewReader(`{"messages":[]}`))
		if _, err := http.DefaultClient.Do(req); err == nil {
			t.Fatal("expected the client to time out")
		}
		waitReturned(t, returned, "delay")
	})
	t.Run("ttft non-streaming", func(t *testing.T) {
		s := New(Config{TTFT: time.Hour})
		ts, returned := trackingServer(t, s)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/chat/completions", strings.NewReader(`{"messages":[]}`))
		if _, err := http.DefaultClient.Do(req); err == nil {
			t.Fatal("expected the client to time out")
		}
		waitReturned(t, returned, "ttft")
	})
	t.Run("mid-stream", func(t *testing.T) {
		s := New(Config{TokensPerSecond: 2, ReplyTokens: 10000})
		ts, returned := trackingServer(t, s)
		ctx, cancel := context.WithCancel(context.Background())
		resp := post(t, ctx, ts.URL+"/v1/chat/completions", userReq("x", true))
		br := bufio.NewReader(resp.Body)
		if _, err := br.ReadString('\n'); err != nil { // role chunk
			t.Fatal(err)
		}
		cancel()
		resp.Body.Close()
		waitReturned(t, returned, "stream")
	})
	t.Run("unlimited stream", func(t *testing.T) {
		// No pacing: the handler must notice failed writes / the cancelled
		// context and stop instead of generating a million tokens.
		s := New(Config{ReplyTokens: 1_000_000})
		ts, returned := trackingServer(t, s)
		ctx, cancel := context.WithCancel(context.Background())
		resp := post(t, ctx, ts.URL+"/v1/chat/completions", userReq("x", true))
		br := bufio.NewReader(resp.Body)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		cancel()
		resp.Body.Close()
		waitReturned(t, returned, "unlimited stream")
	})
}

func TestErrorRateOne(t *testing.T) {
	s, ts := newTest(t, Config{ErrorRate: 1})
	for _, stream := range []bool{false, true} {
		resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", stream))
		e := decodeBody[tError](t, resp)
		if resp.StatusCode != 500 || e.Error.Type != "server_error" || e.Error.Message == "" {
			t.Fatalf("stream=%v: %d %+v", stream, resp.StatusCode, e)
		}
	}
	// Scripted replies are not subject to ErrorRate.
	s.Enqueue(Reply{Content: "ok"})
	resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false))
	if c := decodeBody[tCompletion](t, resp); resp.StatusCode != 200 || *c.Choices[0].Message.Content != "ok" {
		t.Fatalf("scripted: %d", resp.StatusCode)
	}
}

func TestErrorRateFraction(t *testing.T) {
	count := func(seed int64) (fails []int) {
		_, ts := newTest(t, Config{ErrorRate: 0.3, Seed: seed})
		for i := range 200 {
			resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", userReq("x", false))
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 500 {
				fails = append(fails, i)
			}
		}
		return fails
	}
	a := count(7)
	if len(a) < 30 || len(a) > 90 {
		t.Fatalf("%d/200 failures at ErrorRate 0.3", len(a))
	}
	if b := count(7); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("failures not reproducible for the same seed")
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func TestJSONModeUUIDs(t *testing.T) {
	_, ts := newTest(t, Config{})
	ids := []string{"3f2b8c1e-9d4a-4b7e-8f10-2a3b4c5d6e7f", "a1b2c3d4-e5f6-4711-8899-aabbccddeeff"}
	text := fmt.Sprintf("Summarise sessions:\n- session %s: likes tea\n- session %s: likes coffee\n- again %s (dup)\n- not a uuid: %s0",
		ids[0], ids[1], strings.ToUpper(ids[0]), ids[1])
	type result struct {
		Synthesis string `json:"synthesis"`
		Insights  []struct {
			SessionID string `json:"sessionId"`
			Content   string `json:"content"`
		} `json:"insights"`
	}
	for _, stream := range []bool{false, true} {
		req := userReq(text, stream)
		req["response_format"] = map[string]any{"type": "json_object"}
		resp := post(t, context.Background(), ts.URL+"/v1/chat/completions", req)
		var content string
		if stream {
			content = assemble(t, decodeChunks(t, readEvents(t, resp))).content
		} else {
			content = *decodeBody[tCompletion](t, resp).Choices[0].Message.Content
		}
		var r result
		if err := json.Unmarshal([]byte(content), &r); err != nil {
			t.Fatalf("stream=%v: content is not JSON: %v\n%s", stream, err, content)
		}
		if r.Synthesis == "" || len(r.Insights) != 2 {
			t.Fatalf("stream=%v: %+v", stream, r)
		}
		for i, in := range r.Insights {
			if in.SessionID != ids[i] || !uuidRE.MatchString(in.SessionID) || in.Content == "" {
				t.Fatalf("insight %d: %+v", i, in)
			}
		}
	}

	// No UUIDs: empty (not null) insights.
	req := userReq("nothing here", false)
	req["response_format"] = map[string]any{"type": "json_object"}
	content := *decodeBody[tCompletion](t, post(t, context.Background(), ts.URL+"/v1/chat/completions", req)).Choices[0].Message.Content
	if !strings.Contains(content, `"insights":[]`) {
		t.Fatalf("content %s", content)
	}
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	var logs int
	var mu sync.Mutex
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, "127.0.0.1:0", Config{ReplyTokens: 3}, func(format string, args ...any) {
			mu.Lock()
			logs++
			mu.Unlock()
			msg := fmt.Sprintf(format, args...)
			if i := strings.Index(msg, "http://"); i >= 0 {
				addrc <- msg[i:]
			}
		})
	}()
	var base string
	select {
	case base = <-addrc:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("no listen log")
	}
	c := decodeBody[tCompletion](t, post(t, context.Background(), base+"/v1/chat/completions", userReq("hi", false)))
	if got := *c.Choices[0].Message.Content; got != "Mock reply to:" {
		t.Fatalf("content %q", got)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	mu.Lock()
	defer mu.Unlock()
	if logs != 1 {
		t.Fatalf("%d log lines, want 1", logs)
	}
	if err := Run(context.Background(), "256.0.0.1:bad", Config{}, nil); err == nil {
		t.Fatal("bad address accepted")
	}
}

func TestHelpers(t *testing.T) {
	for _, s := range []string{"", "a", "  lead and trail  ", "one\ttwo\n\nthree", "ünï cödé"} {
		var b strings.Builder
		for pos := 0; pos < len(s); {
			end := nextToken(s, pos)
			if end <= pos {
				t.Fatalf("nextToken stuck on %q", s)
			}
			b.WriteString(s[pos:end])
			pos = end
		}
		if b.String() != s {
			t.Fatalf("tokens of %q rejoin to %q", s, b.String())
		}
		if countWords(s) != len(strings.Fields(s)) {
			t.Fatalf("countWords(%q)", s)
		}
	}
	for _, args := range []string{"", "{", "{}", "é", `{"a":1}`, strings.Repeat("✓", 40)} {
		var frags []string
		forEachFragment(args, func(f string) bool { frags = append(frags, f); return true })
		if len(frags) < 2 || strings.Join(frags, "") != args {
			t.Fatalf("fragments of %q: %q", args, frags)
		}
		for _, f := range frags {
			if !utf8.ValidString(f) {
				t.Fatalf("fragment %q cuts a rune", f)
			}
		}
	}
	if got := findUUIDs("x 3F2B8C1E-9D4A-4B7E-8F10-2A3B4C5D6E7F, 3f2b8c1e-9d4a-4b7e-8f10-2a3b4c5d6e7f"); len(got) != 1 {
		t.Fatalf("findUUIDs dedupe: %q", got)
	}
}

// discardWriter is a minimal http.ResponseWriter + Flusher for benchmarks.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Flush()                      {}

func benchServe(b *testing.B, body string) {
	s := newServer(Config{ReplyTokens: 20}, false)
	w := &discardWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	rd := strings.NewReader(body)
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(body)
		r.Body = io.NopCloser(rd)
		clear(w.h)
		s.ServeHTTP(w, r)
	}
}

func BenchmarkNonStreaming(b *testing.B) {
	benchServe(b, `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there general kenobi"}]}`)
}

func BenchmarkStreaming(b *testing.B) {
	benchServe(b, `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there general kenobi"}]}`)
}

// TestQuietAnswersLikeRecording: the unrecorded mock's quick request
// decoding answers exactly as the full decoding does (content, usage,
// limits, JSON mode), streamed or not.
func TestQuietAnswersLikeRecording(t *testing.T) {
	bodies := []string{
		`{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"first question"},{"role":"assistant","content":"an answer with \"quotes\" and ünïcödé"},{"role":"user","content":"second question here"}]}`,
		`{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"limit me please now"}]}`,
		`{"model":"m","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"json please"}]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"parts"}]}]}`,
		`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"r"},{"role":"user","content":"go on"}]}`,
	}
	strip := func(b []byte) string {
		// ids and timestamps differ between servers
		return regexp.MustCompile(`"(id|created)":("[^"]*"|[0-9]+)`).ReplaceAllString(string(b), "")
	}
	for _, body := range bodies {
		var got [2]string
		for i, srv := range []*Server{New(Config{Seed: 7}), NewQuiet(Config{Seed: 7})} {
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body)))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
			}
			got[i] = strip(rec.Body.Bytes())
		}
		if got[0] != got[1] {
			t.Errorf("%s\nrecording: %s\nquiet:     %s", body, got[0], got[1])
		}
	}
}
