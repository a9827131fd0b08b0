package anthropic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// The request body is written directly in the Messages API wire format:
// fixed parts, the caller's pre-encoded history (llm.Request.History) and
// the messages after it, instead of the SDK's reflective encoding of every
// message on every call. The golden tests check that the body equals, as
// JSON, what the SDK's own marshalling produces.

var _ llm.HistoryEncoder = (*Client)(nil)

// EncodeHistory returns prev extended by msgs in the Messages API wire
// format (see llm.HistoryEncoder). System messages are an error: the API
// takes them apart from the conversation.
func (c *Client) EncodeHistory(prev *llm.Encoded, msgs []llm.Message) (*llm.Encoded, error) {
	w := writer{}
	n := 0
	if prev != nil {
		if prev.Provider != ProviderName {
			return nil, fmt.Errorf("anthropic: cannot extend a %s encoding", prev.Provider)
		}
		w = writer{closed: prev.Closed, role: prev.OpenRole, open: prev.Open}
		n = prev.Messages
	}
	for i, m := range msgs {
		if m.Role == llm.RoleSystem {
			return nil, fmt.Errorf("anthropic: message %d: a system message cannot be part of an encoded history", n+i)
		}
		if err := w.add(m, n+i); err != nil {
			return nil, err
		}
	}
	return &llm.Encoded{Provider: ProviderName, Messages: n + len(msgs), Closed: w.closed, OpenRole: w.role, Open: w.open}, nil
}

// writer writes wire messages, joining consecutive messages of one role
// into one message, as the API requires. closed holds the finished
// messages (each followed by a comma), open the content blocks of the last
// one (each followed by a comma) while it may still grow.
type writer struct {
	closed []byte
	role   string
	open   []byte
}

// begin makes role's message the open one. A new open message gets a fresh
// buffer, so an Encoded's Open is never written to by its extensions.
func (w *writer) begin(role string) {
	if w.role == role {
		return
	}
	w.flush()
	w.role = role
	w.open = nil
}

// flush closes the open message.
func (w *writer) flush() {
	if w.role == "" || len(w.open) == 0 {
		w.role, w.open = "", nil
		return
	}
	w.closed = append(w.closed, `{"role":"`...)
	w.closed = append(w.closed, w.role...)
	w.closed = append(w.closed, `","content":[`...)
	w.closed = append(w.closed, w.open[:len(w.open)-1]...)
	w.closed = append(w.closed, ']', '}', ',')
	w.role, w.open = "", nil
}

func (w *writer) text(s string) {
	w.open = append(w.open, `{"type":"text","text":`...)
	w.open = llm.AppendJSONString(w.open, s)
	w.open = append(w.open, '}', ',')
}

// add writes one non-system message.
func (w *writer) add(m llm.Message, i int) error {
	switch m.Role {
	case llm.RoleUser:
		if m.Content != "" {
			w.begin("user")
			w.text(m.Content)
		}
	case llm.RoleAssistant:
		if m.Content == "" && len(m.ToolCalls) == 0 {
			return nil
		}
		w.begin("assistant")
		if m.Content != "" {
			w.text(m.Content)
		}
		for _, tc := range m.ToolCalls {
			w.open = append(w.open, `{"type":"tool_use","id":`...)
			w.open = llm.AppendJSONString(w.open, tc.ID)
			w.open = append(w.open, `,"name":`...)
			w.open = llm.AppendJSONString(w.open, tc.Name)
			w.open = append(w.open, `,"input":`...)
			w.open = append(w.open, provutil.Arguments(tc.Input)...)
			w.open = append(w.open, '}', ',')
		}
	case llm.RoleTool:
		w.begin("user")
		w.open = append(w.open, `{"type":"tool_result","tool_use_id":`...)
		w.open = llm.AppendJSONString(w.open, m.ToolCallID)
		if m.Content != "" {
			w.open = append(w.open, `,"content":[{"type":"text","text":`...)
			w.open = llm.AppendJSONString(w.open, m.Content)
			w.open = append(w.open, '}', ']')
		}
		w.open = append(w.open, '}', ',')
	default:
		return &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("message %d has unsupported role %q", i, m.Role)}
	}
	return nil
}

// toolsCache is the encoded "tools" array of the last tool list seen; the
// engine offers the same tools on every call.
type toolsCache struct {
	tools []llm.Tool
	json  []byte
}

func (c *Client) encodeTools(tools []llm.Tool) ([]byte, error) {
	if tc := c.tools.Load(); tc != nil && slices.EqualFunc(tc.tools, tools, func(x, y llm.Tool) bool {
		return x.Name == y.Name && x.Description == y.Description && bytes.Equal(x.Parameters, y.Parameters)
	}) {
		return tc.json, nil
	}
	type tool struct {
		Name        string                     `json:"name"`
		Description string                     `json:"description,omitempty"`
		InputSchema map[string]json.RawMessage `json:"input_schema"`
	}
	out := make([]tool, 0, len(tools))
	for _, t := range tools {
		schema, err := provutil.SchemaObject(t.Parameters)
		if err != nil {
			return nil, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("tool %q: %v", t.Name, err)}
		}
		if r, ok := schema["required"]; ok {
			var names []string
			if err := json.Unmarshal(r, &names); err != nil {
				return nil, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("tool %q: required must be a list of names", t.Name)}
			}
		}
		schema["type"] = json.RawMessage(`"object"`)
		out = append(out, tool{Name: t.Name, Description: t.Description, InputSchema: schema})
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
	maxTokens := req.MaxTokens
	if maxTokens <= 0 {
		maxTokens = c.cfg.MaxTokens
	}
	if maxTokens <= 0 {
		maxTokens = DefaultMaxTokens
	}
	hist := req.History
	if hist != nil && (hist.Provider != ProviderName || req.HistoryAt < 0 || req.HistoryAt+hist.Messages > len(req.Messages)) {
		hist = nil
	}
	if hist != nil {
		// The encoding starts a message of its own only if nothing but
		// system messages comes before it.
		for _, m := range req.Messages[:req.HistoryAt] {
			if m.Role != llm.RoleSystem {
				hist = nil
				break
			}
		}
	}
	size := 256 + len(c.cfg.Model)
	if hist != nil {
		size += len(hist.Closed) + len(hist.Open)
	}
	var system []string
	for i, m := range req.Messages {
		if hist == nil || i < req.HistoryAt || i >= req.HistoryAt+hist.Messages {
			size += len(m.Content) + 64 // the history's are already encoded
		}
		if m.Role == llm.RoleSystem {
			if s := strings.TrimSpace(m.Content); s != "" {
				system = append(system, s)
			}
		}
	}
	if req.Format == llm.FormatJSON {
		system = append(system, jsonInstruction)
	}
	b := dst[:0]
	if cap(b) < size {
		b = make([]byte, 0, size+size/8)
	}
	b = append(b, `{"model":`...)
	b = llm.AppendJSONString(b, c.cfg.Model)
	b = append(b, `,"max_tokens":`...)
	b = strconv.AppendInt(b, int64(maxTokens), 10)
	b = append(b, `,"messages":[`...)
	w := writer{closed: b}
	rest := req.Messages
	if hist != nil {
		w.closed = append(w.closed, hist.Closed...)
		w.role = hist.OpenRole
		w.open = append([]byte(nil), hist.Open...)
		rest = req.Messages[req.HistoryAt+hist.Messages:]
	}
	offset := len(req.Messages) - len(rest)
	for i, m := range rest {
		if m.Role == llm.RoleSystem {
			continue
		}
		if err := w.add(m, offset+i); err != nil {
			return nil, err
		}
	}
	w.flush()
	b = w.closed
	if b[len(b)-1] == ',' {
		b = b[:len(b)-1]
	}
	b = append(b, ']')
	if len(system) > 0 {
		b = append(b, `,"system":[{"type":"text","text":`...)
		b = llm.AppendJSONString(b, strings.Join(system, "\n\n"))
		b = append(b, '}', ']')
	}
	if len(req.Tools) > 0 {
		tools, err := c.encodeTools(req.Tools)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"tools":`...)
		b = append(b, tools...)
	}
	if stream {
		b = append(b, `,"stream":true`...)
	}
	return append(b, '}'), nil
}
