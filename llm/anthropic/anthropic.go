// Package anthropic implements llm.Client for the Anthropic Messages API
// using the official SDK github.com/anthropics/anthropic-sdk-go.
package anthropic

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
	"sync/atomic"
	"time"

	sdk "github.com/anthropics/anthropic-sdk-go"
	"github.com/anthropics/anthropic-sdk-go/option"
	"github.com/anthropics/anthropic-sdk-go/packages/ssestream"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// ProviderName is the ProviderError.Provider of this package's errors.
const ProviderName = "anthropic"

// DefaultMaxTokens is sent when neither the request nor Config sets a limit;
// the Messages API requires max_tokens.
const DefaultMaxTokens = 1024

// DefaultMaxRetries is the SDK's default retry count, a sensible value for
// Config.MaxRetries in production.
const DefaultMaxRetries = 2

// jsonInstruction is appended to the system prompt for llm.FormatJSON: the
// Messages API has no schema-less JSON mode.
const jsonInstruction = "Respond with a single valid JSON object and nothing else."

// Config configures a Client.
type Config struct {
	// BaseURL of the API without the /v1 path, e.g.
	// "https://api.anthropic.com". Empty uses the SDK default.
	BaseURL string
	// APIKey is sent in the x-api-key header.
	APIKey string
	// Model name, required (e.g. "claude-sonnet-4-5").
	Model string
	// MaxTokens caps the reply when the request does not set its own; 0
	// means DefaultMaxTokens.
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

// Client is an llm.Client for the Anthropic Messages API. It is safe for
// concurrent use.
type Client struct {
	cfg Config
	sdk sdk.Client
	// tools caches the encoding of the last tool list.
	tools atomic.Pointer[toolsCache]
}

var _ llm.Client = (*Client)(nil)

// New returns a Client for cfg. Ambient ANTHROPIC_* environment settings are
// ignored: only cfg decides where requests go and which key they carry.
func New(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.Model) == "" {
		return nil, errors.New("anthropic: model is required")
	}
	opts := []option.RequestOption{option.WithoutEnvironmentDefaults()}
	if cfg.BaseURL != "" {
		u, err := url.Parse(cfg.BaseURL)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("anthropic: invalid base URL %q", cfg.BaseURL)
		}
		opts = append(opts, option.WithBaseURL(cfg.BaseURL))
	}
	if cfg.APIKey != "" {
		opts = append(opts, option.WithAPIKey(cfg.APIKey))
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = provutil.HTTPClient()
	}
	opts = append(opts, option.WithHTTPClient(cfg.HTTPClient))
	if cfg.MaxRetries >= 0 {
		opts = append(opts, option.WithMaxRetries(cfg.MaxRetries))
	}
	return &Client{cfg: cfg, sdk: sdk.NewClient(opts...)}, nil
}

// Name returns "anthropic/<model>".
func (c *Client) Name() string { return ProviderName + "/" + c.cfg.Model }

// Complete performs one non-streaming Messages call. The reply counts only
// if it is a message with a stop_reason; anything else (an HTML page,
// truncated JSON, another object) is an error.
func (c *Client) Complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	ctx, span := provutil.StartCall(ctx, provutil.SpanComplete, ProviderName, c.cfg.Model, req)
	resp, err := c.complete(ctx, req)
	provutil.EndCall(span, resp, err)
	return resp, err
}

// post sends req (its body built into a pooled buffer, see provutil.Send)
// through the SDK with opts and returns the response; its errors are
// mapped.
func (c *Client) post(ctx context.Context, req llm.Request, stream bool, opts ...option.RequestOption) (*http.Response, error) {
	var raw *http.Response
	err := provutil.Send(ctx, func(dst []byte) ([]byte, error) { return c.body(dst, req, stream) },
		func(tctx context.Context, body []byte) error {
			err := c.sdk.Post(tctx, "v1/messages", nil, &raw, append(opts, option.WithRequestBody("application/json", body))...)
			if err != nil {
				return c.mapError(ctx, err)
			}
			return nil
		})
	return raw, err
}

func (c *Client) complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()

	// An explicit per-attempt timeout; ctx still bounds the whole call.
	attempt := 10 * time.Minute
	if c.cfg.Timeout > 0 {
		attempt = c.cfg.Timeout
	}
	raw, err := c.post(ctx, req, false, option.WithRequestTimeout(attempt))
	if err != nil {
		return nil, err
	}
	defer func() { _ = raw.Body.Close() }()
	if !provutil.IsJSON(raw.Header.Get("Content-Type")) {
		return nil, c.notA(raw, "message")
	}
	data, err := io.ReadAll(io.LimitReader(raw.Body, provutil.MaxResponseBytes+1))
	if err == nil && len(data) > provutil.MaxResponseBytes {
		err = fmt.Errorf("the answer is over %d bytes", provutil.MaxResponseBytes)
	}
	if err != nil {
		return nil, c.mapError(ctx, fmt.Errorf("reading the message: %w", err))
	}
	var msg message
	if err := json.Unmarshal(data, &msg); err != nil {
		return nil, c.fail("malformed message: " + err.Error())
	}
	if msg.Type != "message" {
		return nil, c.fail(fmt.Sprintf("the answer is a %q, not a message: %s", msg.Type, provutil.BodyMessage(data)))
	}
	if msg.StopReason == "" {
		return nil, c.fail("message has no stop_reason: the reply may be incomplete")
	}
	resp := msg.response()
	resp.Raw = string(data)
	return resp, nil
}

// message is the part of a Messages API message Stello reads.
type message struct {
	Type       string  `json:"type"`
	Role       string  `json:"role,omitempty"`
	Content    []block `json:"content"`
	StopReason string  `json:"stop_reason"`
	Usage      usage   `json:"usage"`
}

type block struct {
	Type  string          `json:"type"`
	Text  string          `json:"text,omitempty"`
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name,omitempty"`
	Input json.RawMessage `json:"input,omitempty"`
}

type usage struct {
	InputTokens              int `json:"input_tokens"`
	OutputTokens             int `json:"output_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
}

func (m *message) response() *llm.Response {
	var text strings.Builder
	var calls []llm.ToolCall
	for _, b := range m.Content {
		switch b.Type {
		case "text":
			text.WriteString(b.Text)
		case "tool_use":
			calls = append(calls, llm.ToolCall{ID: b.ID, Name: b.Name, Input: provutil.ToolInput(string(b.Input))})
		}
	}
	u := m.Usage
	return &llm.Response{
		Content:   text.String(),
		ToolCalls: calls,
		Usage: llm.Usage{
			// Prompt tokens in total, cached ones included, like OpenAI's
			// prompt_tokens.
			InputTokens:  u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens,
			OutputTokens: u.OutputTokens,
		},
	}
}

// streamEvent is the part of a streamed Messages event Stello reads.
type streamEvent struct {
	Type         string   `json:"type"`
	Index        int      `json:"index"`
	Message      *message `json:"message"`
	ContentBlock *block   `json:"content_block"`
	Delta        *struct {
		Type        string `json:"type"`
		Text        string `json:"text"`
		PartialJSON string `json:"partial_json"`
		StopReason  string `json:"stop_reason"`
	} `json:"delta"`
	Usage *usage `json:"usage"`
	Error *struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

// Stream performs one streaming Messages call, reporting text chunks and
// tool-use input fragments to onDelta as they arrive. The reply counts only
// once the stream sent message_stop; a stream that ends before, or a 200
// that is not an event stream at all, is an error.
func (c *Client) Stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	ctx, span := provutil.StartCall(ctx, provutil.SpanStream, ProviderName, c.cfg.Model, req)
	resp, err := c.stream(ctx, req, provutil.FirstDelta(span, onDelta))
	provutil.EndCall(span, resp, err)
	return resp, err
}

func (c *Client) stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()

	// The SDK builds, authenticates, retries and maps errors of the
	// request; events are decoded here into a lean struct.
	raw, err := c.post(ctx, req, true)
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
		msg              message
		started, stopped bool
		blocks           = map[int]*block{}           // by content block index
		args             = map[int]*strings.Builder{} // text or tool input after the block's start
		order            []int
		toolIndex        = map[int]int{} // tool-call ordinal by block index
	)
	for !stopped && dec.Next() {
		data := bytes.TrimSpace(dec.Event().Data)
		if len(data) == 0 {
			continue
		}
		var ev streamEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return nil, c.fail("malformed stream event: " + err.Error())
		}
		if dec.Event().Type == "error" || ev.Type == "error" {
			m := "stream error"
			if ev.Error != nil {
				m += ": " + ev.Error.Message
			}
			return nil, c.fail(m)
		}
		var d llm.Delta
		switch ev.Type {
		case "message_start":
			started = true
			if ev.Message != nil {
				msg.Usage = ev.Message.Usage
			}
		case "content_block_start":
			b := ev.ContentBlock
			if b == nil || !started {
				return nil, c.fail("malformed stream: content block outside a message")
			}
			blocks[ev.Index] = b
			order = append(order, ev.Index)
			args[ev.Index] = &strings.Builder{}
			switch b.Type {
			case "tool_use":
				n := len(toolIndex)
				toolIndex[ev.Index] = n
				d = llm.Delta{IsToolCall: true, ToolCallIndex: n, ToolCallID: b.ID, ToolCallName: b.Name}
			case "text":
				d = llm.Delta{Text: b.Text}
			}
		case "content_block_delta":
			b := blocks[ev.Index]
			if b == nil || ev.Delta == nil {
				return nil, c.fail("malformed stream: delta for an unknown content block")
			}
			switch ev.Delta.Type {
			case "text_delta":
				args[ev.Index].WriteString(ev.Delta.Text)
				d = llm.Delta{Text: ev.Delta.Text}
			case "input_json_delta":
				if n, ok := toolIndex[ev.Index]; ok && ev.Delta.PartialJSON != "" {
					args[ev.Index].WriteString(ev.Delta.PartialJSON)
					d = llm.Delta{IsToolCall: true, ToolCallIndex: n, ArgsFragment: ev.Delta.PartialJSON}
				}
			}
		case "message_delta":
			if ev.Delta != nil && ev.Delta.StopReason != "" {
				msg.StopReason = ev.Delta.StopReason
			}
			if u := ev.Usage; u != nil {
				msg.Usage.OutputTokens = u.OutputTokens
				if u.InputTokens > 0 {
					msg.Usage.InputTokens = u.InputTokens
				}
			}
		case "message_stop":
			stopped = true
		}
		if d == (llm.Delta{}) {
			continue
		}
		if err := sink.Emit(d); err != nil {
			return nil, err
		}
	}
	if err := dec.Err(); err != nil {
		return nil, c.mapError(ctx, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, c.mapError(ctx, err)
	}
	if !started {
		return nil, c.fail("stream ended without a message")
	}
	if !stopped {
		return nil, c.fail("stream ended before message_stop: the reply is incomplete")
	}
	provutil.FinishBody(raw.Body, cancel)
	for _, i := range order {
		b := blocks[i]
		switch a := args[i]; {
		case a.Len() == 0:
		case b.Type == "text":
			b.Text += a.String()
		case b.Type == "tool_use":
			b.Input = json.RawMessage(a.String())
		}
		msg.Content = append(msg.Content, *b)
	}
	msg.Type, msg.Role = "message", "assistant"
	resp := msg.response()
	if b, err := json.Marshal(msg); err == nil {
		resp.Raw = string(b)
	}
	return resp, nil
}

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

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.Timeout > 0 {
		return context.WithTimeout(ctx, c.cfg.Timeout)
	}
	return context.WithCancel(ctx)
}

// mapError converts any failure into a *llm.ProviderError (or a
// context.Canceled error when the caller gave up).
func (c *Client) mapError(ctx context.Context, err error) error {
	if ctxErr := provutil.ContextError(ctx, ProviderName, err); ctxErr != nil {
		return ctxErr
	}
	pe := &llm.ProviderError{Provider: ProviderName}
	var apiErr *sdk.Error
	if errors.As(err, &apiErr) {
		body := provutil.BodyMessage([]byte(apiErr.RawJSON()))
		if apiErr.StatusCode >= 400 {
			pe.Status = apiErr.StatusCode
		} else {
			// An error event inside a 200 stream.
			body = "stream error: " + body
		}
		pe.Message = provutil.StatusMessage(pe.Status, body, "")
	} else {
		pe.Message = err.Error()
	}
	pe.Message = provutil.CleanMessage(pe.Message, c.cfg.APIKey)
	return pe
}
