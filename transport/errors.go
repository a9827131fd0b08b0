package transport

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/apierr"
)

// APIError is the body of every error response.
type APIError = apierr.Error

func apiErr(status int, code, msg string) *APIError { return apierr.New(status, code, msg) }

// classify maps any error to the API's status, code and a safe message.
func classify(err error) *APIError { return apierr.Classify(err) }

var (
	errUnauthorized = apiErr(http.StatusUnauthorized, "UNAUTHORIZED", "missing, unknown or revoked API key")
	errNotFound     = apiErr(http.StatusNotFound, "NOT_FOUND", "not found")
)

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
