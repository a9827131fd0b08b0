package openai

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refChunk decodes a chunk (part "delta") or a completion (part "message")
// with encoding/json: what parseReply must read.
func refChunk(t testing.TB, data []byte, part string) (streamChunk, bool) {
	type message struct {
		Content   *string `json:"content"`
		ToolCalls []struct {
			Index    int    `json:"index"`
			ID       string `json:"id"`
			Type     string `json:"type"`
			Function struct {
				Name      string `json:"name"`
				Arguments string `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
	}
	var raw struct {
		Choices []struct {
			Index        int     `json:"index"`
			FinishReason *string `json:"finish_reason"`
			Delta        message `json:"delta"`
			Message      message `json:"message"`
		} `json:"choices"`
		Usage *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return streamChunk{}, false
	}
	var c streamChunk
	// The error's message is checked by the stream tests; here, whether
	// there is one.
	c.Failed = raw.Error != nil && string(raw.Error) != "null"
	for _, ch := range raw.Choices {
		cc := chunkChoice{Index: ch.Index}
		if ch.FinishReason != nil {
			cc.FinishReason = *ch.FinishReason
		}
		m := ch.Delta
		if part == "message" {
			m = ch.Message
		}
		if m.Content != nil {
			cc.Delta.Content = *m.Content
		}
		for _, tc := range m.ToolCalls {
			cc.Delta.ToolCalls = append(cc.Delta.ToolCalls, chunkToolCall{Index: tc.Index, ID: tc.ID, Type: tc.Type,
				Name: tc.Function.Name, Arguments: tc.Function.Arguments})
		}
		c.Choices = append(c.Choices, cc)
	}
	if raw.Usage != nil {
		c.Usage = &chunkUsage{PromptTokens: raw.Usage.PromptTokens, CompletionTokens: raw.Usage.CompletionTokens}
	}
	return c, true
}

var chunkSamples = []string{
	`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`,
	`{"id":"c1","choices":[{"index":0,"delta":{"content":" caf\u00e9 ☕ \"q\" \\ 日本"},"logprobs":null,"finish_reason":null}],"usage":null}`,
	`{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":17,"completion_tokens":4,"total_tokens":21}}`,
	`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}`,
	`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"stello_create_session","arguments":""}}]}}]}`,
	`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"label\":"}},{"index":1,"id":"call_2","function":{"name":"x","arguments":"{}"}}]}}]}`,
	`{"choices":[{"index":1,"delta":{"content":"b"}},{"index":0,"delta":{"content":"a"},"finish_reason":"length"}]}`,
	`{"usage":{"prompt_tokens":1},"choices":[{"delta":{"content":"first"},"index":0}],"usage":{"prompt_tokens":2,"completion_tokens":5}}`,
	`{"choices":[{"index":0,"delta":{"content":"x","content":"y"}}]}`,
	`{"choices":[{"index":0,"delta":{"content":null},"finish_reason":null}]}`,
	`{"choices":null,"usage":null}`,
	`{"choices":[{"index":0,"delta":{"content":"a","tool_calls":null}}]}`,
	`{}`,
	`{"error":{"message":"overloaded","type":"server_error"}}`,
	`{"error":"boom","choices":[]}`,
	`{"error":null,"choices":[{"index":0,"delta":{"content":"a"}}]}`,
}

// completionSamples are chat.completion objects (and, read as chunks, the
// chunk samples are too: parseReply reads either from any input).
var completionSamples = []string{
	`{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \u00e9 ☕","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}`,
	`{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"stello_create_session","arguments":"{\"label\":\"a\"}"}},{"id":"c2","type":"custom","custom":{"name":"x","input":""}}]},"finish_reason":"tool_calls"}]}`,
	`{"choices":[{"index":1,"message":{"content":"b"},"finish_reason":"stop"},{"index":0,"message":{"content":"a","content":"c"},"finish_reason":"length"}]}`,
	`{"choices":[{"index":0,"message":{"content":"a","tool_calls":null},"delta":{"content":"z"},"finish_reason":"stop"}],"usage":null}`,
}

// parseReply reads what encoding/json reads, members given twice included.
func TestParseChunkReadsWhatJSONDecodingReads(t *testing.T) {
	var c streamChunk
	for _, part := range []string{"delta", "message"} {
		for _, s := range append(chunkSamples[:len(chunkSamples):len(chunkSamples)], completionSamples...) {
			want, ok := refChunk(t, []byte(s), part)
			require.True(t, ok, s)
			require.NoError(t, parseReply([]byte(s), &c, part), s)
			assert.Equal(t, normChunk(want), normChunk(c), "%s of %s", part, s)
		}
		for _, bad := range []string{``, `{`, `[]`, `"x"`, `{"choices":[}`, `{"a":1}x`} {
			assert.Error(t, parseReply([]byte(bad), &c, part), bad)
		}
	}
}

// FuzzParseChunk: on any input parseReply, reading a chunk or a completion,
// fails or agrees with encoding/json on every JSON object whose members
// have the types and the names (case included) the format gives them.
func FuzzParseChunk(f *testing.F) {
	for _, s := range append(chunkSamples[:len(chunkSamples):len(chunkSamples)], completionSamples...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, part := range []string{"delta", "message"} {
			var c streamChunk
			err := parseReply(data, &c, part)
			want, ok := refChunk(t, data, part)
			if !ok {
				return // the types differ from the format's, or not JSON: any outcome but a panic
			}
			if !json.Valid(data) || foldedKey(data) || duplicateKey(data) {
				return // where encoding/json's reading is its own (it merges repeated objects)
			}
			require.NoError(t, err)
			assert.Equal(t, normChunk(want), normChunk(c), part)
		}
	})
}

// foldedKey reports a member name of the format written in another case,
// which encoding/json matches and the format (and parseChunk) does not.
func foldedKey(data []byte) bool {
	lower := bytes.ToLower(data)
	for _, k := range []string{"choices", "usage", "index", "finish_reason", "delta", "message", "content", "tool_calls", "id", "type",
		"function", "name", "arguments", "prompt_tokens", "completion_tokens", "error"} {
		q := []byte(`"` + k + `"`)
		if bytes.Count(lower, q) != bytes.Count(data, q) {
			return true
		}
	}
	return false
}

// duplicateKey reports an object of data that names a member twice.
func duplicateKey(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		keys   map[string]bool
		object bool
		key    bool // the next token of this object is a member name
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if d, ok := tok.(json.Delim); !ok || d != '}' {
				k := tok.(string)
				if top.keys[k] {
					return true
				}
				top.keys[k] = true
				top.key = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, object: true, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim(']'), json.Delim('}'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the enclosing object expects a name next.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
	}
}

// normChunk makes empty and nil slices compare equal, and leaves out the
// error's message.
func normChunk(c streamChunk) streamChunk {
	c.Error = ""
	if len(c.Choices) == 0 {
		c.Choices = nil
	}
	for i := range c.Choices {
		if len(c.Choices[i].Delta.ToolCalls) == 0 {
			c.Choices[i].Delta.ToolCalls = nil
		}
	}
	return c
}

var benchChunk = []byte(`{"id":"chatcmpl-8x1","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}],"usage":null}`)

func BenchmarkParseChunk(b *testing.B) {
	var c streamChunk
	b.ReportAllocs()
	for b.Loop() {
		if err := parseChunk(benchChunk, &c); err != nil {
			b.Fatal(err)
		}
	}
}

var benchCompletion = []byte(`{"id":"chatcmpl-8x1","object":"chat.completion","created":1733000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Echo: a reply of some twenty words, about as long as the mock's answers in the benchmarks, with punctuation and all.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":412,"completion_tokens":24,"total_tokens":436},"system_fingerprint":"fp_0ba0d124f1"}`)

func BenchmarkParseCompletion(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		var c streamChunk
		if err := parseReply(benchCompletion, &c, "message"); err != nil {
			b.Fatal(err)
		}
	}
}
