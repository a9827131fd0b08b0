package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/pgstore/pgtest"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }

// syncBuffer is a bytes.Buffer safe for the program and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	listenRe = regexp.MustCompile(`listening on (http://\S+)\n`)
	keyRe    = regexp.MustCompile(`api key: (\S+)\n`)
)

// call sends one JSON request with the API key and decodes the answer.
func call(t *testing.T, method, url, key string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	require.NoError(t, err)
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	if out != nil && res.StatusCode < 300 {
		require.NoError(t, json.Unmarshal(raw, out), "body: %s", raw)
	}
	return res.StatusCode
}

// TestEmbedCallsTheCustomTool runs the example program against a real
// database and an OpenAI-compatible mock model scripted to call
// lookup_weather, and checks over HTTP that the tool ran in the space whose
// config asks for it, and only there.
func TestEmbedCallsTheCustomTool(t *testing.T) {
	mock := mockllm.New(mockllm.Config{})
	model := httptest.NewServer(mock)
	defer model.Close()
	mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "lookup_weather", Arguments: `{"city":"Paris"}`}}},
		mockllm.Reply{Content: "It is sunny in Paris, 21°C."},
		mockllm.Reply{Content: "No tools here."},
	)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--database-url", pgtest.NewDatabase(t),
			"--llm-base-url", model.URL + "/v1", "--llm-model", "m", "--llm-api-key", "test"}, stdout, stderr)
	}()
	var base, key string
	require.Eventually(t, func() bool {
		select {
		case err := <-done:
			t.Fatalf("the program exited before listening: %v\n%s", err, stderr.String())
		default:
		}
		m, k := listenRe.FindStringSubmatch(stdout.String()), keyRe.FindStringSubmatch(stdout.String())
		if m == nil || k == nil {
			return false
		}
		base, key = m[1], k[1]
		return true
	}, 2*time.Minute, 10*time.Millisecond)

	type space struct {
		ID string `json:"id"`
	}
	type node struct {
		ID string `json:"id"`
	}
	type turn struct {
		Turn struct {
			FinalContent      *string `json:"finalContent"`
			ToolCallsExecuted int     `json:"toolCallsExecuted"`
		} `json:"turn"`
	}
	type message struct {
		Role      string `json:"role"`
		Content   string `json:"content"`
		ToolCalls []struct {
			Name string `json:"name"`
		} `json:"toolCalls"`
		ToolCallID string `json:"toolCallId"`
	}

	// A space whose config asks for the tool.
	var trip space
	require.Equal(t, http.StatusCreated, call(t, "POST", base+"/spaces", key,
		map[string]any{"label": "Trip", "config": map[string]any{"tools": []string{"lookup_weather"}}}, &trip))
	var root node
	require.Equal(t, http.StatusOK, call(t, "GET", base+"/spaces/"+trip.ID+"/sessions", key, nil, &root))
	var res turn
	require.Equal(t, http.StatusOK, call(t, "POST", base+"/spaces/"+trip.ID+"/sessions/"+root.ID+"/turn", key,
		map[string]string{"input": "What is the weather in Paris?"}, &res))
	assert.Equal(t, 1, res.Turn.ToolCallsExecuted)
	require.NotNil(t, res.Turn.FinalContent)
	assert.Equal(t, "It is sunny in Paris, 21°C.", *res.Turn.FinalContent)

	var msgs []message
	require.Equal(t, http.StatusOK, call(t, "GET", base+"/spaces/"+trip.ID+"/sessions/"+root.ID+"/messages", key, nil, &msgs))
	require.Len(t, msgs, 4, "user, assistant's tool call, tool result, final answer")
	assert.Equal(t, "user", msgs[0].Role)
	require.Len(t, msgs[1].ToolCalls, 1)
	assert.Equal(t, "lookup_weather", msgs[1].ToolCalls[0].Name)
	assert.Equal(t, "tool", msgs[2].Role)
	assert.JSONEq(t, `{"city":"Paris","forecast":"sunny","celsius":21}`, msgs[2].Content, "the tool's canned answer is stored")
	assert.Equal(t, "It is sunny in Paris, 21°C.", msgs[3].Content)

	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	assert.Contains(t, reqs[0].Tools, "lookup_weather")
	assert.Contains(t, reqs[0].Tools, "stello_create_session", "the built-in tool is still offered")
	require.NotEmpty(t, reqs[0].Messages)
	assert.Equal(t, "system", reqs[0].Messages[0].Role)
	assert.Contains(t, reqs[0].Messages[0].Content, "travel assistant", "the hook's default system prompt")
	last := reqs[1].Messages[len(reqs[1].Messages)-1]
	assert.Equal(t, "tool", last.Role)
	assert.Contains(t, last.Content, "sunny", "the tool's result went back to the model")

	// A space without the config gets neither the tool nor the prompt.
	var plain space
	require.Equal(t, http.StatusCreated, call(t, "POST", base+"/spaces", key, map[string]any{"label": "Plain"}, &plain))
	require.Equal(t, http.StatusOK, call(t, "GET", base+"/spaces/"+plain.ID+"/sessions", key, nil, &root))
	require.Equal(t, http.StatusOK, call(t, "POST", base+"/spaces/"+plain.ID+"/sessions/"+root.ID+"/turn", key,
		map[string]string{"input": "Hello"}, &res))
	reqs = mock.Requests()
	require.Len(t, reqs, 3)
	assert.False(t, slices.Contains(reqs[2].Tools, "lookup_weather"), "tools offered: %v", reqs[2].Tools)
	for _, m := range reqs[2].Messages {
		assert.False(t, strings.Contains(m.Content, "travel assistant"), "message %+v", m)
	}

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("the program did not stop")
	}
}
