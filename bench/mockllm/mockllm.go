// Package mockllm is an OpenAI-compatible Chat Completions mock server.
//
// It serves POST /v1/chat/completions (also /chat/completions) and
// GET /v1/models (also /models) in the OpenAI wire format, streaming or not.
// It is used two ways:
//
//   - as a load-test and demo backend ("stello mockllm --addr ADDR", see Run):
//     replies are generated deterministically from the last user message and
//     paced by Config.TTFT and Config.TokensPerSecond, with an optional
//     injected error rate;
//   - by tests, through New and net/http/httptest: Enqueue scripts exact
//     replies (text, tool calls, errors, delays, explicit stream chunks) and
//     Requests shows what the client sent.
package mockllm

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
)

// Config tunes generated replies and pacing. The zero value answers
// instantly with 20-word replies from model "mock-1".
type Config struct {
	// TTFT is the time to first token: how long a reply waits before its
	// first streamed chunk (or, non-streaming, before the body is sent, on top
	// of the token pacing).
	TTFT time.Duration
	// TokensPerSecond paces streamed content chunks (one word or explicit
	// chunk per token) after the first one; 0 means unlimited. Non-streaming
	// replies wait the equivalent total time.
	TokensPerSecond float64
	// ReplyTokens is the number of words in a generated reply; default 20.
	ReplyTokens int
	// ErrorRate is the fraction (0..1) of unscripted requests answered with
	// HTTP 500 and an OpenAI-style error body. Which requests fail is
	// deterministic for a given Seed and request ordinal.
	ErrorRate float64
	// Seed makes filler words and injected errors reproducible.
	Seed int64
	// Model is listed by /v1/models and reported when a request names no
	// model (requests that name one get it echoed back); default "mock-1".
	Model string
}

// ToolCall is a function call, scripted in a Reply or recorded from a
// request message.
type ToolCall struct {
	// ID is the call id ("call_…"). Empty scripted IDs are generated.
	ID string
	// Name is the function name.
	Name string
	// Arguments is the JSON-encoded argument object, passed through as is.
	Arguments string
}

// Reply is one scripted answer, consumed by exactly one chat completion
// request (FIFO, see Server.Enqueue).
type Reply struct {
	// Content is the assistant text. When empty and Chunks is set, it is the
	// concatenation of Chunks.
	Content string
	// ToolCalls are returned after Content; finish_reason becomes
	// "tool_calls".
	ToolCalls []ToolCall
	// Status, when non-zero, answers this HTTP status with the body
	// {"error":{"message":ErrorMessage,"type":"server_error"}} instead of a
	// completion (streaming or not).
	Status int
	// ErrorMessage is the error message for Status; default is the status
	// text.
	ErrorMessage string
	// Delay is waited before anything is written (before the response
	// headers, hence before the first chunk when streaming). The wait ends
	// early, without answering, if the client goes away.
	Delay time.Duration
	// Chunks, when set, are the exact content deltas streamed (one per
	// token); otherwise Content is split at word boundaries. They should
	// concatenate to Content when both are set.
	Chunks []string
	// EndEarly ends the reply before it is complete, as a dropped upstream
	// connection would, while the HTTP exchange itself ends cleanly: a
	// stream closes after the content chunks without a finish_reason or
	// [DONE]; a non-streamed body is cut in half (with a matching
	// Content-Length).
	EndEarly bool
}

// RecordedMessage is one decoded request message.
type RecordedMessage struct {
	// Role is "system", "developer", "user", "assistant" or "tool".
	Role string
	// Content is the message text; when the request used an array of content
	// parts, the text parts concatenated (no separator).
	Content string
	// ToolCalls are the assistant's tool calls.
	ToolCalls []ToolCall
	// ToolCallID is set on tool result messages.
	ToolCallID string
}

// RecordedRequest is one chat completion request as the server received it.
// Requests whose body failed to decode are recorded with Header and Body
// only.
type RecordedRequest struct {
	// Model is the requested model.
	Model string
	// Messages are the decoded messages, in order.
	Messages []RecordedMessage
	// Tools are the names of the function tools offered.
	Tools []string
	// Stream is the "stream" flag.
	Stream bool
	// MaxTokens is max_completion_tokens, or max_tokens when that is unset.
	MaxTokens int
	// ResponseFormat is response_format.type ("json_object", "json_schema",
	// "text"), empty when absent.
	ResponseFormat string
	// Header is a copy of the request headers.
	Header http.Header
	// Body is a copy of the raw request body.
	Body []byte
}

// Server is the mock; it implements http.Handler. All methods are safe for
// concurrent use.
type Server struct {
	cfg      Config
	record   bool
	interval time.Duration // between streamed tokens; 0 = unlimited
	models   []byte        // precomputed GET /v1/models body
	idPrefix string

	seq    atomic.Uint64 // ids
	calls  atomic.Int64  // chat completion requests since New/Reset
	queued atomic.Int64  // len(queue), read without the lock

	mu    sync.Mutex
	queue []Reply
	reqs  []RecordedRequest
}

const (
	defaultModel       = "mock-1"
	defaultReplyTokens = 20
	maxBodyBytes       = 32 << 20
)

// New returns a mock server that records every request.
func New(cfg Config) *Server {
	return newServer(cfg, true)
}

// NewQuiet returns a mock server that records nothing, for load tests.
func NewQuiet(cfg Config) *Server {
	return newServer(cfg, false)
}

func newServer(cfg Config, record bool) *Server {
	if cfg.Model == "" {
		cfg.Model = defaultModel
	}
	if cfg.ReplyTokens <= 0 {
		cfg.ReplyTokens = defaultReplyTokens
	}
	cfg.ErrorRate = min(max(cfg.ErrorRate, 0), 1)
	if cfg.TTFT < 0 {
		cfg.TTFT = 0
	}
	s := &Server{
		cfg:      cfg,
		record:   record,
		idPrefix: strconv.FormatUint(uint64(time.Now().UnixNano())&0xffffff, 36) + "x",
	}
	if cfg.TokensPerSecond > 0 {
		s.interval = time.Duration(float64(time.Second) / cfg.TokensPerSecond)
	}
	s.models, _ = json.Marshal(modelList{
		Object: "list",
		Data:   []modelInfo{{ID: cfg.Model, Object: "model", Created: 1700000000, OwnedBy: "mockllm"}},
	})
	return s
}

// Enqueue appends scripted replies. Each chat completion request consumes
// the oldest one; when none is left, replies are generated.
func (s *Server) Enqueue(replies ...Reply) {
	s.mu.Lock()
	s.queue = append(s.queue, replies...)
	s.queued.Store(int64(len(s.queue)))
	s.mu.Unlock()
}

// Requests returns the chat completion requests received since New or the
// last Reset, in arrival order. The records must not be modified.
func (s *Server) Requests() []RecordedRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]RecordedRequest(nil), s.reqs...)
}

// Calls returns the number of chat completion requests received since New
// or the last Reset (including malformed ones).
func (s *Server) Calls() int {
	return int(s.calls.Load())
}

// Reset drops the queued replies and the recorded requests and zeroes Calls.
func (s *Server) Reset() {
	s.mu.Lock()
	clear(s.queue)
	s.queue = s.queue[:0]
	s.queued.Store(0)
	s.reqs = nil
	s.calls.Store(0)
	s.mu.Unlock()
}

// admit counts and records a request and, when consume is set, pops the next
// scripted reply. Doing all three under one lock keeps Requests()[i] paired
// with the i-th scripted reply. It returns the 1-based request ordinal.
func (s *Server) admit(rec *RecordedRequest, consume bool) (n uint64, r Reply, scripted bool) {
	if rec == nil && (!consume || s.queued.Load() == 0) {
		return uint64(s.calls.Add(1)), Reply{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n = uint64(s.calls.Add(1))
	if rec != nil {
		s.reqs = append(s.reqs, *rec)
	}
	if consume && len(s.queue) > 0 {
		r, scripted = s.queue[0], true
		s.queue[0] = Reply{}
		s.queue = s.queue[1:]
		s.queued.Store(int64(len(s.queue)))
	}
	return n, r, scripted
}

// ServeHTTP routes the OpenAI endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/chat/completions", "/chat/completions":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeSimpleError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method "+r.Method+" not allowed")
			return
		}
		s.chat(w, r)
	case "/v1/models", "/models":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeSimpleError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method "+r.Method+" not allowed")
			return
		}
		h := w.Header()
		h["Content-Type"] = hvJSON
		h.Set("Content-Length", strconv.Itoa(len(s.models)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(s.models)
		}
	default:
		writeSimpleError(w, http.StatusNotFound, "invalid_request_error", "Unknown request URL: "+r.Method+" "+r.URL.Path)
	}
}

// state is the per-request scratch space, pooled to keep the hot path
// allocation-light.
type state struct {
	body  bytes.Buffer
	out   bytes.Buffer
	enc   *json.Encoder // writes to out
	timer *time.Timer   // lazily created, stopped when idle

	ck     chunk
	cc     [1]chunkChoice
	td     [1]toolCallDelta
	text   string
	finish string
	us     usage
	comp   completion
	compCh [1]completionChoice
}

var statePool = sync.Pool{New: func() any {
	st := new(state)
	st.enc = json.NewEncoder(&st.out)
	st.enc.SetEscapeHTML(false)
	return st
}}

const maxPooledBuf = 1 << 20

// Constant header values, shared to save an allocation per response. net/http
// only reads them; Header.Set/Add replace or reallocate rather than write in
// place (the capacity is pinned to the length).
var (
	hvJSON        = []string{"application/json"}[:1:1]
	hvEventStream = []string{"text/event-stream"}[:1:1]
	hvNoCache     = []string{"no-cache"}[:1:1]
	hvNo          = []string{"no"}[:1:1]
)

func getState() *state { return statePool.Get().(*state) }

func putState(st *state) {
	if st.timer != nil {
		st.timer.Stop()
	}
	if st.body.Cap() > maxPooledBuf {
		st.body = bytes.Buffer{}
	}
	if st.out.Cap() > maxPooledBuf {
		st.out = bytes.Buffer{}
	}
	st.body.Reset()
	st.out.Reset()
	// Drop references to request data.
	st.ck, st.cc, st.td, st.comp, st.compCh = chunk{}, [1]chunkChoice{}, [1]toolCallDelta{}, completion{}, [1]completionChoice{}
	st.text, st.finish = "", ""
	statePool.Put(st)
}

// sleep waits d or until done is closed; it reports whether the full wait
// elapsed (false: the client went away).
func (st *state) sleep(done <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	if st.timer == nil {
		st.timer = time.NewTimer(d)
	} else {
		st.timer.Reset(d)
	}
	select {
	case <-done:
		st.timer.Stop()
		return false
	case <-st.timer.C:
		return true
	}
}

// encode renders v as JSON (no trailing newline) between prefix and suffix
// into st.out.
func (st *state) encode(prefix string, v any, suffix string) error {
	st.out.Reset()
	st.out.WriteString(prefix)
	if err := st.enc.Encode(v); err != nil {
		return err
	}
	st.out.Truncate(st.out.Len() - 1) // Encode's newline
	st.out.WriteString(suffix)
	return nil
}

func writeSimpleError(w http.ResponseWriter, status int, typ, msg string) {
	st := getState()
	defer putState(st)
	writeError(w, st, status, typ, msg)
}

func writeError(w http.ResponseWriter, st *state, status int, typ, msg string) {
	if status < 100 || status > 999 {
		status = http.StatusInternalServerError
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	_ = st.encode("", &errorBody{Error: errorDetail{Message: msg, Type: typ}}, "\n")
	h := w.Header()
	h["Content-Type"] = hvJSON
	h.Set("Content-Length", strconv.Itoa(st.out.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(st.out.Bytes())
}

func (s *Server) newID(prefix string) string {
	b := make([]byte, 0, len(prefix)+len(s.idPrefix)+13)
	b = append(b, prefix...)
	b = append(b, s.idPrefix...)
	b = strconv.AppendUint(b, s.seq.Add(1), 36)
	return string(b)
}

// recordOf converts a decoded request for Requests.
func recordOf(req *chatRequest, h http.Header, body []byte) *RecordedRequest {
	rr := &RecordedRequest{
		Model:     req.Model,
		Stream:    req.Stream,
		MaxTokens: maxTokens(req),
		Header:    h.Clone(),
		Body:      bytes.Clone(body),
	}
	if req.RespFormat != nil {
		rr.ResponseFormat = req.RespFormat.Type
	}
	if len(req.Messages) > 0 {
		rr.Messages = make([]RecordedMessage, len(req.Messages))
		for i, m := range req.Messages {
			rm := RecordedMessage{Role: m.Role, Content: string(m.Content), ToolCallID: m.ToolCallID}
			if len(m.ToolCalls) > 0 {
				rm.ToolCalls = make([]ToolCall, len(m.ToolCalls))
				for j, tc := range m.ToolCalls {
					rm.ToolCalls[j] = ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments}
				}
			}
			rr.Messages[i] = rm
		}
	}
	for _, t := range req.Tools {
		rr.Tools = append(rr.Tools, t.Function.Name)
	}
	return rr
}

func maxTokens(req *chatRequest) int {
	if req.MaxCompletion > 0 {
		return req.MaxCompletion
	}
	return req.MaxTokens
}

// lastUser returns the content of the last user message (or of the last
// message when there is no user message).
func lastUser(msgs []reqMessage) string {
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Role == "user" {
			return string(msgs[i].Content)
		}
	}
	if len(msgs) > 0 {
		return string(msgs[len(msgs)-1].Content)
	}
	return ""
}

// quickDecode reads what an unrecorded request needs (model, stream
// options, token limits, response format, the last user message and the
// prompt's word count) with a validating scan instead of decoding every
// message: a load test's conversations grow to hundreds of turns, and the
// mock must not become the bottleneck it measures. It reports false when
// the body needs the full decoder (invalid JSON, unusual content).
func quickDecode(body []byte, req *chatRequest, promptWords *int) bool {
	if !gjson.ValidBytes(body) {
		return false
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return false
	}
	// One pass over the document: looking keys up one by one would skim
	// the whole messages array again for each of them.
	words, ok, sawMessages := 0, true, false
	var last, lastUser string
	var haveLast, haveUser bool
	root.ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "model":
			req.Model = v.String()
		case "stream":
			req.Stream = v.Bool()
		case "stream_options":
			if v.IsObject() {
				req.StreamOptions = &reqStreamOpt{IncludeUsage: v.Get("include_usage").Bool()}
			}
		case "max_tokens":
			req.MaxTokens = int(v.Int())
		case "max_completion_tokens":
			req.MaxCompletion = int(v.Int())
		case "response_format":
			if v.IsObject() {
				req.RespFormat = &reqRespFmt{Type: v.Get("type").String()}
			}
		case "messages":
			if !v.IsArray() {
				ok = false
				return false
			}
			sawMessages = true
			v.ForEach(func(_, m gjson.Result) bool {
				var role string
				var content gjson.Result
				m.ForEach(func(mk, mv gjson.Result) bool {
					switch mk.Str {
					case "role":
						role = mv.Str
					case "content":
						content = mv
					}
					return true
				})
				if content.Type != gjson.String && content.Type != gjson.Null {
					ok = false // content parts: leave them to the full decoder
					return false
				}
				words += countWords(content.Str)
				last, haveLast = content.Str, true
				if role == "user" {
					lastUser, haveUser = content.Str, true
				}
				return true
			})
		}
		return ok
	})
	if !ok || !sawMessages {
		return false
	}
	if !haveUser {
		lastUser, haveUser = last, haveLast
	}
	req.Messages = req.Messages[:0]
	if haveUser {
		req.Messages = append(req.Messages, reqMessage{Role: "user", Content: msgContent(lastUser)})
	}
	*promptWords = words
	return true
}

// answer is what a request will be answered with.
type answer struct {
	id, model string
	created   int64
	content   string
	chunks    []string
	toolCalls []ToolCall
	finish    string
	usage     usage
	endEarly  bool
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	st := getState()
	defer putState(st)
	done := r.Context().Done()

	var req chatRequest
	promptWords := -1
	_, err := st.body.ReadFrom(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err == nil {
		if s.record || !quickDecode(st.body.Bytes(), &req, &promptWords) {
			err = json.Unmarshal(st.body.Bytes(), &req)
		}
	}
	var rec *RecordedRequest
	if s.record {
		if err != nil {
			rec = &RecordedRequest{Header: r.Header.Clone(), Body: bytes.Clone(st.body.Bytes())}
		} else {
			rec = recordOf(&req, r.Header, st.body.Bytes())
		}
	}
	n, reply, scripted := s.admit(rec, err == nil)
	if err != nil {
		writeError(w, st, http.StatusBadRequest, "invalid_request_error", "invalid request body: "+err.Error())
		return
	}

	a := answer{model: req.Model, created: time.Now().Unix(), finish: "stop"}
	if a.model == "" {
		a.model = s.cfg.Model
	}
	if scripted {
		if !st.sleep(done, reply.Delay) {
			return
		}
		if reply.Status != 0 {
			writeError(w, st, reply.Status, "server_error", reply.ErrorMessage)
			return
		}
		a.content, a.chunks, a.endEarly = reply.Content, reply.Chunks, reply.EndEarly
		if a.content == "" && len(a.chunks) > 0 {
			a.content = strings.Join(a.chunks, "")
		}
		if len(reply.ToolCalls) > 0 {
			a.finish = "tool_calls"
			a.toolCalls = reply.ToolCalls
			copied := false // never write to the caller's slice
			for i := range a.toolCalls {
				if a.toolCalls[i].ID == "" {
					if !copied {
						a.toolCalls, copied = slices.Clone(reply.ToolCalls), true
					}
					a.toolCalls[i].ID = s.newID("call_")
				}
			}
		}
	} else {
		if s.cfg.ErrorRate > 0 && unitFloat(splitmix64(uint64(s.cfg.Seed)^(n*0x9e3779b97f4a7c15))) < s.cfg.ErrorRate {
			writeError(w, st, http.StatusInternalServerError, "server_error", "mockllm: injected error")
			return
		}
		input := lastUser(req.Messages)
		if rf := req.RespFormat; rf != nil && (rf.Type == "json_object" || rf.Type == "json_schema") {
			a.content = generateJSON(s.cfg.Seed, input)
		} else {
			words := s.cfg.ReplyTokens
			if mt := maxTokens(&req); mt > 0 && mt < words {
				words, a.finish = mt, "length"
			}
			a.content = generateText(s.cfg.Seed, input, words)
		}
	}

	if promptWords >= 0 {
		a.usage.PromptTokens = promptWords
	} else {
		for i := range req.Messages {
			a.usage.PromptTokens += countWords(string(req.Messages[i].Content))
		}
	}
	a.usage.CompletionTokens = countWords(a.content)
	for _, tc := range a.toolCalls {
		a.usage.CompletionTokens += 1 + countWords(tc.Arguments)
	}
	a.usage.TotalTokens = a.usage.PromptTokens + a.usage.CompletionTokens
	a.id = s.newID("chatcmpl-")

	if req.Stream {
		s.stream(w, st, done, &a, req.StreamOptions != nil && req.StreamOptions.IncludeUsage)
		return
	}
	wait := s.cfg.TTFT
	if s.interval > 0 && a.usage.CompletionTokens > 1 {
		wait += time.Duration(a.usage.CompletionTokens-1) * s.interval
	}
	if !st.sleep(done, wait) {
		return
	}
	s.writeCompletion(w, st, &a)
}

func (s *Server) writeCompletion(w http.ResponseWriter, st *state, a *answer) {
	msg := responseMessage{Role: "assistant"}
	if a.content != "" || len(a.toolCalls) == 0 {
		st.text = a.content
		msg.Content = &st.text
	}
	if len(a.toolCalls) > 0 {
		msg.ToolCalls = make([]wireToolCall, len(a.toolCalls))
		for i, tc := range a.toolCalls {
			msg.ToolCalls[i] = wireToolCall{ID: tc.ID, Type: "function", Function: wireFunction{Name: tc.Name, Arguments: tc.Arguments}}
		}
	}
	st.compCh[0] = completionChoice{Message: msg, FinishReason: a.finish}
	st.comp = completion{
		ID: a.id, Object: "chat.completion", Created: a.created, Model: a.model,
		Choices: st.compCh[:], Usage: a.usage,
	}
	if err := st.encode("", &st.comp, "\n"); err != nil {
		writeError(w, st, http.StatusInternalServerError, "server_error", "mockllm: "+err.Error())
		return
	}
	out := st.out.Bytes()
	if a.endEarly {
		out = out[:len(out)/2]
	}
	h := w.Header()
	h["Content-Type"] = hvJSON
	h.Set("Content-Length", strconv.Itoa(len(out)))
	h.Set("X-Request-Id", a.id)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}
