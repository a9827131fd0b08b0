// Package apierr is the one place where errors become the API's status
// codes, error codes and messages safe to show.
package apierr

import (
	"context"
	"errors"
	"net/http"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
)

// Error is the body of every error response.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// New returns an Error.
func New(status int, code, msg string) *Error {
	return &Error{Status: status, Code: code, Message: msg}
}

// ErrUnavailable means the server is shutting down, a space stopped under
// its callers, or the database is unreachable: 503 UNAVAILABLE.
var ErrUnavailable = errors.New("unavailable")

// ErrOwnerUnreachable means the process that owns a space could not be
// reached, or no longer owns it: 503 UNAVAILABLE, retryable (the space
// moves within the owner's lease TTL).
var ErrOwnerUnreachable = errors.New("the process that owns the space cannot be reached")

// ErrSpaceSetup means an embedding program's build hook failed for a
// space: 503 UNAVAILABLE, retried by the next request.
var ErrSpaceSetup = errors.New("space setup failed")

func unavailable() *Error {
	return New(http.StatusServiceUnavailable, "UNAVAILABLE", "service unavailable: shutting down or database unreachable")
}

// Classify maps any error to the API's status, code and a message safe to
// show. It is the one place where errors become codes.
func Classify(err error) *Error {
	var ae *Error
	var fe *session.FieldError
	var pe *llm.ProviderError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &fe):
		return New(http.StatusBadRequest, "BAD_REQUEST", fe.Error())
	case errors.Is(err, session.ErrInvalid):
		return New(http.StatusBadRequest, "BAD_REQUEST", err.Error())
	case errors.Is(err, session.ErrNotFound):
		return New(http.StatusNotFound, "NOT_FOUND", "no such space, or no such session in this space")
	case errors.Is(err, session.ErrForbidden):
		return New(http.StatusForbidden, "FORBIDDEN", "this space belongs to another user")
	case errors.Is(err, session.ErrArchived):
		return New(http.StatusConflict, "SESSION_ARCHIVED", "the session is archived")
	case errors.Is(err, session.ErrSessionBusy):
		return New(http.StatusConflict, "SESSION_BUSY", "the session has a turn running or queued (ifBusy=reject)")
	case errors.Is(err, session.ErrCancelled):
		return New(http.StatusConflict, "CANCELLED", err.Error()+"; nothing of it was persisted")
	case errors.Is(err, session.ErrConflict):
		return New(http.StatusConflict, "CONFLICT", err.Error())
	case errors.Is(err, session.ErrBusy):
		return New(http.StatusTooManyRequests, "BUSY", "too many requests queued; retry shortly")
	case errors.Is(err, pgstore.ErrUnavailable):
		// Before the timeout case: a statement that exceeded the database
		// statement timeout carries context.DeadlineExceeded too.
		return unavailable()
	case errors.Is(err, llm.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return New(http.StatusGatewayTimeout, "TIMEOUT", "the turn exceeded its deadline; nothing was persisted")
	case errors.As(err, &pe):
		return New(http.StatusBadGateway, "LLM_ERROR", "model provider failed: "+pe.Error())
	case errors.Is(err, llm.ErrProvider):
		return New(http.StatusBadGateway, "LLM_ERROR", err.Error())
	case errors.Is(err, session.ErrToolLimit):
		return New(http.StatusBadGateway, "LLM_ERROR", err.Error()+"; nothing was persisted")
	case errors.Is(err, ErrOwnerUnreachable):
		return New(http.StatusServiceUnavailable, "UNAVAILABLE",
			"the process that owns this space cannot be reached; the space moves to another process within its lease TTL: retry")
	case errors.Is(err, session.ErrLeaseLost):
		return New(http.StatusServiceUnavailable, "UNAVAILABLE", "the space moved to another process; retry")
	case errors.Is(err, ErrSpaceSetup):
		return New(http.StatusServiceUnavailable, "UNAVAILABLE", "the space could not be set up by the server; retry later")
	case errors.Is(err, ErrUnavailable):
		return unavailable()
	}
	return New(http.StatusInternalServerError, "INTERNAL", "internal error")
}
