// Package provutil holds helpers shared by the HTTP model providers: error
// classification, secret scrubbing and small conversions.
package provutil

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/stellohq/stello/llm"
)

// maxMessageLen bounds ProviderError.Message (in runes).
const maxMessageLen = 300

var (
	secretPatterns = []*regexp.Regexp{
		// OpenAI / Anthropic style keys, including masked echoes such as
		// "sk-abc1****wxyz".
		regexp.MustCompile(`\bsk-[A-Za-z0-9_\-*.]{6,}`),
		regexp.MustCompile(`(?i)(bearer\s+)[A-Za-z0-9_\-.~+/=*]+`),
		regexp.MustCompile(`(?i)((?:x-api-key|api[_-]?key)["']?\s*[:=]\s*["']?)[^\s"',;}]+`),
	}
	spaces = regexp.MustCompile(`\s+`)
)

// CleanMessage makes a provider or transport error text safe and short for a
// ProviderError: secrets (the configured key and anything that looks like a
// key) are redacted, whitespace is collapsed and the text is truncated.
func CleanMessage(msg string, secrets ...string) string {
	for _, s := range secrets {
		if s = strings.TrimSpace(s); s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	for i, re := range secretPatterns {
		if i == 0 {
			msg = re.ReplaceAllString(msg, "[redacted]")
			continue
		}
		msg = re.ReplaceAllString(msg, "${1}[redacted]")
	}
	msg = strings.TrimSpace(spaces.ReplaceAllString(msg, " "))
	if utf8.RuneCountInString(msg) > maxMessageLen {
		r := []rune(msg)
		msg = string(r[:maxMessageLen]) + "…"
	}
	return msg
}

// ContextError maps err to the error a provider returns when the failure is
// explained by ctx or by a timeout: a *llm.ProviderError with Timeout set for
// deadlines and network timeouts, or an error wrapping context.Canceled when
// the caller canceled. It returns nil for any other failure.
func ContextError(ctx context.Context, provider string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			return Timeout(provider)
		}
		return fmt.Errorf("%s: call canceled: %w", provider, ctxErr)
	}
	var netErr net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return Timeout(provider)
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: call canceled: %w", provider, err)
	}
	return nil
}

// Timeout returns the ProviderError for a call that exceeded its deadline.
func Timeout(provider string) *llm.ProviderError {
	return &llm.ProviderError{Provider: provider, Message: "model call timed out", Timeout: true}
}

// StatusMessage picks the best description of an HTTP error: the provider's
// message, else its raw body, else the status text.
func StatusMessage(status int, providerMsg, rawBody string) string {
	if m := strings.TrimSpace(providerMsg); m != "" {
		return m
	}
	if b := strings.TrimSpace(rawBody); b != "" {
		return b
	}
	if t := http.StatusText(status); t != "" {
		return t
	}
	return "request failed"
}

// BodyMessage extracts a human-readable error from an HTTP error body:
// the usual JSON error fields ("error.message", "error", "message",
// "detail") or the plain text itself.
func BodyMessage(body []byte) string {
	body = []byte(strings.TrimSpace(string(body)))
	if len(body) == 0 {
		return ""
	}
	if json.Valid(body) {
		for _, path := range []string{"error.message", "error", "message", "detail", "error.type"} {
			if r := gjson.GetBytes(body, path); r.Exists() && r.Type == gjson.String && strings.TrimSpace(r.Str) != "" {
				return r.Str
			}
		}
		return string(body)
	}
	return htmlTags.ReplaceAllString(string(body), " ")
}

var htmlTags = regexp.MustCompile(`<[^>]*>`)

// IsJSON reports whether a Content-Type names JSON.
func IsJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// IsEventStream reports whether a Content-Type names Server-Sent Events.
func IsEventStream(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "text/event-stream"
}

// ReadBody reads at most 8 KiB of an error response body; nil-safe.
func ReadBody(res *http.Response) []byte {
	if res == nil || res.Body == nil {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(res.Body, 8<<10))
	return b
}

// ToolInput normalizes tool-call arguments produced by a model into valid
// JSON: empty becomes {}, invalid JSON is kept as a JSON string so the
// message can still be stored and shown to the model.
func ToolInput(args string) json.RawMessage {
	args = strings.TrimSpace(args)
	if args == "" {
		return json.RawMessage(`{}`)
	}
	if json.Valid([]byte(args)) {
		return json.RawMessage(args)
	}
	b, _ := json.Marshal(args)
	return json.RawMessage(b)
}

// Arguments renders tool-call input for the wire: empty or invalid input
// becomes {}.
func Arguments(in json.RawMessage) string {
	s := strings.TrimSpace(string(in))
	if s == "" || !json.Valid([]byte(s)) {
		return "{}"
	}
	return s
}

// SchemaObject decodes a tool's JSON-Schema parameters into a map whose
// values stay raw JSON, so numbers are sent exactly as given. Empty input
// yields an empty object schema.
func SchemaObject(params json.RawMessage) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	if len(strings.TrimSpace(string(params))) == 0 || string(params) == "null" {
		out["type"] = json.RawMessage(`"object"`)
		out["properties"] = json.RawMessage(`{}`)
		return out, nil
	}
	if err := json.Unmarshal(params, &out); err != nil {
		return nil, fmt.Errorf("tool parameters must be a JSON object: %w", err)
	}
	if _, ok := out["type"]; !ok {
		out["type"] = json.RawMessage(`"object"`)
	}
	return out, nil
}

// DeltaSink wraps a caller's onDelta so that errors it returns can be told
// apart from provider failures.
type DeltaSink struct {
	fn  func(llm.Delta) error
	err error
}

// NewDeltaSink returns a sink calling fn (which may be nil).
func NewDeltaSink(fn func(llm.Delta) error) *DeltaSink { return &DeltaSink{fn: fn} }

// Emit passes d to the callback and remembers the callback's error.
func (s *DeltaSink) Emit(d llm.Delta) error {
	if s.fn == nil || s.err != nil {
		return s.err
	}
	s.err = s.fn(d)
	return s.err
}

// Err is the error returned by the callback, if any.
func (s *DeltaSink) Err() error { return s.err }

// finishWait and finishBytes bound FinishBody.
const (
	finishWait  = 100 * time.Millisecond
	finishBytes = 4 << 10
)

// FinishBody reads what is left of a stream that ended well (the end of its
// chunked encoding, already on its way), so the transport can keep the
// connection: net/http closes a connection whose response body was closed
// before its end, and the next call pays a new dial. A server that sends
// more than finishBytes, or nothing for finishWait, costs the connection,
// not the call: cancel (the call's context) ends the read.
func FinishBody(body io.Reader, cancel context.CancelFunc) {
	t := time.AfterFunc(finishWait, cancel)
	defer t.Stop()
	_, _ = io.Copy(io.Discard, io.LimitReader(body, finishBytes))
}

// HTTPClient is the default client of the providers: http.DefaultTransport
// keeps only two idle connections per host, so a server with hundreds of
// turns in flight to one model endpoint would dial a new connection for
// most calls. It keeps up to maxIdleConns, each closed after 90 s unused:
// a server whose turns in flight outnumber the connections it may keep
// dials again for the excess whenever they end together. A request
// (headers and a body of up to WriteBufferBytes) goes out in one write:
// see inMemoryBody.
func HTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = maxIdleConns
	t.MaxIdleConnsPerHost = maxIdleConns
	t.WriteBufferSize = WriteBufferBytes
	return &http.Client{Transport: inMemoryBody{t}}
}

// maxIdleConns bounds the idle connections of the default client, to all
// model endpoints together and to each.
const maxIdleConns = 4096

// WriteBufferBytes is the default client's write buffer per connection: a
// model request with about 340 turns of history fits, headers included.
// A larger request goes out in more writes, and net/http copies its body
// through a buffer it allocates for that request.
const WriteBufferBytes = 64 << 10

// inMemoryBody hands the transport a request's body as GetBody makes it
// (the SDKs' GetBody returns the encoded bytes in a bytes.Reader). The SDKs
// wrap each attempt's body in a reader of their own, which net/http cannot
// tell is in memory, so it flushes the headers in a write of their own
// before the body: one more system call per model call, on both ends.
type inMemoryBody struct{ next http.RoundTripper }

func (t inMemoryBody) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.GetBody == nil || req.Body == nil || req.Body == http.NoBody {
		return t.next.RoundTrip(req)
	}
	body, err := req.GetBody()
	if err != nil {
		return t.next.RoundTrip(req)
	}
	// A RoundTripper closes the body it was given, and must not modify
	// the request: a shallow copy carries the fresh body.
	_ = req.Body.Close()
	r := *req
	r.Body = body
	return t.next.RoundTrip(&r)
}

// MaxResponseBytes bounds a whole (non-streamed) provider answer read into
// memory; a larger one is a provider error, not a server out of memory.
const MaxResponseBytes = 32 << 20
