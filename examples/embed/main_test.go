package main

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/stellohq/stello/client"
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

// TestEmbedCallsTheCustomTool runs the example program against a real
// database and an OpenAI-compatible mock model scripted to call
// lookup_weather, and checks through the Go client that the tool ran in
// the space whose config asks for it, and only there.
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

	c := client.New(base, key)
	cctx, cancelCalls := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancelCalls()

	// A space whose config asks for the tool.
	trip, err := c.CreateSpace(cctx, client.SpaceInput{Label: "Trip", Config: json.RawMessage(`{"tools":["lookup_weather"]}`)})
	require.NoError(t, err)
	root, err := c.Tree(cctx, trip.ID)
	require.NoError(t, err)
	res, err := c.Turn(cctx, trip.ID, root.ID, "What is the weather in Paris?")
	require.NoError(t, err)
	assert.Equal(t, 1, res.Turn.ToolCallsExecuted)
	require.NotNil(t, res.Turn.FinalContent)
	assert.Equal(t, "It is sunny in Paris, 21°C.", *res.Turn.FinalContent)

	msgs, err := c.Messages(cctx, trip.ID, root.ID, 0, 0)
	require.NoError(t, err)
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
	plain, err := c.CreateSpace(cctx, client.SpaceInput{Label: "Plain"})
	require.NoError(t, err)
	root, err = c.Tree(cctx, plain.ID)
	require.NoError(t, err)
	_, err = c.Turn(cctx, plain.ID, root.ID, "Hello")
	require.NoError(t, err)
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
