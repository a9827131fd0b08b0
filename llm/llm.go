// Package llm declares the model client used by the conversation engine and
// the errors every provider maps its failures to. Providers live in the
// subpackages openai, anthropic and fake.
package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Role of a chat message.
type Role string

// Message roles.
const (
	RoleSystem    Role = "system"
	RoleUser      Role = "user"
	RoleAssistant Role = "assistant"
	RoleTool      Role = "tool"
)

// ToolCall is one function call requested by the model.
type ToolCall struct {
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
}

// Message is one chat message sent to or received from a model.
type Message struct {
	Role       Role       `json:"role"`
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"toolCalls,omitempty"`
	ToolCallID string     `json:"toolCallId,omitempty"`
}

// Tool describes a function the model may call. Parameters is a JSON Schema
// object.
type Tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
}

// Format asks the provider for a particular reply format.
type Format string

// Reply formats.
const (
	FormatText Format = ""
	FormatJSON Format = "json"
)

// Request is one chat call. System messages may appear anywhere at the head
// of Messages; providers that take the system prompt separately join them.
// A Client reads a request only during the call: it must not modify
// Messages, nor keep the slice after returning (copy what it keeps), since
// the caller reuses the slice's array for its next call.
type Request struct {
	Messages  []Message
	Tools     []Tool
	MaxTokens int
	// Format is a hint: providers that support a JSON mode may use it, the
	// fake model answers integration-shaped JSON. Callers still parse
	// tolerantly.
	Format Format
	// History, when set, is the wire encoding of
	// Messages[HistoryAt:HistoryAt+History.Messages] made by this client's
	// EncodeHistory (see HistoryEncoder): the client writes those bytes
	// instead of encoding the messages again. Clients that do not
	// implement HistoryEncoder, or get another provider's encoding,
	// ignore it and encode Messages.
	History   *Encoded
	HistoryAt int
}

// Usage counts tokens as reported by the provider (zero when unknown).
type Usage struct {
	InputTokens  int `json:"inputTokens"`
	OutputTokens int `json:"outputTokens"`
}

// Response is the complete answer of one call.
type Response struct {
	Content   string
	ToolCalls []ToolCall
	Usage     Usage
	// Raw is the provider's raw response body (non-streaming) or a
	// reconstruction of it (streaming), for debugging.
	Raw string
}

// Delta is one streamed piece of a response: a text chunk or a fragment of a
// tool call (identified by Index; ID and Name arrive on the first fragment).
type Delta struct {
	Text string

	ToolCallIndex int
	ToolCallID    string
	ToolCallName  string
	ArgsFragment  string
	IsToolCall    bool
}

// Client is a chat model.
type Client interface {
	// Complete performs one non-streaming call.
	Complete(ctx context.Context, req Request) (*Response, error)
	// Stream performs one streaming call, invoking onDelta for every delta in
	// order, and returns the assembled response. If onDelta returns an error
	// the call is abandoned and that error returned.
	Stream(ctx context.Context, req Request, onDelta func(Delta) error) (*Response, error)
	// Name identifies the provider and model for logs, e.g. "openai/gpt-4o".
	Name() string
}

// Sentinel errors providers wrap so callers can map them to API codes.
var (
	// ErrProvider means the provider failed or answered with an error.
	ErrProvider = errors.New("model provider error")
	// ErrTimeout means the call exceeded its deadline.
	ErrTimeout = errors.New("model call timed out")
)

// ProviderError describes a failed provider call. It wraps ErrProvider or
// ErrTimeout. Message never contains the API key.
type ProviderError struct {
	Provider string
	Status   int // HTTP status, 0 when none
	Message  string
	Timeout  bool
}

func (e *ProviderError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s: status %d: %s", e.Provider, e.Status, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Provider, e.Message)
}

// Unwrap lets errors.Is match ErrProvider or ErrTimeout.
func (e *ProviderError) Unwrap() error {
	if e.Timeout {
		return ErrTimeout
	}
	return ErrProvider
}
