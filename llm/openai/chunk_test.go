package openai

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refChunk decodes a chunk with encoding/json: what parseChunk must read.
func refChunk(t testing.TB, data []byte) (streamChunk, bool) {
	var raw struct {
		Choices []struct {
			Index        int     `json:"index"`
			FinishReason *string `json:"finish_reason"`
			Delta        struct {
				Content   *string `json:"content"`
				ToolCalls []struct {
					Index    int    `json:"index"`
					ID       string `json:"id"`
					Function struct {
						Name      string `json:"name"`
						Arguments string `json:"arguments"`
					} `json:"function"`
				} `json:"tool_calls"`
			} `json:"delta"`
		} `json:"choices"`
		Usage *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return streamChunk{}, false
	}
	var c streamChunk
	for _, ch := range raw.Choices {
		cc := chunkChoice{Index: ch.Index}
		if ch.FinishReason != nil {
			cc.FinishReason = *ch.FinishReason
		}
		if ch.Delta.Content != nil {
			cc.Delta.Content = *ch.Delta.Content
		}
		for _, tc := range ch.Delta.ToolCalls {
			cc.Delta.ToolCalls = append(cc.Delta.ToolCalls, chunkToolCall{Index: tc.Index, ID: tc.ID,
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
}

// parseChunk reads what encoding/json reads, members given twice included.
func TestParseChunkReadsWhatJSONDecodingReads(t *testing.T) {
	var c streamChunk
	for _, s := range chunkSamples {
		want, ok := refChunk(t, []byte(s))
		require.True(t, ok, s)
		require.NoError(t, parseChunk([]byte(s), &c), s)
		assert.Equal(t, normChunk(want), normChunk(c), s)
	}
	for _, bad := range []string{``, `{`, `[]`, `"x"`, `{"choices":[}`, `{"a":1}x`} {
		assert.Error(t, parseChunk([]byte(bad), &c), bad)
	}
}

// FuzzParseChunk: on any input parseChunk fails or agrees with encoding/json
// on every JSON object whose members have the types and the names (case
// included) the format gives them.
func FuzzParseChunk(f *testing.F) {
	for _, s := range chunkSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c streamChunk
		err := parseChunk(data, &c)
		want, ok := refChunk(t, data)
		if !ok {
			return // the types differ from the format's, or not JSON: any outcome but a panic
		}
		if !json.Valid(data) || foldedKey(data) || duplicateKey(data) {
			return // where encoding/json's reading is its own (it merges repeated objects)
		}
		require.NoError(t, err)
		assert.Equal(t, normChunk(want), normChunk(c))
	})
}

// foldedKey reports a member name of the format written in another case,
// which encoding/json matches and the format (and parseChunk) does not.
func foldedKey(data []byte) bool {
	lower := bytes.ToLower(data)
	for _, k := range []string{"choices", "usage", "index", "finish_reason", "delta", "content", "tool_calls", "id",
		"function", "name", "arguments", "prompt_tokens", "completion_tokens"} {
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

// normChunk makes empty and nil slices compare equal.
func normChunk(c streamChunk) streamChunk {
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
