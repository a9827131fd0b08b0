// Package fake implements a deterministic, offline llm.Client for tests,
// demos and load tests. It echoes the last user message, streams its reply
// word by word, never calls tools and, in JSON mode, answers the
// integration-shaped object {"synthesis": …, "insights": […]}.
package fake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/internal/provutil"
)

// ProviderName is the ProviderError.Provider of this package's errors.
const ProviderName = "fake"

// Config tunes the fake model's timing and reply size.
type Config struct {
	// Latency is waited before the first chunk.
	Latency time.Duration
	// ReplyWords pads text replies with deterministic filler words until they
	// have at least this many words; 0 keeps the natural short reply.
	ReplyWords int
	// ChunkDelay is waited before every chunk after the first.
	ChunkDelay time.Duration
}

// Client is the fake model. It is stateless and safe for concurrent use.
type Client struct {
	cfg Config
}

var _ llm.Client = (*Client)(nil)

// New returns a fake model.
func New(cfg Config) *Client { return &Client{cfg: cfg} }

// Name returns "fake".
func (c *Client) Name() string { return ProviderName }

// Complete returns the whole reply after the same delays Stream would take.
func (c *Client) Complete(ctx context.Context, req llm.Request) (*llm.Response, error) {
	ctx, span := provutil.StartCall(ctx, provutil.SpanComplete, ProviderName, ProviderName, req)
	resp, err := c.stream(ctx, req, nil)
	provutil.EndCall(span, resp, err)
	return resp, err
}

// Stream yields the reply in word-sized chunks (at least three when the
// reply has three words or more), honoring ctx during the delays.
func (c *Client) Stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	ctx, span := provutil.StartCall(ctx, provutil.SpanStream, ProviderName, ProviderName, req)
	resp, err := c.stream(ctx, req, provutil.FirstDelta(span, onDelta))
	provutil.EndCall(span, resp, err)
	return resp, err
}

func (c *Client) stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (*llm.Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(err)
	}
	reply := c.Reply(req)
	for i, chunk := range Chunks(reply) {
		delay := c.cfg.ChunkDelay
		if i == 0 {
			delay = c.cfg.Latency
		}
		if err := sleep(ctx, delay); err != nil {
			return nil, err
		}
		if onDelta != nil {
			if err := onDelta(llm.Delta{Text: chunk}); err != nil {
				return nil, err
			}
		}
	}
	resp := &llm.Response{
		Content: reply,
		Usage: llm.Usage{
			InputTokens:  inputTokens(req),
			OutputTokens: tokens(reply),
		},
	}
	raw, _ := json.Marshal(map[string]any{
		"model":   ProviderName,
		"content": resp.Content,
		"usage":   resp.Usage,
	})
	resp.Raw = string(raw)
	return resp, nil
}

// Reply returns the reply the fake model gives to req (without delays).
func (c *Client) Reply(req llm.Request) string {
	input := strings.TrimSpace(lastUserMessage(req))
	if req.Format == llm.FormatJSON {
		return jsonReply(input)
	}
	if input == "" {
		input = "(nothing)"
	}
	reply := "Echo: " + input
	if n := c.cfg.ReplyWords; n > 0 {
		have := len(strings.Fields(reply))
		var b strings.Builder
		b.WriteString(reply)
		for i := 0; have+i < n; i++ {
			b.WriteByte(' ')
			b.WriteString(filler[i%len(filler)])
		}
		reply = b.String()
	}
	return reply
}

// filler words padding replies up to Config.ReplyWords.
var filler = strings.Fields(`lorem ipsum dolor sit amet consectetur adipiscing elit
sed do eiusmod tempor incididunt ut labore et dolore magna aliqua`)

func lastUserMessage(req llm.Request) string {
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role == llm.RoleUser {
			return req.Messages[i].Content
		}
	}
	return ""
}

var uuidRE = regexp.MustCompile(`(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b`)

// UUIDs returns the distinct UUIDs in s, lower-cased, in order of first
// appearance.
func UUIDs(s string) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range uuidRE.FindAllString(s, -1) {
		id := strings.ToLower(m)
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// Insight is one entry of the JSON-mode reply.
type Insight struct {
	SessionID string `json:"sessionId"`
	Content   string `json:"content"`
}

// JSONReply is the shape of the fake model's JSON-mode answer.
type JSONReply struct {
	Synthesis string    `json:"synthesis"`
	Insights  []Insight `json:"insights"`
}

func jsonReply(input string) string {
	ids := UUIDs(input)
	noun := "sessions"
	if len(ids) == 1 {
		noun = "session"
	}
	out := JSONReply{
		Synthesis: fmt.Sprintf("Fake synthesis across %d %s.", len(ids), noun),
		Insights:  make([]Insight, 0, len(ids)),
	}
	for i, id := range ids {
		out.Insights = append(out.Insights, Insight{
			SessionID: id,
			Content:   fmt.Sprintf("Insight %d of %d for session %s.", i+1, len(ids), id),
		})
	}
	b, _ := json.Marshal(out)
	return string(b)
}

// Chunks splits s into word-sized pieces that concatenate back to s: each
// piece is one word with the whitespace that follows it (leading whitespace
// stays with the first piece).
func Chunks(s string) []string {
	if s == "" {
		return nil
	}
	var out []string
	start := 0
	inSpace := false
	for i, r := range s {
		isSpace := r == ' ' || r == '\n' || r == '\t' || r == '\r'
		if inSpace && !isSpace && i > 0 && strings.TrimSpace(s[start:i]) != "" {
			out = append(out, s[start:i])
			start = i
		}
		inSpace = isSpace
	}
	return append(out, s[start:])
}

func tokens(s string) int { return (len(s) + 3) / 4 }

func inputTokens(req llm.Request) int {
	n := 0
	for _, m := range req.Messages {
		n += len(m.Content)
		for _, tc := range m.ToolCalls {
			n += len(tc.Name) + len(tc.Input)
		}
	}
	return (n + 3) / 4
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		if err := ctx.Err(); err != nil {
			return ctxError(err)
		}
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctxError(ctx.Err())
	case <-t.C:
		return nil
	}
}

// ctxError maps a context error: deadlines become a timeout ProviderError,
// cancellation is returned as is.
func ctxError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &llm.ProviderError{Provider: ProviderName, Message: "model call timed out", Timeout: true}
	}
	return err
}
