package fake_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/fake"
)

func userReq(msgs ...string) llm.Request {
	req := llm.Request{Messages: []llm.Message{{Role: llm.RoleSystem, Content: "system prompt"}}}
	for i, m := range msgs {
		role := llm.RoleUser
		if i%2 == 1 {
			role = llm.RoleAssistant
		}
		req.Messages = append(req.Messages, llm.Message{Role: role, Content: m})
	}
	return req
}

func TestName(t *testing.T) {
	assert.Equal(t, "fake", fake.New(fake.Config{}).Name())
}

func TestReply(t *testing.T) {
	tests := []struct {
		name       string
		replyWords int
		req        llm.Request
		want       string
		wantWords  int
	}{
		{"echo", 0, userReq("hello there"), "Echo: hello there", 3},
		{"last user message", 0, userReq("first", "assistant says", "second"), "Echo: second", 2},
		{"no user message", 0, llm.Request{}, "Echo: (nothing)", 2},
		{"padded", 10, userReq("hi"), "Echo: hi lorem ipsum dolor sit amet consectetur adipiscing elit", 10},
		{"already long enough", 2, userReq("one two three"), "Echo: one two three", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.New(fake.Config{ReplyWords: tt.replyWords})
			resp, err := c.Complete(context.Background(), tt.req)
			require.NoError(t, err)
			assert.Equal(t, tt.want, resp.Content)
			assert.Len(t, strings.Fields(resp.Content), tt.wantWords)
			assert.Empty(t, resp.ToolCalls)
			assert.Equal(t, (len(tt.want)+3)/4, resp.Usage.OutputTokens)
			assert.True(t, json.Valid([]byte(resp.Raw)))
		})
	}
}

func TestDeterministic(t *testing.T) {
	c := fake.New(fake.Config{ReplyWords: 50})
	req := userReq("same input")
	req.Tools = []llm.Tool{{Name: "ignored"}}
	first, err := c.Complete(context.Background(), req)
	require.NoError(t, err)
	for range 5 {
		again, err := fake.New(fake.Config{ReplyWords: 50}).Complete(context.Background(), req)
		require.NoError(t, err)
		assert.Equal(t, first, again)
	}
	assert.Empty(t, first.ToolCalls, "the fake model never calls tools")
}

func TestStreamChunks(t *testing.T) {
	tests := []struct {
		name       string
		input      string
		replyWords int
		minChunks  int
	}{
		{"short", "hi", 0, 2},
		{"three words", "a b", 0, 3},
		{"long", "tell me a story", 40, 40},
		{"multi-line", "line one\nline two", 0, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.New(fake.Config{ReplyWords: tt.replyWords})
			var chunks []string
			resp, err := c.Stream(context.Background(), userReq(tt.input), func(d llm.Delta) error {
				assert.False(t, d.IsToolCall)
				chunks = append(chunks, d.Text)
				return nil
			})
			require.NoError(t, err)
			assert.GreaterOrEqual(t, len(chunks), tt.minChunks)
			assert.Equal(t, resp.Content, strings.Join(chunks, ""))
			if len(strings.Fields(resp.Content)) >= 3 {
				assert.GreaterOrEqual(t, len(chunks), 3)
			}
			complete, err := c.Complete(context.Background(), userReq(tt.input))
			require.NoError(t, err)
			assert.Equal(t, complete.Content, resp.Content)
		})
	}
}

func TestChunks(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"one", []string{"one"}},
		{"a b  c", []string{"a ", "b  ", "c"}},
		{"  lead x", []string{"  lead ", "x"}},
		{"trail ", []string{"trail "}},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, fake.Chunks(tt.in), "input %q", tt.in)
	}
}

func TestJSONMode(t *testing.T) {
	const (
		a = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
		b = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	)
	tests := []struct {
		name  string
		input string
		want  []string
		count string
	}{
		{"none", "no ids here", nil, "0 sessions"},
		{"one", "session " + b + " said hi", []string{b}, "1 session"},
		{"dedup and order, canonical lower case", "s1=" + a + ", s2=" + b + ", again " + strings.ToLower(a), []string{strings.ToLower(a), b}, "2 sessions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.New(fake.Config{ReplyWords: 100}) // padding does not apply to JSON
			req := userReq("earlier "+a, "ok", tt.input)
			req.Format = llm.FormatJSON
			var streamed strings.Builder
			resp, err := c.Stream(context.Background(), req, func(d llm.Delta) error {
				streamed.WriteString(d.Text)
				return nil
			})
			require.NoError(t, err)
			assert.Equal(t, resp.Content, streamed.String())

			var got fake.JSONReply
			require.NoError(t, json.Unmarshal([]byte(resp.Content), &got))
			assert.Contains(t, got.Synthesis, tt.count)
			ids := make([]string, 0, len(got.Insights))
			for _, in := range got.Insights {
				ids = append(ids, in.SessionID)
				assert.NotEmpty(t, in.Content)
			}
			if tt.want == nil {
				assert.Empty(t, ids)
			} else {
				assert.Equal(t, tt.want, ids)
			}
			// Tolerant parsing, as the engine does it, also works.
			obj, ok := llm.ExtractJSONObject(resp.Content)
			require.True(t, ok)
			assert.Equal(t, resp.Content, obj)
		})
	}
}

func TestLatencyAndChunkDelay(t *testing.T) {
	c := fake.New(fake.Config{Latency: 30 * time.Millisecond, ChunkDelay: 10 * time.Millisecond})
	var times []time.Duration
	start := time.Now()
	_, err := c.Stream(context.Background(), userReq("a b c"), func(llm.Delta) error {
		times = append(times, time.Since(start))
		return nil
	})
	require.NoError(t, err)
	require.Len(t, times, 4) // "Echo: " "a " "b " "c"
	assert.GreaterOrEqual(t, times[0], 30*time.Millisecond)
	assert.GreaterOrEqual(t, times[3], 60*time.Millisecond)
}

func TestCancellation(t *testing.T) {
	tests := []struct {
		name        string
		cfg         fake.Config
		cancelAfter time.Duration
		deadline    bool
	}{
		{"cancel during latency", fake.Config{Latency: time.Second}, 20 * time.Millisecond, false},
		{"cancel between chunks", fake.Config{ChunkDelay: time.Second}, 20 * time.Millisecond, false},
		{"deadline during latency", fake.Config{Latency: time.Second}, 20 * time.Millisecond, true},
		{"deadline between chunks", fake.Config{ChunkDelay: time.Second}, 20 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.New(tt.cfg)
			var ctx context.Context
			var cancel context.CancelFunc
			if tt.deadline {
				ctx, cancel = context.WithTimeout(context.Background(), tt.cancelAfter)
			} else {
				ctx, cancel = context.WithCancel(context.Background())
				time.AfterFunc(tt.cancelAfter, cancel)
			}
			defer cancel()
			start := time.Now()
			_, err := c.Stream(ctx, userReq("a b c d"), nil)
			require.Error(t, err)
			assert.Less(t, time.Since(start), 500*time.Millisecond)
			if tt.deadline {
				assert.ErrorIs(t, err, llm.ErrTimeout)
				var pe *llm.ProviderError
				require.ErrorAs(t, err, &pe)
				assert.True(t, pe.Timeout)
			} else {
				assert.ErrorIs(t, err, context.Canceled)
				assert.NotErrorIs(t, err, llm.ErrProvider)
			}
		})
	}
}

func TestAlreadyCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := fake.New(fake.Config{}).Complete(ctx, userReq("x"))
	assert.ErrorIs(t, err, context.Canceled)
}

func TestCallbackError(t *testing.T) {
	stop := errors.New("stop")
	calls := 0
	_, err := fake.New(fake.Config{}).Stream(context.Background(), userReq("a b c"), func(llm.Delta) error {
		calls++
		return stop
	})
	assert.ErrorIs(t, err, stop)
	assert.Equal(t, 1, calls)
}

func TestConcurrentUse(t *testing.T) {
	c := fake.New(fake.Config{ChunkDelay: time.Millisecond})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Stream(context.Background(), userReq(strings.Repeat("w ", i+1)), func(llm.Delta) error { return nil })
			assert.NoError(t, err)
			assert.Len(t, strings.Fields(resp.Content), i+2)
		}()
	}
	wg.Wait()
}

func TestUUIDs(t *testing.T) {
	assert.Equal(t,
		[]string{"6ba7b810-9dad-11d1-80b4-00c04fd430c8"},
		fake.UUIDs("x 6BA7B810-9DAD-11D1-80B4-00C04FD430C8 and 6ba7b810-9dad-11d1-80b4-00c04fd430c8 but not 6ba7b810-9dad-11d1-80b4-00c04fd430c8a"),
	)
}
