package transport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/stellohq/stello/session"
)

// decode reads a JSON object body into v, enforcing the body limit.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return s.decodeFields(w, r, v, jsonFields(v))
}

// decodeFields is decode for a body whose known fields are given (nil:
// every field is checked), for bodies decoded into a map.
func (s *Server) decodeFields(w http.ResponseWriter, r *http.Request, v any, known map[string]bool) error {
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	b, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE",
				fmt.Sprintf("request body is over the limit of %d bytes", s.opts.MaxBodyBytes))
		}
		return apiErr(http.StatusBadRequest, "BAD_REQUEST", "could not read the request body")
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		b = []byte("{}")
	}
	if b[0] != '{' && strings.TrimSpace(string(b))[0] != '{' {
		return apiErr(http.StatusBadRequest, "BAD_REQUEST", "malformed JSON: the body must be a JSON object")
	}
	return decodeJSONFields(b, v, known)
}

// decodeJSON decodes a JSON object, naming in API terms the field that is
// wrong, and refuses text that would not be kept exactly as sent.
func decodeJSON(b []byte, v any) error { return decodeJSONFields(b, v, jsonFields(v)) }

func decodeJSONFields(b []byte, v any, known map[string]bool) error {
	if !json.Valid(b) {
		var probe any
		err := json.Unmarshal(b, &probe)
		return apiErr(http.StatusBadRequest, "BAD_REQUEST", fmt.Sprintf("malformed JSON: %v", err))
	}
	if err := checkJSONText(b, known); err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return badField(te.Field, "must be a "+jsonKind(te.Type.Kind().String()))
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return apiErr(http.StatusBadRequest, "BAD_REQUEST", fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se))
		}
		return apiErr(http.StatusBadRequest, "BAD_REQUEST", "malformed JSON: the body must be a JSON object")
	}
	return nil
}

func jsonKind(k string) string {
	switch k {
	case "string", "ptr":
		return "string"
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "number"
	case "bool":
		return "boolean"
	case "map", "struct":
		return "JSON object"
	case "slice":
		return "JSON array"
	}
	return k
}

func badField(field, msg string) error { return &session.FieldError{Field: field, Msg: msg} }

func spaceID(r *http.Request) string   { return chi.URLParam(r, "spaceId") }
func sessionID(r *http.Request) string { return chi.URLParam(r, "id") }

type spaceBody struct {
	Label             *string         `json:"label"`
	SystemPrompt      *string         `json:"systemPrompt"`
	ConsolidatePrompt *string         `json:"consolidatePrompt"`
	IntegratePrompt   *string         `json:"integratePrompt"`
	Config            json.RawMessage `json:"config"`
}

func validConfig(c json.RawMessage) error {
	if len(c) == 0 || string(c) == "null" {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(c, &m); err != nil {
		return badField("config", "must be a JSON object")
	}
	return nil
}

func (s *Server) createSpace(w http.ResponseWriter, r *http.Request) {
	var b spaceBody
	if err := s.decode(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	if b.Label == nil {
		s.writeError(w, r, badField("label", "is required and must be non-empty"))
		return
	}
	if err := validConfig(b.Config); err != nil {
		s.writeError(w, r, err)
		return
	}
	cfg := b.Config
	if string(cfg) == "null" {
		cfg = nil
	}
	sp, err := s.spaces.CreateSpace(r.Context(), userID(r), session.SpaceInput{Label: *b.Label, SystemPrompt: b.SystemPrompt,
		ConsolidatePrompt: b.ConsolidatePrompt, IntegratePrompt: b.IntegratePrompt, Config: cfg})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toSpace(sp))
}

func (s *Server) listSpaces(w http.ResponseWriter, r *http.Request) {
	sps, err := s.spaces.ListSpaces(r.Context(), userID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]Space, len(sps))
	for i, sp := range sps {
		out[i] = toSpace(sp)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getSpace(w http.ResponseWriter, r *http.Request) {
	sp, err := s.spaces.GetSpace(r.Context(), userID(r), spaceID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSpace(sp))
}

// optString decodes a nullable string field of a PATCH body.
func optString(raw map[string]json.RawMessage, field string) (set bool, v *string, err error) {
	b, ok := raw[field]
	if !ok {
		return false, nil, nil
	}
	if string(b) == "null" {
		return true, nil, nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return false, nil, badField(field, "must be a string or null")
	}
	return true, &str, nil
}

func (s *Server) patchSpace(w http.ResponseWriter, r *http.Request) {
	var raw map[string]json.RawMessage
	if err := s.decodeFields(w, r, &raw, jsonFields(&spaceBody{})); err != nil {
		s.writeError(w, r, err)
		return
	}
	var p session.SpacePatch
	var err error
	var set bool
	if set, p.Label, err = optString(raw, "label"); err == nil && set && p.Label == nil {
		err = badField("label", "is required and must be non-empty")
	}
	if err == nil {
		p.SetSystemPrompt, p.SystemPrompt, err = optString(raw, "systemPrompt")
	}
	if err == nil {
		p.SetConsolidatePrompt, p.ConsolidatePrompt, err = optString(raw, "consolidatePrompt")
	}
	if err == nil {
		p.SetIntegratePrompt, p.IntegratePrompt, err = optString(raw, "integratePrompt")
	}
	if c, ok := raw["config"]; ok && err == nil {
		if string(c) == "null" {
			c = json.RawMessage("{}")
		}
		if err = validConfig(c); err == nil {
			p.Config = c
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sp, err := s.spaces.UpdateSpace(r.Context(), userID(r), spaceID(r), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSpace(sp))
}

func (s *Server) deleteSpace(w http.ResponseWriter, r *http.Request) {
	if err := s.spaces.DeleteSpace(r.Context(), userID(r), spaceID(r)); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) tree(w http.ResponseWriter, r *http.Request) {
	t, err := s.spaces.Tree(r.Context(), userID(r), spaceID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTree(t))
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	v, err := s.spaces.Session(r.Context(), userID(r), spaceID(r), sessionID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toMeta(v))
}

func queryInt(r *http.Request, name string) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, badField(name, "must be a non-negative integer")
	}
	return n, nil
}

func (s *Server) messages(w http.ResponseWriter, r *http.Request) {
	limit, err := queryInt(r, "limit")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	offset, err := queryInt(r, "offset")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	recs, err := s.spaces.Messages(r.Context(), userID(r), spaceID(r), sessionID(r), limit, offset)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]Message, len(recs))
	for i, rec := range recs {
		out[i] = toMessage(rec)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	var o session.ForkOptions
	if err := s.decode(w, r, &o); err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.spaces.Fork(r.Context(), userID(r), spaceID(r), sessionID(r), o)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toMeta(v))
}

func (s *Server) archive(w http.ResponseWriter, r *http.Request) {
	v, err := s.spaces.Archive(r.Context(), userID(r), spaceID(r), sessionID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toMeta(v))
}

// slotOf maps the last path segment to a data slot.
func slotOf(r *http.Request) session.Slot {
	switch r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:] {
	case "system-prompt":
		return session.SlotSystemPrompt
	case "memory":
		return session.SlotMemory
	case "insight":
		return session.SlotInsight
	case "consolidate-prompt":
		return session.SlotConsolidatePrompt
	default:
		return session.SlotIntegratePrompt
	}
}

func (s *Server) getSlot(w http.ResponseWriter, r *http.Request) {
	v, err := s.spaces.Slot(r.Context(), userID(r), spaceID(r), sessionID(r), slotOf(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Content{Content: v})
}

func (s *Server) putSlot(w http.ResponseWriter, r *http.Request) {
	var b Content
	if err := s.decode(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	if b.Content == nil {
		s.writeError(w, r, badField("content", "is required (it may be \"\")"))
		return
	}
	v, err := s.spaces.SetSlot(r.Context(), userID(r), spaceID(r), sessionID(r), slotOf(r), *b.Content)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Content{Content: v})
}

func (s *Server) consolidate(w http.ResponseWriter, r *http.Request) {
	mem, err := s.spaces.Consolidate(r.Context(), userID(r), spaceID(r), sessionID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Content{Content: mem})
}

func (s *Server) integrate(w http.ResponseWriter, r *http.Request) {
	res, err := s.spaces.Integrate(r.Context(), userID(r), spaceID(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ins := res.Insights
	if ins == nil {
		ins = []session.Insight{}
	}
	writeJSON(w, http.StatusOK, Integration{Synthesis: res.Synthesis, Insights: ins})
}
