package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// The request body is written directly in the Chat Completions wire format:
// fixed parts, the caller's pre-encoded history (llm.Request.History) and
// the messages after it. The SDK's reflective ChatCompletionNewParams
// encoding of every message on every call was half of the server's CPU.
// The golden tests check that the body equals, as JSON, what the SDK's own
// marshalling produces.

var _ llm.HistoryEncoder = (*Client)(nil)

// EncodeHistory returns prev extended by msgs in the Chat Completions wire
// format (see llm.HistoryEncoder).
func (c *Client) EncodeHistory(prev *llm.Encoded, msgs []llm.Message) (*llm.Encoded, error) {
	out := &llm.Encoded{Provider: ProviderName}
	if prev != nil {
		if prev.Provider != ProviderName {
			return nil, fmt.Errorf("openai: cannot extend a %s encoding", prev.Provider)
		}
		*out = *prev
	}
	var err error
	for i, m := range msgs {
		if out.Closed, err = appendMessage(out.Closed, m, out.Messages+i); err != nil {
			return nil, err
		}
	}
	out.Messages += len(msgs)
	return out, nil
}

// appendMessage appends one message and a comma.
func appendMessage(b []byte, m llm.Message, i int) ([]byte, error) {
	switch m.Role {
	case llm.RoleSystem, llm.RoleUser:
		b = append(b, `{"role":"`...)
		b = append(b, m.Role...)
		b = append(b, `","content":`...)
		b = llm.AppendJSONString(b, m.Content)
	case llm.RoleAssistant:
		b = append(b, `{"role":"assistant"`...)
		if m.Content != "" || len(m.ToolCalls) == 0 {
			b = append(b, `,"content":`...)
			b = llm.AppendJSONString(b, m.Content)
		}
		if len(m.ToolCalls) > 0 {
			b = append(b, `,"tool_calls":[`...)
			for k, tc := range m.ToolCalls {
				if k > 0 {
					b = append(b, ',')
				}
				b = append(b, `{"id":`...)
				b = llm.AppendJSONString(b, tc.ID)
				b = append(b, `,"type":"function","function":{"name":`...)
				b = llm.AppendJSONString(b, tc.Name)
				b = append(b, `,"arguments":`...)
				b = llm.AppendJSONString(b, provutil.Arguments(tc.Input))
				b = append(b, `}}`...)
			}
			b = append(b, ']')
		}
	case llm.RoleTool:
		b = append(b, `{"role":"tool","content":`...)
		b = llm.AppendJSONString(b, m.Content)
		b = append(b, `,"tool_call_id":`...)
		b = llm.AppendJSONString(b, m.ToolCallID)
	default:
		return b, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("message %d has unsupported role %q", i, m.Role)}
	}
	return append(b, '}', ','), nil
}

// toolsCache is the encoded "tools" array of the last tool list seen; the
// engine offers the same tools on every call.
type toolsCache struct {
	tools []llm.Tool
	json  []byte
}

func sameTools(a, b []llm.Tool) bool {
	return slices.EqualFunc(a, b, func(x, y llm.Tool) bool {
		return x.Name == y.Name && x.Description == y.Description && bytes.Equal(x.Parameters, y.Parameters)
	})
}

// encodeTools returns the "tools" array for tools, from the cache when the
// list is unchanged.
func (c *Client) encodeTools(tools []llm.Tool) ([]byte, error) {
	if tc := c.tools.Load(); tc != nil && sameTools(tc.tools, tools) {
		return tc.json, nil
	}
	type function struct {
		Name        string                     `json:"name"`
		Description string                     `json:"description,omitempty"`
		Parameters  map[string]json.RawMessage `json:"parameters"`
	}
	type tool struct {
		Type     string   `json:"type"`
		Function function `json:"function"`
	}
	out := make([]tool, 0, len(tools))
	for _, t := range tools {
		schema, err := provutil.SchemaObject(t.Parameters)
		if err != nil {
			return nil, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("tool %q: %v", t.Name, err)}
		}
		out = append(out, tool{Type: "function", Function: function{Name: t.Name, Description: t.Description, Parameters: schema}})
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("tools: %v", err)}
	}
	c.tools.Store(&toolsCache{tools: slices.Clone(tools), json: b})
	return b, nil
}

// body builds the request body of req.
func (c *Client) body(dst []byte, req llm.Request, stream bool) ([]byte, error) {
	hist := req.History
	if hist != nil && (hist.Provider != ProviderName || req.HistoryAt < 0 || req.HistoryAt+hist.Messages > len(req.Messages)) {
		hist = nil
	}
	// The buffer's size: the fixed parts, the encoded history, and the
	// messages encoded here (the history's are already in it).
	size := 256 + len(c.cfg.Model)
	for i, m := range req.Messages {
		if hist != nil && i >= req.HistoryAt && i < req.HistoryAt+hist.Messages {
			continue
		}
		size += len(m.Content) + 64
	}
	if hist != nil {
		size += len(hist.Closed)
	}
	b := dst[:0]
	if cap(b) < size {
		b = make([]byte, 0, size+size/8)
	}
	b = append(b, `{"model":`...)
	b = llm.AppendJSONString(b, c.cfg.Model)
	b = append(b, `,"messages":[`...)
	var err error
	rest := req.Messages
	if hist != nil {
		for i, m := range req.Messages[:req.HistoryAt] {
			if b, err = appendMessage(b, m, i); err != nil {
				return nil, err
			}
		}
		b = append(b, hist.Closed...)
		rest = req.Messages[req.HistoryAt+hist.Messages:]
	}
	offset := len(req.Messages) - len(rest)
	for i, m := range rest {
		if b, err = appendMessage(b, m, offset+i); err != nil {
			return nil, err
		}
	}
	if b[len(b)-1] == ',' {
		b = b[:len(b)-1]
	}
	b = append(b, ']')
	if len(req.Tools) > 0 {
		tools, err := c.encodeTools(req.Tools)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"tools":`...)
		b = append(b, tools...)
	}
	maxTokens := req.MaxTokens
	if maxTokens <= 0 {
		maxTokens = c.cfg.MaxTokens
	}
	if maxTokens > 0 {
		if c.maxCompletionTokens {
			b = append(b, `,"max_completion_tokens":`...)
		} else {
			b = append(b, `,"max_tokens":`...)
		}
		b = strconv.AppendInt(b, int64(maxTokens), 10)
	}
	if req.Format == llm.FormatJSON {
		b = append(b, `,"response_format":{"type":"json_object"}`...)
	}
	if stream {
		// Ask for a final usage chunk; servers that ignore it simply send none.
		b = append(b, `,"stream":true,"stream_options":{"include_usage":true}`...)
	}
	return append(b, '}'), nil
}

// toolsPointer is the Client's tools cache.
type toolsPointer = atomic.Pointer[toolsCache]
