package transport

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// APIError is the body of every error response.
type APIError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

func apiErr(status int, code, msg string) *APIError {
	return &APIError{Status: status, Code: code, Message: msg}
}

var (
	errUnauthorized = apiErr(http.StatusUnauthorized, "UNAUTHORIZED", "missing, unknown or revoked API key")
	errNotFound     = apiErr(http.StatusNotFound, "NOT_FOUND", "not found")
	errUnavailable  = apiErr(http.StatusServiceUnavailable, "UNAVAILABLE", "service unavailable: shutting down or database unreachable")
)

// classify maps any error to the API's status, code and a message safe to
// show. It is the one place where errors become codes.
func classify(err error) *APIError {
	var ae *APIError
	var fe *session.FieldError
	var pe *llm.ProviderError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &fe):
		return apiErr(http.StatusBadRequest, "BAD_REQUEST", fe.Error())
	case errors.Is(err, session.ErrInvalid):
		return apiErr(http.StatusBadRequest, "BAD_REQUEST", err.Error())
	case errors.Is(err, session.ErrNotFound):
		return apiErr(http.StatusNotFound, "NOT_FOUND", "no such space, or no such session in this space")
	case errors.Is(err, session.ErrForbidden):
		return apiErr(http.StatusForbidden, "FORBIDDEN", "this space belongs to another user")
	case errors.Is(err, session.ErrArchived):
		return apiErr(http.StatusConflict, "SESSION_ARCHIVED", "the session is archived")
	case errors.Is(err, session.ErrConflict):
		return apiErr(http.StatusConflict, "CONFLICT", err.Error())
	case errors.Is(err, session.ErrBusy):
		return apiErr(http.StatusTooManyRequests, "BUSY", "too many requests queued; retry shortly")
	case errors.Is(err, pgstore.ErrUnavailable):
		// Before the timeout case: a statement that exceeded the database
		// statement timeout carries context.DeadlineExceeded too.
		return errUnavailable
	case errors.Is(err, llm.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return apiErr(http.StatusGatewayTimeout, "TIMEOUT", "the turn exceeded its deadline; nothing was persisted")
	case errors.As(err, &pe):
		return apiErr(http.StatusBadGateway, "LLM_ERROR", "model provider failed: "+pe.Error())
	case errors.Is(err, llm.ErrProvider):
		return apiErr(http.StatusBadGateway, "LLM_ERROR", err.Error())
	case errors.Is(err, session.ErrToolLimit):
		return apiErr(http.StatusBadGateway, "LLM_ERROR", err.Error()+"; nothing was persisted")
	case errors.Is(err, space.ErrUnavailable), errors.Is(err, space.ErrNoEngine):
		return errUnavailable
	}
	return apiErr(http.StatusInternalServerError, "INTERNAL", "internal error")
}

// wsCode maps an error to a WebSocket error code.
func wsCode(err error) (string, string) {
	ae := classify(err)
	switch ae.Code {
	case "BAD_REQUEST", "NOT_FOUND", "SESSION_ARCHIVED", "SESSION_BUSY", "CANCELLED", "CONFLICT", "BUSY", "LLM_ERROR", "TIMEOUT":
		return ae.Code, ae.Message
	}
	return "HANDLER_ERROR", ae.Message
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := classify(err)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away; nobody reads the answer
	}
	if ae.Status >= 500 {
		s.log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	if ae.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, ae.Status, ae)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
