// Package openai implements llm.Client for any OpenAI-compatible Chat
// Completions endpoint (OpenAI, Azure-style proxies, vLLM, Ollama, llama.cpp,
// LiteLLM, …) using the official SDK github.com/openai/openai-go/v3.
package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"github.com/tidwall/gjson"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// ProviderName is the ProviderError.Provider of this package's errors.
const ProviderName = "openai"

// DefaultBaseURL is used when Config.BaseURL is empty.
const DefaultBaseURL = "https://api.openai.com/v1"

// DefaultMaxRetries is the SDK's default retry count, a sensible value for
// Config.MaxRetries in production.
const DefaultMaxRetries = 2

// Config configures a Client.
type Config struct {
	// BaseURL of the API including the version path, e.g.
	// "https://api.openai.com/v1" or "http://localhost:11434/v1". Empty means
	// DefaultBaseURL.
	BaseURL string
	// APIKey is sent as a bearer token; empty sends no Authorization header
	// (fine for local servers).
	APIKey string
	// Model name, required.
	Model string
	// MaxTokens caps the reply when the request does not set its own; 0
	// leaves it to the server.
	MaxTokens int
	// Timeout bounds each call (all retries included) when > 0.
	Timeout time.Duration
	// HTTPClient overrides the HTTP client; nil uses one that keeps up to
	// 512 idle connections to the endpoint.
	HTTPClient *http.Client
	// MaxRetries is how often the SDK retries connection errors, 408, 409,
	// 429 and 5xx answers (with backoff, honoring Retry-After). 0 disables
	// retries; negative uses the SDK default (DefaultMaxRetries).
	MaxRetries int
}

// Client is an llm.Client for an OpenAI-compatible Chat Completions API. It is
// safe for concurrent use.
type Client struct {
	cfg Config
	sdk oai.Client
	// maxCompletionTokens selects max_completion_tokens (required by OpenAI's
	// reasoning models) over the legacy max_tokens that most compatible
	// servers understand.
	maxCompletionTokens bool
	// tools caches the encoding of the last tool list.
	tools toolsPointer
}

var _ llm.Client = (*Client)(nil)

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.Model) == "" {
		return nil, errors.New("openai: model is required")
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultBaseURL
	}
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("openai: invalid base URL %q", cfg.BaseURL)
	}
	opts := []option.RequestOption{
		option.WithBaseURL(cfg.BaseURL),
		// Always set, even empty, so an ambient OPENAI_API_KEY is never sent
		// to a different endpoint.
		option.WithAPIKey(cfg.APIKey),
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = provutil.HTTPClient()
	}
	opts = append(opts, option.WithHTTPClient(cfg.HTTPClient))
	if cfg.MaxRetries >= 0 {
		opts = append(opts, option.WithMaxRetries(cfg.MaxRetries))
	}
	return &Client{
		cfg:                 cfg,
		sdk:                 oai.NewClient(opts...),
		maxCompletionTokens: u.Host == "api.openai.com",
	}, nil
}

// Name returns "openai/<model>".
func (c *Client) Name() string { return ProviderName + "/" + c.cfg.Model }

// Complete performs one non-streaming chat completion. The reply counts
// only if it is a chat completion with a choice that has a finish_reason;
// anything else (an HTML page, truncated JSON, no choices) is an error.
func (c *Client) Complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	ctx, span := provutil.StartCall(ctx, provutil.SpanComplete, ProviderName, c.cfg.Model, req)
	resp, err := c.complete(ctx, req)
	provutil.EndCall(span, resp, err)
	return resp, err
}

// post sends req (its body built into a pooled buffer, see provutil.Send)
// through the SDK, and returns the response and the HTTP status of the
// last attempt; its errors are mapped.
func (c *Client) post(ctx context.Context, req llm.Request, stream bool) (*http.Response, int, error) {
	var status int
	var raw *http.Response
	err := provutil.Send(ctx, func(dst []byte) ([]byte, error) { return c.body(dst, req, stream) },
		func(tctx context.Context, body []byte) error {
			err := c.sdk.Post(tctx, "chat/completions", nil, &raw, option.WithRequestBody("application/json", body), statusRecorder(&status))
			if err != nil {
				return c.mapError(ctx, err, status)
			}
			return nil
		})
	return raw, status, err
}

func (c *Client) complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	raw, status, err := c.post(ctx, req, false)
	if err != nil {
		return nil, err
	}
	defer func() { _ = raw.Body.Close() }()
	if !provutil.IsJSON(raw.Header.Get("Content-Type")) {
		return nil, c.notA(raw, "chat completion")
	}
	data, err := io.ReadAll(io.LimitReader(raw.Body, provutil.MaxResponseBytes+1))
	if err == nil && len(data) > provutil.MaxResponseBytes {
		err = fmt.Errorf("the answer is over %d bytes", provutil.MaxResponseBytes)
	}
	if err != nil {
		return nil, c.mapError(ctx, fmt.Errorf("reading the completion: %w", err), status)
	}
	// The reply is read for the few fields Stello reads in one pass, as a
	// streamed chunk is: reflective decoding cost more than the rest of
	// reading the answer.
	var comp streamChunk
	if err := parseReply(data, &comp, "message"); err != nil {
		return nil, c.fail("malformed completion: " + err.Error())
	}
	if len(comp.Choices) == 0 {
		return nil, c.fail("completion has no choices: " + provutil.BodyMessage(data))
	}
	choice := comp.Choices[0]
	for _, ch := range comp.Choices {
		if ch.Index == 0 {
			choice = ch
			break
		}
	}
	if choice.FinishReason == "" {
		return nil, c.fail("completion has no finish_reason: the reply may be incomplete")
	}
	resp := &llm.Response{ToolCalls: completionCalls(choice.Delta.ToolCalls), Raw: string(data), Content: choice.Delta.Content}
	if u := comp.Usage; u != nil {
		resp.Usage = llm.Usage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens}
	}
	return resp, nil
}

// Stream performs one streaming chat completion, reporting text chunks and
// tool-call fragments to onDelta as they arrive. The reply counts only if
// the stream said it was complete: a choice with a finish_reason, or the
// [DONE] event. A stream that ends without either, or a 200 that is not an
// event stream at all, is an error.
func (c *Client) Stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	ctx, span := provutil.StartCall(ctx, provutil.SpanStream, ProviderName, c.cfg.Model, req)
	resp, err := c.stream(ctx, req, provutil.FirstDelta(span, onDelta))
	provutil.EndCall(span, resp, err)
	return resp, err
}

func (c *Client) stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	// The SDK builds, authenticates, retries and maps errors of the request;
	// the event stream is read here, each chunk decoded into a lean struct,
	// which costs a fraction of the SDK's reflective chunk type on this hot
	// path (one decode per streamed token).
	raw, status, err := c.post(ctx, req, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = raw.Body.Close() }()
	if !provutil.IsEventStream(raw.Header.Get("Content-Type")) {
		return nil, c.notA(raw, "event stream")
	}
	dec := ssestream.NewDecoder(raw)
	defer func() { _ = dec.Close() }()

	sink := provutil.NewDeltaSink(onDelta)
	var (
		own            assembly
		usage          llm.Usage
		done, finished bool
		chunk          streamChunk
	)
	for !done && dec.Next() {
		data := bytes.TrimSpace(dec.Event().Data)
		if len(data) == 0 {
			continue
		}
		if bytes.Equal(data, doneEvent) {
			done = true
			break
		}
		if err := parseChunk(data, &chunk); err != nil {
			return nil, c.fail("malformed stream chunk: " + err.Error())
		}
		if chunk.Failed {
			return nil, c.fail("stream error: " + chunk.Error)
		}
		if u := chunk.Usage; u != nil && (u.PromptTokens > 0 || u.CompletionTokens > 0) {
			// Usage totals; some servers repeat them cumulatively, so keep the last.
			usage = llm.Usage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens}
		}
		for _, choice := range chunk.Choices {
			if choice.Index != 0 {
				continue
			}
			if choice.FinishReason != "" {
				finished = true
			}
			if err := own.add(choice.Delta, sink); err != nil {
				return nil, err
			}
		}
	}
	if err := dec.Err(); err != nil {
		return nil, c.mapError(ctx, err, status)
	}
	if err := ctx.Err(); err != nil {
		return nil, c.mapError(ctx, err, status)
	}
	if !done && !finished {
		return nil, c.fail("stream ended before the model finished (no finish_reason and no [DONE]): the reply is incomplete")
	}
	provutil.FinishBody(raw.Body, cancel)
	resp := &llm.Response{Usage: usage, Content: own.text.String(), ToolCalls: own.toolCalls()}
	resp.Raw = rawReconstruction(resp)
	return resp, nil
}

var doneEvent = []byte("[DONE]")

// fail is a ProviderError with a cleaned message.
func (c *Client) fail(msg string) error {
	return &llm.ProviderError{Provider: ProviderName, Message: provutil.CleanMessage(msg, c.cfg.APIKey)}
}

// notA describes a 200 answer whose body is not what was asked for.
func (c *Client) notA(raw *http.Response, what string) error {
	ct := raw.Header.Get("Content-Type")
	if ct == "" {
		ct = "none"
	}
	msg := fmt.Sprintf("the answer is not a %s (status %d, content type %s)", what, raw.StatusCode, ct)
	if b := provutil.BodyMessage(provutil.ReadBody(raw)); b != "" {
		msg += ": " + b
	}
	return c.fail(msg)
}

// streamChunk is the part of a chat.completion.chunk Stello reads, and of a
// chat.completion, whose choices' message is read into Delta.
type streamChunk struct {
	Choices []chunkChoice
	Usage   *chunkUsage
	// Failed is set by an "error" member that is not null: the stream
	// reports a failure, Error its message (or the member itself).
	Failed bool
	Error  string
}

type chunkChoice struct {
	Index        int
	Delta        chunkDelta
	FinishReason string
}

type chunkUsage struct {
	PromptTokens     int
	CompletionTokens int
}

type chunkDelta struct {
	Content   string
	ToolCalls []chunkToolCall
}

type chunkToolCall struct {
	Index     int
	ID        string
	Type      string
	Name      string
	Arguments string
}

// parseChunk reads a chat.completion.chunk into c (reusing its slices).
// One chunk arrives per streamed token, so it is read with a validating
// scan and one pass over each object's members instead of reflective
// decoding, which was half of the streaming path's CPU. As with
// encoding/json, a member given twice takes its last value.
func parseChunk(data []byte, c *streamChunk) error {
	return parseReply(data, c, "delta")
}

// parseReply reads a chunk or a completion into c, each choice's member
// part (delta or message) into its Delta.
func parseReply(data []byte, c *streamChunk, part string) error {
	if !gjson.ValidBytes(data) {
		return errors.New("invalid JSON")
	}
	root := gjson.ParseBytes(data)
	if !root.IsObject() {
		return errors.New("not an object")
	}
	c.Choices = c.Choices[:0]
	c.Usage = nil
	c.Failed, c.Error = false, ""
	root.ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "error":
			c.Failed, c.Error = v.Type != gjson.Null, ""
			if c.Failed {
				if c.Error = text(v.Get("message")); c.Error == "" {
					c.Error = text(v)
				}
			}
		case "choices":
			c.Choices = c.Choices[:0]
			if !v.IsArray() {
				break // null: no choices (ForEach would visit the null itself)
			}
			v.ForEach(func(_, ch gjson.Result) bool {
				c.Choices = append(c.Choices, parseChoice(ch, part))
				return true
			})
		case "usage":
			c.Usage = nil
			if v.IsObject() {
				u := &chunkUsage{}
				v.ForEach(func(k, v gjson.Result) bool {
					switch k.Str {
					case "prompt_tokens":
						u.PromptTokens = int(v.Int())
					case "completion_tokens":
						u.CompletionTokens = int(v.Int())
					}
					return true
				})
				c.Usage = u
			}
		}
		return true
	})
	return nil
}

// text is v as a string, each byte that is not UTF-8 replaced by U+FFFD as
// encoding/json does: PostgreSQL's text refuses such bytes, so a reply
// holding them could never be stored.
func text(v gjson.Result) string {
	s := v.String()
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError && n == 1 {
			b.WriteString("\uFFFD")
		} else {
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

func parseChoice(ch gjson.Result, part string) chunkChoice {
	var choice chunkChoice
	ch.ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "index":
			choice.Index = int(v.Int())
		case "finish_reason":
			choice.FinishReason = text(v)
		case part:
			choice.Delta = chunkDelta{}
			v.ForEach(func(k, v gjson.Result) bool {
				switch k.Str {
				case "content":
					choice.Delta.Content = text(v)
				case "tool_calls":
					choice.Delta.ToolCalls = nil
					if !v.IsArray() {
						break
					}
					v.ForEach(func(_, tc gjson.Result) bool {
						choice.Delta.ToolCalls = append(choice.Delta.ToolCalls, parseToolCall(tc))
						return true
					})
				}
				return true
			})
		}
		return true
	})
	return choice
}

func parseToolCall(tc gjson.Result) chunkToolCall {
	var call chunkToolCall
	tc.ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "index":
			call.Index = int(v.Int())
		case "id":
			call.ID = text(v)
		case "type":
			call.Type = text(v)
		case "function":
			call.Name, call.Arguments = "", ""
			v.ForEach(func(k, v gjson.Result) bool {
				switch k.Str {
				case "name":
					call.Name = text(v)
				case "arguments":
					call.Arguments = text(v)
				}
				return true
			})
		}
		return true
	})
	return call
}

// assembly rebuilds a streamed reply from its deltas and reports them.
type assembly struct {
	text  strings.Builder
	calls []*llm.ToolCall
	args  []strings.Builder
}

func (a *assembly) add(d chunkDelta, sink *provutil.DeltaSink) error {
	if d.Content != "" {
		a.text.WriteString(d.Content)
		if err := sink.Emit(llm.Delta{Text: d.Content}); err != nil {
			return err
		}
	}
	for _, tc := range d.ToolCalls {
		idx := tc.Index
		if idx < 0 { // some servers use -1 for a single call
			idx = 0
		}
		if idx > len(a.calls)+128 {
			continue // absurd sparse index; ignore rather than allocate
		}
		for len(a.calls) <= idx {
			a.calls = append(a.calls, nil)
			a.args = append(a.args, strings.Builder{})
		}
		delta := llm.Delta{IsToolCall: true, ToolCallIndex: idx, ArgsFragment: tc.Arguments}
		call := a.calls[idx]
		if call == nil {
			call = &llm.ToolCall{}
			a.calls[idx] = call
		}
		// ID and name normally arrive once, on the first fragment; report
		// them only the first time even if a server repeats them.
		if tc.ID != "" && call.ID == "" {
			call.ID = tc.ID
			delta.ToolCallID = tc.ID
		}
		if tc.Name != "" && call.Name == "" {
			call.Name = tc.Name
			delta.ToolCallName = tc.Name
		}
		a.args[idx].WriteString(tc.Arguments)
		if delta.ToolCallID == "" && delta.ToolCallName == "" && delta.ArgsFragment == "" {
			continue
		}
		if err := sink.Emit(delta); err != nil {
			return err
		}
	}
	return nil
}

func (a *assembly) toolCalls() []llm.ToolCall {
	var out []llm.ToolCall
	for i, call := range a.calls {
		if call == nil {
			continue
		}
		out = append(out, llm.ToolCall{ID: call.ID, Name: call.Name, Input: provutil.ToolInput(a.args[i].String())})
	}
	return out
}

func completionCalls(calls []chunkToolCall) []llm.ToolCall {
	var out []llm.ToolCall
	for _, tc := range calls {
		if tc.Type != "" && tc.Type != "function" {
			continue // custom tools are never declared by us
		}
		if tc.ID == "" && tc.Name == "" {
			continue // sparse placeholder
		}
		out = append(out, llm.ToolCall{
			ID:    tc.ID,
			Name:  tc.Name,
			Input: provutil.ToolInput(tc.Arguments),
		})
	}
	return out
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.Timeout > 0 {
		return context.WithTimeout(ctx, c.cfg.Timeout)
	}
	return context.WithCancel(ctx)
}

// statusRecorder records the HTTP status of the last attempt, so failures
// whose body the SDK cannot decode still report it.
func statusRecorder(status *int) option.RequestOption {
	return option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		res, err := next(r)
		if res != nil {
			*status = res.StatusCode
		}
		return res, err
	})
}

// mapError converts any failure into a *llm.ProviderError (or a
// context.Canceled error when the caller gave up).
func (c *Client) mapError(ctx context.Context, err error, status int) error {
	if ctxErr := provutil.ContextError(ctx, ProviderName, err); ctxErr != nil {
		return ctxErr
	}
	pe := &llm.ProviderError{Provider: ProviderName}
	var apiErr *oai.Error
	var streamErr *ssestream.StreamError
	switch {
	case errors.As(err, &apiErr):
		pe.Status = apiErr.StatusCode
		pe.Message = provutil.StatusMessage(apiErr.StatusCode, apiErr.Message, rawErrorBody(apiErr))
	case errors.As(err, &streamErr):
		msg := gjson.GetBytes(streamErr.Event.Data, "error.message").String()
		if msg == "" {
			msg = gjson.GetBytes(streamErr.Event.Data, "error").String()
		}
		pe.Message = "stream error: " + msg
	default:
		if status >= 400 {
			pe.Status = status
			pe.Message = provutil.StatusMessage(status, "", "")
		} else {
			pe.Message = err.Error()
		}
	}
	pe.Message = provutil.CleanMessage(pe.Message, c.cfg.APIKey)
	return pe
}

// rawErrorBody describes the error body when it is not a structured
// OpenAI error (plain text, HTML, FastAPI's {"detail": …}, …).
func rawErrorBody(e *oai.Error) string {
	if e.Message != "" {
		return ""
	}
	return provutil.BodyMessage(provutil.ReadBody(e.Response))
}

// rawReconstruction renders a streamed reply as a chat.completion object
// for Response.Raw.
func rawReconstruction(resp *llm.Response) string {
	calls := make([]rawCall, 0, len(resp.ToolCalls))
	for _, tc := range resp.ToolCalls {
		calls = append(calls, rawCall{ID: tc.ID, Type: "function", Function: rawFunction{Name: tc.Name, Arguments: string(tc.Input)}})
	}
	var r rawCompletion
	r.Object = "chat.completion"
	r.Choices = []rawChoice{{Message: rawMessage{Role: "assistant", Content: resp.Content, ToolCalls: calls}}}
	r.Usage.PromptTokens, r.Usage.CompletionTokens = resp.Usage.InputTokens, resp.Usage.OutputTokens
	b, _ := json.Marshal(&r)
	return string(b)
}

// rawCompletion is the reconstruction of a streamed reply as a completion
// (members in the order they have always been written: by name).
type rawCompletion struct {
	Choices []rawChoice `json:"choices"`
	Object  string      `json:"object"`
	Usage   struct {
		CompletionTokens int `json:"completion_tokens"`
		PromptTokens     int `json:"prompt_tokens"`
	} `json:"usage"`
}

type rawChoice struct {
	Index   int        `json:"index"`
	Message rawMessage `json:"message"`
}

type rawMessage struct {
	Content   string    `json:"content"`
	Role      string    `json:"role"`
	ToolCalls []rawCall `json:"tool_calls"`
}

type rawCall struct {
	ID       string      `json:"id"`
	Type     string      `json:"type"`
	Function rawFunction `json:"function"`
}

type rawFunction struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}
