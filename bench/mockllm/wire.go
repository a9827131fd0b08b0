package mockllm

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// This file holds the OpenAI Chat Completions wire types: what clients send
// (decoded leniently) and what the mock answers (encoded exactly as the real
// API does, minus optional fields nobody relies on).

// chatRequest is the subset of a chat completion request the mock reads.
type chatRequest struct {
	Model         string        `json:"model"`
	Messages      []reqMessage  `json:"messages"`
	Tools         []reqTool     `json:"tools"`
	Stream        bool          `json:"stream"`
	StreamOptions *reqStreamOpt `json:"stream_options"`
	MaxTokens     int           `json:"max_tokens"`
	MaxCompletion int           `json:"max_completion_tokens"`
	RespFormat    *reqRespFmt   `json:"response_format"`
}

type reqStreamOpt struct {
	IncludeUsage bool `json:"include_usage"`
}

type reqRespFmt struct {
	Type string `json:"type"`
}

type reqTool struct {
	Type     string `json:"type"`
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

type reqMessage struct {
	Role       string         `json:"role"`
	Content    msgContent     `json:"content"`
	ToolCalls  []wireToolCall `json:"tool_calls"`
	ToolCallID string         `json:"tool_call_id"`
}

// msgContent is a message content that may be a string, an array of content
// parts (text parts are concatenated, others ignored) or null.
type msgContent string

type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

var errBadContent = errors.New("message content must be a string, an array of content parts or null")

// UnmarshalJSON implements json.Unmarshaler.
func (c *msgContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return errBadContent
	}
	switch b[0] {
	case '"':
		// Fast path: no escapes means the bytes between the quotes are the
		// string (the decoder has already validated the document).
		if len(b) >= 2 && b[len(b)-1] == '"' && bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b) {
			*c = msgContent(b[1 : len(b)-1])
			return nil
		}
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*c = msgContent(s)
	case '[':
		var parts []contentPart
		if err := json.Unmarshal(b, &parts); err != nil {
			return err
		}
		n := 0
		for _, p := range parts {
			if p.Type == "text" || p.Type == "" {
				n += len(p.Text)
			}
		}
		buf := make([]byte, 0, n)
		for _, p := range parts {
			if p.Type == "text" || p.Type == "" {
				buf = append(buf, p.Text...)
			}
		}
		*c = msgContent(buf)
	case 'n':
		*c = ""
	default:
		return errBadContent
	}
	return nil
}

// wireToolCall is a complete tool call in a request or non-streaming reply.
type wireToolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function wireFunction `json:"function"`
}

type wireFunction struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// usage is the token accounting block.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// completion is a non-streaming chat completion ("chat.completion").
type completion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   usage              `json:"usage"`
}

type completionChoice struct {
	Index        int             `json:"index"`
	Message      responseMessage `json:"message"`
	Logprobs     *struct{}       `json:"logprobs"` // always null
	FinishReason string          `json:"finish_reason"`
}

type responseMessage struct {
	Role      string         `json:"role"`
	Content   *string        `json:"content"` // null when only tool calls
	Refusal   *string        `json:"refusal"` // always null
	ToolCalls []wireToolCall `json:"tool_calls,omitempty"`
}

// chunk is one streaming event ("chat.completion.chunk").
type chunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []chunkChoice `json:"choices"`
	Usage   *usage        `json:"usage,omitempty"`
}

type chunkChoice struct {
	Index        int       `json:"index"`
	Delta        delta     `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"`      // always null
	FinishReason *string   `json:"finish_reason"` // null until the last chunk
}

type delta struct {
	Role      string          `json:"role,omitempty"`
	Content   *string         `json:"content,omitempty"`
	ToolCalls []toolCallDelta `json:"tool_calls,omitempty"`
}

type toolCallDelta struct {
	Index    int           `json:"index"`
	ID       string        `json:"id,omitempty"`
	Type     string        `json:"type,omitempty"`
	Function functionDelta `json:"function"`
}

type functionDelta struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// errorBody is the OpenAI error envelope.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Message string `json:"message"`
	Type    string `json:"type"`
}

// modelList is the GET /v1/models answer.
type modelList struct {
	Object string      `json:"object"`
	Data   []modelInfo `json:"data"`
}

type modelInfo struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}
