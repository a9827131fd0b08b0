package session

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/stellohq/stello/llm"
)

// ToolEnv is what a tool can reach during a turn.
type ToolEnv struct {
	SpaceID   string
	SessionID string
	// Fork creates a child of the current session through the same path as
	// the API's fork.
	Fork func(ctx context.Context, o ForkOptions) (Meta, error)
}

// Tool is a function the model may call. Go code embedding Stello can add
// tools to a Registry.
type Tool interface {
	Definition() llm.Tool
	// Call runs the tool. Its result (or error message) goes back to the
	// model as the tool message; an error does not fail the turn.
	Call(ctx context.Context, env ToolEnv, input json.RawMessage) (string, error)
}

// Registry holds the tools offered to the model. It is safe for concurrent
// use.
type Registry struct {
	mu    sync.RWMutex
	tools map[string]Tool
}

// NewRegistry returns a registry holding tools.
func NewRegistry(tools ...Tool) *Registry {
	r := &Registry{tools: map[string]Tool{}}
	for _, t := range tools {
		r.Register(t)
	}
	return r
}

// DefaultRegistry holds the built-in tools.
func DefaultRegistry() *Registry { return NewRegistry(CreateSessionTool{}) }

// Register adds or replaces a tool.
func (r *Registry) Register(t Tool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tools[t.Definition().Name] = t
}

// Definitions lists the tools, sorted by name.
func (r *Registry) Definitions() []llm.Tool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]llm.Tool, 0, len(r.tools))
	for _, t := range r.tools {
		out = append(out, t.Definition())
	}
	slices.SortFunc(out, func(a, b llm.Tool) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Call runs the named tool, turning every failure into a message for the
// model.
func (r *Registry) Call(ctx context.Context, env ToolEnv, name string, input json.RawMessage) (string, bool) {
	r.mu.RLock()
	t, ok := r.tools[name]
	r.mu.RUnlock()
	if !ok {
		return toolError(fmt.Errorf("unknown tool %q", name)), false
	}
	out, err := t.Call(ctx, env, input)
	if err != nil {
		return toolError(err), false
	}
	return out, true
}

func toolError(err error) string {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	return string(b)
}

// CreateSessionToolName is the built-in fork tool's name.
const CreateSessionToolName = "stello_create_session"

// CreateSessionTool lets the model fork a child of the current session.
type CreateSessionTool struct{}

// Definition implements Tool.
func (CreateSessionTool) Definition() llm.Tool { return createSessionDefinition }

// createSessionDefinition is made once: a turn asks for it every time.
var createSessionDefinition = llm.Tool{
	Name: CreateSessionToolName,
	Description: "Create a new child session (a sub-topic) under the current session. " +
		"Use it when the user wants to explore a distinct sub-topic in its own thread.",
	Parameters: json.RawMessage(`{"type":"object","properties":{` +
		`"label":{"type":"string","description":"Short title of the new session"},` +
		`"systemPrompt":{"type":"string","description":"System prompt of the new session; defaults to the current one"},` +
		`"prompt":{"type":"string","description":"Opening assistant message of the new session"},` +
		`"context":{"type":"string","enum":["none","inherit"],"description":"inherit copies this session's history"}` +
		`},"required":["label"]}`),
}

// Call implements Tool.
func (CreateSessionTool) Call(ctx context.Context, env ToolEnv, input json.RawMessage) (string, error) {
	var o ForkOptions
	if len(input) == 0 {
		input = json.RawMessage("{}")
	}
	if err := json.Unmarshal(input, &o); err != nil {
		return "", fmt.Errorf("invalid arguments: %w", err)
	}
	o.Scope = nil
	if env.Fork == nil {
		return "", fmt.Errorf("forking is not available here")
	}
	m, err := env.Fork(ctx, o)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(map[string]any{"sessionId": m.ID, "label": m.Label, "parentId": env.SessionID})
	return string(b), nil
}
