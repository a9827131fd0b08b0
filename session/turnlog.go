package session

import (
	"errors"
	"time"
)

// Turn states.
const (
	TurnQueued    = "queued"
	TurnRunning   = "running"
	TurnCompleted = "completed"
	TurnFailed    = "failed"
	TurnCancelled = "cancelled"
)

// Turn errors.
var (
	// ErrSessionBusy refuses a turn with ifBusy=reject on a busy session.
	ErrSessionBusy = errors.New("the session has a turn running or queued")
	// ErrCancelled means the turn was cancelled; nothing of it was stored.
	ErrCancelled = errors.New("the turn was cancelled")
)

// TurnLog is one turn as the turn log knows it.
type TurnLog struct {
	ID             string
	SpaceID        string
	SessionID      string
	State          string
	Input          string
	IdempotencyKey string
	CreatedAt      time.Time
	FinishedAt     *time.Time
	// Set when completed.
	FinalContent      *string
	ToolRoundCount    int
	ToolCallsExecuted int
	RawResponse       string
	// Set when failed or cancelled.
	ErrorCode    string
	ErrorMessage string
}

// Result is the completed turn's result.
func (l TurnLog) Result() TurnResult {
	return TurnResult{FinalContent: l.FinalContent, ToolRoundCount: l.ToolRoundCount,
		ToolCallsExecuted: l.ToolCallsExecuted, RawResponse: l.RawResponse}
}

// completed returns the log row of a turn that commits with res at at.
func (l *TurnLog) completed(res TurnResult, at time.Time) *TurnLog {
	if l == nil {
		return nil
	}
	c := *l
	c.State = TurnCompleted
	c.FinishedAt = &at
	c.FinalContent = res.FinalContent
	c.ToolRoundCount = res.ToolRoundCount
	c.ToolCallsExecuted = res.ToolCallsExecuted
	c.RawResponse = res.RawResponse
	return &c
}
