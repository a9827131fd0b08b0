// Package anthropic implements llm.Client for the Anthropic Messages API
// using the official SDK github.com/anthropics/anthropic-sdk-go.
package anthropic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	sdk "github.com/anthropics/anthropic-sdk-go"
	"github.com/anthropics/anthropic-sdk-go/option"

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

// Complete performs one non-streaming Messages call.
func (c *Client) Complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	params, err := c.params(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()

	// An explicit per-attempt timeout also keeps the SDK from refusing large
	// max_tokens values without streaming; ctx still bounds the whole call.
	attempt := 10 * time.Minute
	if c.cfg.Timeout > 0 {
		attempt = c.cfg.Timeout
	}
	msg, err := c.sdk.Messages.New(ctx, params, option.WithRequestTimeout(attempt))
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	return response(msg), nil
}

// Stream performs one streaming Messages call, reporting text chunks and
// tool-use input fragments to onDelta as they arrive.
func (c *Client) Stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	params, err := c.params(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()

	stream := c.sdk.Messages.NewStreaming(ctx, params)
	defer func() { _ = stream.Close() }()

	sink := provutil.NewDeltaSink(onDelta)
	var (
		msg     sdk.Message
		started bool
		// tool-call ordinal by content block index
		toolIndex = map[int64]int{}
	)
	for stream.Next() {
		event := stream.Current()
		if err := msg.Accumulate(event); err != nil {
			return nil, &llm.ProviderError{Provider: ProviderName, Message: provutil.CleanMessage("malformed stream: "+err.Error(), c.cfg.APIKey)}
		}
		var d llm.Delta
		switch event.Type {
		case "message_start":
			started = true
		case "content_block_start":
			block := event.ContentBlock
			switch block.Type {
			case "tool_use":
				n := len(toolIndex)
				toolIndex[event.Index] = n
				d = llm.Delta{IsToolCall: true, ToolCallIndex: n, ToolCallID: block.ID, ToolCallName: block.Name}
			case "text":
				d = llm.Delta{Text: block.Text}
			}
		case "content_block_delta":
			switch event.Delta.Type {
			case "text_delta":
				d = llm.Delta{Text: event.Delta.Text}
			case "input_json_delta":
				if n, ok := toolIndex[event.Index]; ok && event.Delta.PartialJSON != "" {
					d = llm.Delta{IsToolCall: true, ToolCallIndex: n, ArgsFragment: event.Delta.PartialJSON}
				}
			}
		}
		if d == (llm.Delta{}) {
			continue
		}
		if err := sink.Emit(d); err != nil {
			return nil, err
		}
	}
	if err := stream.Err(); err != nil {
		return nil, c.mapError(ctx, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, c.mapError(ctx, err)
	}
	if !started {
		return nil, &llm.ProviderError{Provider: ProviderName, Message: "stream ended without a message"}
	}
	return response(&msg), nil
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.Timeout > 0 {
		return context.WithTimeout(ctx, c.cfg.Timeout)
	}
	return context.WithCancel(ctx)
}

// response converts an SDK message (complete or accumulated) to an
// llm.Response.
func response(msg *sdk.Message) *llm.Response {
	var text strings.Builder
	var calls []llm.ToolCall
	for _, block := range msg.Content {
		switch block.Type {
		case "text":
			text.WriteString(block.Text)
		case "tool_use":
			calls = append(calls, llm.ToolCall{ID: block.ID, Name: block.Name, Input: provutil.ToolInput(string(block.Input))})
		}
	}
	u := msg.Usage
	raw := msg.RawJSON()
	if raw == "" {
		if b, err := json.Marshal(msg); err == nil {
			raw = string(b)
		}
	}
	return &llm.Response{
		Content:   text.String(),
		ToolCalls: calls,
		Usage: llm.Usage{
			// Prompt tokens in total, cached ones included, like OpenAI's
			// prompt_tokens.
			InputTokens:  int(u.InputTokens + u.CacheCreationInputTokens + u.CacheReadInputTokens),
			OutputTokens: int(u.OutputTokens),
		},
		Raw: raw,
	}
}

// params converts an llm.Request to SDK parameters. System messages go to
// the system parameter; tool results become tool_result blocks of a user
// message; consecutive messages of one role are merged into one message.
func (c *Client) params(req llm.Request) (sdk.MessageNewParams, error) {
	maxTokens := req.MaxTokens
	if maxTokens <= 0 {
		maxTokens = c.cfg.MaxTokens
	}
	if maxTokens <= 0 {
		maxTokens = DefaultMaxTokens
	}
	p := sdk.MessageNewParams{Model: sdk.Model(c.cfg.Model), MaxTokens: int64(maxTokens)}

	var system []string
	add := func(role sdk.MessageParamRole, blocks ...sdk.ContentBlockParamUnion) {
		if len(blocks) == 0 {
			return
		}
		if n := len(p.Messages); n > 0 && p.Messages[n-1].Role == role {
			p.Messages[n-1].Content = append(p.Messages[n-1].Content, blocks...)
			return
		}
		p.Messages = append(p.Messages, sdk.MessageParam{Role: role, Content: blocks})
	}

	for i, m := range req.Messages {
		switch m.Role {
		case llm.RoleSystem:
			if s := strings.TrimSpace(m.Content); s != "" {
				system = append(system, s)
			}
		case llm.RoleUser:
			if m.Content != "" {
				add(sdk.MessageParamRoleUser, sdk.NewTextBlock(m.Content))
			}
		case llm.RoleAssistant:
			var blocks []sdk.ContentBlockParamUnion
			if m.Content != "" {
				blocks = append(blocks, sdk.NewTextBlock(m.Content))
			}
			for _, tc := range m.ToolCalls {
				blocks = append(blocks, sdk.NewToolUseBlock(tc.ID, json.RawMessage(provutil.Arguments(tc.Input)), tc.Name))
			}
			add(sdk.MessageParamRoleAssistant, blocks...)
		case llm.RoleTool:
			result := sdk.ToolResultBlockParam{ToolUseID: m.ToolCallID}
			if m.Content != "" {
				result.Content = []sdk.ToolResultBlockParamContentUnion{{OfText: &sdk.TextBlockParam{Text: m.Content}}}
			}
			add(sdk.MessageParamRoleUser, sdk.ContentBlockParamUnion{OfToolResult: &result})
		default:
			return p, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("message %d has unsupported role %q", i, m.Role)}
		}
	}

	if req.Format == llm.FormatJSON {
		system = append(system, jsonInstruction)
	}
	if len(system) > 0 {
		p.System = []sdk.TextBlockParam{{Text: strings.Join(system, "\n\n")}}
	}

	for _, t := range req.Tools {
		schema, err := provutil.SchemaObject(t.Parameters)
		if err != nil {
			return p, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("tool %q: %v", t.Name, err)}
		}
		input := sdk.ToolInputSchemaParam{ExtraFields: map[string]any{}}
		for k, v := range schema {
			switch k {
			case "type":
				// always "object", set by the SDK
			case "properties":
				input.Properties = v
			case "required":
				if err := json.Unmarshal(v, &input.Required); err != nil {
					return p, &llm.ProviderError{Provider: ProviderName, Message: fmt.Sprintf("tool %q: required must be a list of names", t.Name)}
				}
			default:
				input.ExtraFields[k] = v
			}
		}
		tool := sdk.ToolParam{Name: t.Name, InputSchema: input}
		if t.Description != "" {
			tool.Description = sdk.String(t.Description)
		}
		p.Tools = append(p.Tools, sdk.ToolUnionParam{OfTool: &tool})
	}
	return p, nil
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
