package client

import (
	"fmt"
	"time"
)

// Error is an error answered by the server: the HTTP status (0 for
// WebSocket and stream errors), the API's code and its message.
//
// Compare codes with errors.Is and the sentinels below:
//
//	if errors.Is(err, client.ErrNotFound) { … }
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"error"`
	// TurnID is the turn the error belongs to, when the server said so.
	TurnID string `json:"turnId,omitempty"`
	// RetryAfter is the server's Retry-After on a 429 BUSY.
	RetryAfter time.Duration `json:"-"`
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "stello: " + e.Code
	}
	if e.Status != 0 {
		return fmt.Sprintf("stello: %d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("stello: %s: %s", e.Code, e.Message)
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, client.ErrBusy) works on any error with that code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

func sentinel(code string) *Error { return &Error{Code: code} }

// Sentinels for errors.Is, one per code of the API.
var (
	ErrBadRequest       = sentinel("BAD_REQUEST")
	ErrUnauthorized     = sentinel("UNAUTHORIZED")
	ErrForbidden        = sentinel("FORBIDDEN")
	ErrNotFound         = sentinel("NOT_FOUND")
	ErrMethodNotAllowed = sentinel("METHOD_NOT_ALLOWED")
	ErrSessionArchived  = sentinel("SESSION_ARCHIVED")
	ErrSessionBusy      = sentinel("SESSION_BUSY")
	ErrCancelled        = sentinel("CANCELLED")
	ErrConflict         = sentinel("CONFLICT")
	ErrPayloadTooLarge  = sentinel("PAYLOAD_TOO_LARGE")
	ErrBusy             = sentinel("BUSY")
	ErrLLM              = sentinel("LLM_ERROR")
	ErrUnavailable      = sentinel("UNAVAILABLE")
	ErrTimeout          = sentinel("TIMEOUT")
	ErrInternal         = sentinel("INTERNAL")

	// WebSocket-only codes.
	ErrParse          = sentinel("PARSE_ERROR")
	ErrUnknownType    = sentinel("UNKNOWN_TYPE")
	ErrAlreadyEntered = sentinel("ALREADY_ENTERED")
	ErrNotEntered     = sentinel("NOT_ENTERED")
	ErrHandler        = sentinel("HANDLER_ERROR")
)
