// Package session holds the conversation domain: sessions, records, spaces'
// prompts, and the engine that runs turns, forks, consolidation and
// integration over a Store and an llm.Client.
package session

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/stellohq/stello/llm"
)

// Session roles and statuses.
const (
	RoleMain     = "main"
	RoleStandard = "standard"

	StatusActive   = "active"
	StatusArchived = "archived"
)

// Domain errors. transport maps them to API codes.
var (
	ErrNotFound  = errors.New("not found")
	ErrForbidden = errors.New("forbidden")
	ErrArchived  = errors.New("session is archived")
	ErrConflict  = errors.New("conflict")
	ErrBusy      = errors.New("busy")
	ErrInvalid   = errors.New("invalid request")
	ErrToolLimit = errors.New("tool round limit exceeded")
)

// Space is one tenant unit: an agent with one session tree.
type Space struct {
	ID                string
	UserID            string
	Label             string
	SystemPrompt      *string
	ConsolidatePrompt *string
	IntegratePrompt   *string
	Config            json.RawMessage
	CreatedAt         time.Time
	UpdatedAt         time.Time
}

// Meta is a session's metadata.
type Meta struct {
	ID              string
	SpaceID         string
	ParentID        *string
	SourceSessionID *string
	Label           string
	Role            string
	Status          string
	Scope           *string
	Depth           int
	Index           int
	TurnCount       int
	CreatedAt       time.Time
	UpdatedAt       time.Time
	LastActiveAt    time.Time
}

// Data holds a session's data slots.
type Data struct {
	SystemPrompt      *string
	Memory            *string
	Insight           *string
	ConsolidatePrompt *string
	IntegratePrompt   *string
	// MemoryVersion increases with every memory write.
	MemoryVersion int64
}

// Slot names a per-session data slot.
type Slot string

// Data slots.
const (
	SlotSystemPrompt      Slot = "system_prompt"
	SlotMemory            Slot = "memory"
	SlotInsight           Slot = "insight"
	SlotConsolidatePrompt Slot = "consolidate_prompt"
	SlotIntegratePrompt   Slot = "integrate_prompt"
)

// Get returns the slot's value.
func (d *Data) Get(s Slot) *string {
	switch s {
	case SlotSystemPrompt:
		return d.SystemPrompt
	case SlotMemory:
		return d.Memory
	case SlotInsight:
		return d.Insight
	case SlotConsolidatePrompt:
		return d.ConsolidatePrompt
	case SlotIntegratePrompt:
		return d.IntegratePrompt
	}
	return nil
}

// Set sets the slot's value.
func (d *Data) Set(s Slot, v *string) {
	switch s {
	case SlotSystemPrompt:
		d.SystemPrompt = v
	case SlotMemory:
		d.Memory = v
	case SlotInsight:
		d.Insight = v
	case SlotConsolidatePrompt:
		d.ConsolidatePrompt = v
	case SlotIntegratePrompt:
		d.IntegratePrompt = v
	}
}

// Record is one persisted message of a session.
type Record struct {
	ID         int64
	Role       llm.Role
	Content    string
	ToolCalls  []llm.ToolCall
	ToolCallID string
	CreatedAt  time.Time
}

// Message converts the record to a model message.
func (r Record) Message() llm.Message {
	return llm.Message{Role: r.Role, Content: r.Content, ToolCalls: r.ToolCalls, ToolCallID: r.ToolCallID}
}

// ForkOptions are the options of a fork, from the API or the model's tool.
type ForkOptions struct {
	Label        string  `json:"label"`
	Scope        *string `json:"scope,omitempty"`
	SystemPrompt *string `json:"systemPrompt,omitempty"`
	Context      string  `json:"context,omitempty"` // "none" (default) or "inherit"
	Prompt       *string `json:"prompt,omitempty"`
}

// MaxLabelLen is the longest accepted label, in characters.
const MaxLabelLen = 200

// Validate checks the options and fills defaults.
func (o *ForkOptions) Validate() error {
	if err := ValidateLabel(o.Label); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"scope", o.Scope}, {"systemPrompt", o.SystemPrompt}, {"prompt", o.Prompt}} {
		if err := validOptText(f.name, f.v); err != nil {
			return err
		}
	}
	switch o.Context {
	case "":
		o.Context = "none"
	case "none", "inherit":
	default:
		return &FieldError{Field: "context", Msg: `must be "none" or "inherit"`}
	}
	return nil
}

// ValidateLabel checks a space or session label.
func ValidateLabel(label string) error {
	if label == "" {
		return &FieldError{Field: "label", Msg: "is required and must be non-empty"}
	}
	if len([]rune(label)) > MaxLabelLen {
		return &FieldError{Field: "label", Msg: "must be at most 200 characters"}
	}
	return ValidText("label", label)
}

// FieldError is a validation error naming the offending field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + " " + e.Msg }

// Unwrap makes a FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// SpaceInput is the content of a new space.
type SpaceInput struct {
	Label             string
	SystemPrompt      *string
	ConsolidatePrompt *string
	IntegratePrompt   *string
	Config            json.RawMessage
}

// SpacePatch changes some fields of a space; nil fields are left alone.
// A Set* flag with a nil value clears the field.
type SpacePatch struct {
	Label                *string
	SystemPrompt         *string
	SetSystemPrompt      bool
	ConsolidatePrompt    *string
	SetConsolidatePrompt bool
	IntegratePrompt      *string
	SetIntegratePrompt   bool
	Config               json.RawMessage
}

// TurnCommit is everything one turn writes.
type TurnCommit struct {
	SpaceID   string
	SessionID string
	Records   []Record
	// ConsumedInsight is the insight the turn showed the model; it is
	// cleared unless integration replaced it meanwhile.
	ConsumedInsight *string
	At              time.Time
	// Log is the turn's row in the turn log (nil: none).
	Log *TurnLog
}

// State is one session: its metadata and data slots.
type State struct {
	Meta Meta
	Data Data
}

// MemoryState is what memory work reads of a session.
type MemoryState struct {
	Memory              *string
	Version             int64
	ConsolidatedThrough int64
	Summary             *string
	SummaryThrough      int64
}

// Insight is advice integration pushes into one session.
type Insight struct {
	SessionID string `json:"sessionId"`
	Content   string `json:"content"`
}

// ChildMemory is one non-root session's memory, as integration reads it.
type ChildMemory struct {
	ID     string
	Label  string
	Memory *string
}
