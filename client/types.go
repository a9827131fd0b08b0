package client

import "encoding/json"

// Space is one tenant unit: one agent, one session tree.
type Space struct {
	ID                string          `json:"id"`
	UserID            string          `json:"userId"`
	Label             string          `json:"label"`
	SystemPrompt      *string         `json:"systemPrompt"`
	ConsolidatePrompt *string         `json:"consolidatePrompt"`
	IntegratePrompt   *string         `json:"integratePrompt"`
	Config            json.RawMessage `json:"config"`
	CreatedAt         string          `json:"createdAt"`
	UpdatedAt         string          `json:"updatedAt"`
}

// SpaceInput creates a space. Label is required.
type SpaceInput struct {
	Label             string          `json:"label"`
	SystemPrompt      *string         `json:"systemPrompt,omitempty"`
	ConsolidatePrompt *string         `json:"consolidatePrompt,omitempty"`
	IntegratePrompt   *string         `json:"integratePrompt,omitempty"`
	Config            json.RawMessage `json:"config,omitempty"`
}

// SpacePatch updates a space: only the fields set are sent. A Clear…
// field set to true sends null for that prompt (clears it).
type SpacePatch struct {
	Label                  *string
	SystemPrompt           *string
	ConsolidatePrompt      *string
	IntegratePrompt        *string
	Config                 json.RawMessage
	ClearSystemPrompt      bool
	ClearConsolidatePrompt bool
	ClearIntegratePrompt   bool
}

func (p SpacePatch) body() map[string]any {
	m := map[string]any{}
	if p.Label != nil {
		m["label"] = *p.Label
	}
	prompt := func(name string, v *string, clear bool) {
		if clear {
			m[name] = nil
		} else if v != nil {
			m[name] = *v
		}
	}
	prompt("systemPrompt", p.SystemPrompt, p.ClearSystemPrompt)
	prompt("consolidatePrompt", p.ConsolidatePrompt, p.ClearConsolidatePrompt)
	prompt("integratePrompt", p.IntegratePrompt, p.ClearIntegratePrompt)
	if p.Config != nil {
		m["config"] = p.Config
	}
	return m
}

// SessionMeta is a session's metadata.
type SessionMeta struct {
	ID              string   `json:"id"`
	ParentID        *string  `json:"parentId"`
	SourceSessionID *string  `json:"sourceSessionId"`
	Label           string   `json:"label"`
	Role            string   `json:"role"`   // "main" or "standard"
	Status          string   `json:"status"` // "active" or "archived"
	Scope           *string  `json:"scope"`
	Depth           int      `json:"depth"`
	Index           int      `json:"index"`
	TurnCount       int      `json:"turnCount"`
	Children        []string `json:"children"`
	CreatedAt       string   `json:"createdAt"`
	UpdatedAt       string   `json:"updatedAt"`
	LastActiveAt    string   `json:"lastActiveAt"`
}

// TreeNode is a node of the session tree; children are ordered by index.
type TreeNode struct {
	ID              string      `json:"id"`
	Label           string      `json:"label"`
	Role            string      `json:"role"`
	Status          string      `json:"status"`
	TurnCount       int         `json:"turnCount"`
	SourceSessionID *string     `json:"sourceSessionId"`
	Children        []*TreeNode `json:"children"`
}

// ToolCall is a tool call of an assistant message.
type ToolCall struct {
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
}

// Message is one record of a session.
type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"toolCalls,omitempty"`
	ToolCallID string     `json:"toolCallId,omitempty"`
	Timestamp  string     `json:"timestamp"`
}

// TurnResult is the result of a turn (the API's EngineTurnResult).
type TurnResult struct {
	// TurnID identifies the turn (for GetTurn, CancelTurn, ResumeStream).
	TurnID string     `json:"turnId"`
	Turn   TurnDetail `json:"turn"`
}

// Text returns the turn's final content, or "" when it has none.
func (r *TurnResult) Text() string {
	if r == nil || r.Turn.FinalContent == nil {
		return ""
	}
	return *r.Turn.FinalContent
}

// TurnDetail is the inner object of a TurnResult.
type TurnDetail struct {
	FinalContent      *string `json:"finalContent"`
	ToolRoundCount    int     `json:"toolRoundCount"`
	ToolCallsExecuted int     `json:"toolCallsExecuted"`
	RawResponse       string  `json:"rawResponse"`
}

// Turn states.
const (
	TurnQueued    = "queued"
	TurnRunning   = "running"
	TurnCompleted = "completed"
	TurnFailed    = "failed"
	TurnCancelled = "cancelled"
)

// Turn is a turn as an object: GET …/turns/:turnId.
type Turn struct {
	TurnID     string      `json:"turnId"`
	SessionID  string      `json:"sessionId"`
	State      string      `json:"state"`
	Input      string      `json:"input"`
	CreatedAt  string      `json:"createdAt"`
	FinishedAt *string     `json:"finishedAt"`
	Result     *TurnResult `json:"result"`
	Error      *Error      `json:"error"`
}

// ForkOptions fork a session. Label is required; Context is "none"
// (default) or "inherit".
type ForkOptions struct {
	Label        string  `json:"label"`
	Scope        *string `json:"scope,omitempty"`
	SystemPrompt *string `json:"systemPrompt,omitempty"`
	Context      string  `json:"context,omitempty"`
	Prompt       *string `json:"prompt,omitempty"`
}

// Insight is the advice integration pushed into one child session.
type Insight struct {
	SessionID string `json:"sessionId"`
	Content   string `json:"content"`
}

// Integration is the result of integrating a space.
type Integration struct {
	Synthesis string    `json:"synthesis"`
	Insights  []Insight `json:"insights"`
}

// Slot names a session's data slot.
type Slot string

// The data slots of a session. Memory and Insight are read-only.
const (
	SlotSystemPrompt      Slot = "system-prompt"
	SlotMemory            Slot = "memory"
	SlotInsight           Slot = "insight"
	SlotConsolidatePrompt Slot = "consolidate-prompt"
	SlotIntegratePrompt   Slot = "integrate-prompt"
)

type content struct {
	Content *string `json:"content"`
}

// Bootstrap is what session.enter answers: the session and its context.
type Bootstrap struct {
	Context BootstrapContext `json:"context"`
	Session SessionMeta      `json:"session"`
}

// BootstrapContext is the context part of a Bootstrap.
type BootstrapContext struct {
	Core          *string   `json:"core"`
	Memories      []*string `json:"memories"`
	CurrentMemory *string   `json:"currentMemory"`
	Scope         *string   `json:"scope"`
}

// String returns a pointer to s, for the optional fields of inputs.
func String(s string) *string { return &s }
