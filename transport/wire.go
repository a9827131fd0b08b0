// Package transport is Stello's wire: the chi router, authentication, the
// REST handlers, Server-Sent Events and the WebSocket gateway. It translates
// JSON to calls on the space manager and owns no domain state.
package transport

import (
	"encoding/json"
	"time"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// TimeFormat is RFC 3339 in UTC with milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z"

func ts(t time.Time) string { return t.UTC().Format(TimeFormat) }

// Space is the wire form of a space.
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

func toSpace(s session.Space) Space {
	cfg := s.Config
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	}
	return Space{ID: s.ID, UserID: s.UserID, Label: s.Label, SystemPrompt: s.SystemPrompt,
		ConsolidatePrompt: s.ConsolidatePrompt, IntegratePrompt: s.IntegratePrompt, Config: cfg,
		CreatedAt: ts(s.CreatedAt), UpdatedAt: ts(s.UpdatedAt)}
}

// SessionMeta is the wire form of a session's metadata.
type SessionMeta struct {
	ID              string   `json:"id"`
	ParentID        *string  `json:"parentId"`
	SourceSessionID *string  `json:"sourceSessionId"`
	Label           string   `json:"label"`
	Role            string   `json:"role"`
	Status          string   `json:"status"`
	Scope           *string  `json:"scope"`
	Depth           int      `json:"depth"`
	Index           int      `json:"index"`
	TurnCount       int      `json:"turnCount"`
	Children        []string `json:"children"`
	CreatedAt       string   `json:"createdAt"`
	UpdatedAt       string   `json:"updatedAt"`
	LastActiveAt    string   `json:"lastActiveAt"`
}

func toMeta(v space.SessionView) SessionMeta {
	m := v.Meta
	ch := v.Children
	if ch == nil {
		ch = []string{}
	}
	return SessionMeta{ID: m.ID, ParentID: m.ParentID, SourceSessionID: m.SourceSessionID, Label: m.Label,
		Role: m.Role, Status: m.Status, Scope: m.Scope, Depth: m.Depth, Index: m.Index, TurnCount: m.TurnCount,
		Children: ch, CreatedAt: ts(m.CreatedAt), UpdatedAt: ts(m.UpdatedAt), LastActiveAt: ts(m.LastActiveAt)}
}

// TreeNode is the wire form of the session tree.
type TreeNode struct {
	ID              string      `json:"id"`
	Label           string      `json:"label"`
	Role            string      `json:"role"`
	Status          string      `json:"status"`
	TurnCount       int         `json:"turnCount"`
	SourceSessionID *string     `json:"sourceSessionId"`
	Children        []*TreeNode `json:"children"`
}

func toTree(n *space.TreeNode) *TreeNode {
	out := &TreeNode{ID: n.Meta.ID, Label: n.Meta.Label, Role: n.Meta.Role, Status: n.Meta.Status,
		TurnCount: n.Meta.TurnCount, SourceSessionID: n.Meta.SourceSessionID, Children: make([]*TreeNode, 0, len(n.Children))}
	for _, c := range n.Children {
		out.Children = append(out.Children, toTree(c))
	}
	return out
}

// ToolCall is the wire form of a tool call.
type ToolCall struct {
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
}

// Message is the wire form of a record.
type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"toolCalls,omitempty"`
	ToolCallID string     `json:"toolCallId,omitempty"`
	Timestamp  string     `json:"timestamp"`
}

func toMessage(r session.Record) Message {
	m := Message{Role: string(r.Role), Content: r.Content, ToolCallID: r.ToolCallID, Timestamp: ts(r.CreatedAt)}
	for _, c := range r.ToolCalls {
		in := c.Input
		if len(in) == 0 {
			in = json.RawMessage("{}")
		}
		m.ToolCalls = append(m.ToolCalls, ToolCall{ID: c.ID, Name: c.Name, Input: in})
	}
	if r.Role != llm.RoleTool {
		m.ToolCallID = ""
	}
	return m
}

// TurnResult is the wire form of EngineTurnResult.
type TurnResult struct {
	TurnID string `json:"turnId,omitempty"`
	Turn   Turn   `json:"turn"`
}

// Turn is the inner object of EngineTurnResult.
type Turn struct {
	FinalContent      *string `json:"finalContent"`
	ToolRoundCount    int     `json:"toolRoundCount"`
	ToolCallsExecuted int     `json:"toolCallsExecuted"`
	RawResponse       string  `json:"rawResponse"`
}

func toTurn(r session.TurnResult) TurnResult {
	return TurnResult{TurnID: r.TurnID, Turn: Turn{FinalContent: r.FinalContent, ToolRoundCount: r.ToolRoundCount,
		ToolCallsExecuted: r.ToolCallsExecuted, RawResponse: r.RawResponse}}
}

// Content is the `{content}` body of data-slot endpoints.
type Content struct {
	Content *string `json:"content"`
}

// Integration is the body of POST /spaces/:id/integrate.
type Integration struct {
	Synthesis string            `json:"synthesis"`
	Insights  []session.Insight `json:"insights"`
}

// Bootstrap is the payload of session.entered.
type Bootstrap struct {
	Context BootstrapContext `json:"context"`
	Session SessionMeta      `json:"session"`
}

// BootstrapContext is the context part of a bootstrap.
type BootstrapContext struct {
	Core          *string   `json:"core"`
	Memories      []*string `json:"memories"`
	CurrentMemory *string   `json:"currentMemory"`
	Scope         *string   `json:"scope"`
}

func toBootstrap(b space.Bootstrap) Bootstrap {
	return Bootstrap{Context: BootstrapContext{Core: b.Core, Memories: b.Memories, CurrentMemory: b.CurrentMemory, Scope: b.Scope},
		Session: toMeta(b.Session)}
}

// TurnObject is a turn as GET …/turns/:turnId shows it.
type TurnObject struct {
	TurnID     string      `json:"turnId"`
	SessionID  string      `json:"sessionId"`
	State      string      `json:"state"`
	Input      string      `json:"input"`
	CreatedAt  string      `json:"createdAt"`
	FinishedAt *string     `json:"finishedAt"`
	Result     *TurnResult `json:"result"`
	Error      *APIError   `json:"error"`
}

func toTurnObject(l session.TurnLog) TurnObject {
	o := TurnObject{TurnID: l.ID, SessionID: l.SessionID, State: l.State, Input: l.Input, CreatedAt: ts(l.CreatedAt)}
	if l.FinishedAt != nil {
		f := ts(*l.FinishedAt)
		o.FinishedAt = &f
	}
	switch l.State {
	case session.TurnCompleted:
		res := l.Result()
		res.TurnID = l.ID
		r := toTurn(res)
		o.Result = &r
	case session.TurnFailed, session.TurnCancelled:
		o.Error = &APIError{Code: l.ErrorCode, Message: l.ErrorMessage}
	}
	return o
}
