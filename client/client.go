// Package client is the Go client of the Stello API: typed methods for
// every REST route, turns as values and as Server-Sent Event streams that
// resume by themselves when the connection drops, and a WebSocket
// connection with typed messages.
//
//	c := client.New("http://127.0.0.1:8080", apiKey)
//	sp, err := c.CreateSpace(ctx, client.SpaceInput{Label: "Notes"})
//	tree, err := c.Tree(ctx, sp.ID)
//	res, err := c.Turn(ctx, sp.ID, tree.ID, "Hello")
//
// Errors answered by the server are *Error values; compare their codes
// with errors.Is and the Err… sentinels.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Client talks to one Stello server as one user. It is safe for
// concurrent use.
type Client struct {
	base   string
	key    string
	hc     *http.Client
	resume int           // stream resumptions allowed per stream
	wait   time.Duration // first wait before a resumption
	dialer *websocket.Dialer
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends requests with hc (default: a client without a
// timeout, over http.DefaultTransport: deadlines come from the contexts
// passed to each call). Many concurrent calls to one server want a
// transport that keeps as many idle connections (net/http keeps 2 per
// host by default, so the others are opened and closed on every call):
//
//	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
//	c := client.New(baseURL, apiKey, client.WithHTTPClient(&http.Client{Transport: tr}))
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithDialer opens WebSockets with a copy of d (its buffer sizes, TLS
// configuration, proxy, handshake timeout…; default: a dialer with a 30s
// handshake timeout). Dial always offers the subprotocol stello.v1.
func WithDialer(d *websocket.Dialer) Option { return func(c *Client) { c.dialer = d } }

// WithResume sets how many times a stream may resume after its connection
// dropped (default 5; 0 disables resuming) and the wait before the first
// resumption (default 100ms, doubled each time, at most 5s).
func WithResume(attempts int, wait time.Duration) Option {
	return func(c *Client) { c.resume, c.wait = attempts, wait }
}

// New returns a client of the server at baseURL (e.g.
// "http://127.0.0.1:8080") using apiKey.
func New(baseURL, apiKey string, opts ...Option) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), key: apiKey, hc: &http.Client{}, resume: 5, wait: 100 * time.Millisecond}
	for _, o := range opts {
		o(c)
	}
	return c
}

// request is one REST call.
type request struct {
	method string
	path   string
	query  url.Values
	header http.Header
	body   any
}

func (c *Client) newRequest(ctx context.Context, r request) (*http.Request, error) {
	var rd io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("stello: encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("stello: %w", err)
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	if c.key != "" {
		req.Header.Set("X-API-Key", c.key)
	}
	return req, nil
}

// send performs a request and returns the response when its status is
// want; any other status becomes an *Error.
func (c *Client) send(ctx context.Context, r request, want int) (*http.Response, error) {
	req, err := c.newRequest(ctx, r)
	if err != nil {
		return nil, err
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("stello: %s %s: %w", r.method, r.path, err)
	}
	if res.StatusCode != want {
		defer res.Body.Close()
		return nil, readError(res)
	}
	return res, nil
}

// call performs a request and decodes the JSON answer into out (when not
// nil).
func (c *Client) call(ctx context.Context, r request, want int, out any) (http.Header, error) {
	res, err := c.send(ctx, r, want)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if out != nil {
		if err := json.NewDecoder(res.Body).Decode(out); err != nil {
			return nil, fmt.Errorf("stello: %s %s: decode the answer: %w", r.method, r.path, err)
		}
	}
	// Read to the end (the decoder stops after the value, before the
	// chunked body's last chunk), or the transport would close the
	// connection instead of keeping it for the next call.
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
	return res.Header, nil
}

// readError turns an error response into an *Error.
func readError(res *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	e := &Error{Status: res.StatusCode}
	if err := json.Unmarshal(b, e); err != nil || e.Code == "" {
		e.Code = "HTTP_" + strconv.Itoa(res.StatusCode)
		e.Message = strings.TrimSpace(string(b))
		if e.Message == "" {
			e.Message = http.StatusText(res.StatusCode)
		}
	}
	if s, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

func esc(s string) string { return url.PathEscape(s) }

func spacePath(spaceID string) string { return "/spaces/" + esc(spaceID) }

func sessionPath(spaceID, sessionID string) string {
	return spacePath(spaceID) + "/sessions/" + esc(sessionID)
}

func turnPath(spaceID, sessionID, turnID string) string {
	return sessionPath(spaceID, sessionID) + "/turns/" + esc(turnID)
}

// Health returns nil when the server process is up (GET /healthz).
func (c *Client) Health(ctx context.Context) error {
	_, err := c.call(ctx, request{method: "GET", path: "/healthz"}, http.StatusOK, nil)
	return err
}

// Ready returns nil when the server's database answers (GET /readyz), else
// an *Error with code UNAVAILABLE.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.call(ctx, request{method: "GET", path: "/readyz"}, http.StatusOK, nil)
	return err
}

// OpenAPI returns the server's OpenAPI 3.1 document (GET /openapi.json).
func (c *Client) OpenAPI(ctx context.Context) (json.RawMessage, error) {
	var doc json.RawMessage
	_, err := c.call(ctx, request{method: "GET", path: "/openapi.json"}, http.StatusOK, &doc)
	return doc, err
}

// Metrics returns the server's Prometheus metrics in text format (GET
// /metrics; not served there when the server has an admin listener).
func (c *Client) Metrics(ctx context.Context) (string, error) {
	res, err := c.send(ctx, request{method: "GET", path: "/metrics", header: http.Header{"Accept": {"text/plain"}}}, http.StatusOK)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return "", fmt.Errorf("stello: read metrics: %w", err)
	}
	return string(b), nil
}

// CreateSpace creates a space and its root session.
func (c *Client) CreateSpace(ctx context.Context, in SpaceInput) (*Space, error) {
	var sp Space
	_, err := c.call(ctx, request{method: "POST", path: "/spaces", body: in}, http.StatusCreated, &sp)
	return &sp, err
}

// ListSpaces returns the caller's spaces, oldest first.
func (c *Client) ListSpaces(ctx context.Context) ([]Space, error) {
	var out []Space
	_, err := c.call(ctx, request{method: "GET", path: "/spaces"}, http.StatusOK, &out)
	return out, err
}

// GetSpace returns a space.
func (c *Client) GetSpace(ctx context.Context, spaceID string) (*Space, error) {
	var sp Space
	_, err := c.call(ctx, request{method: "GET", path: spacePath(spaceID)}, http.StatusOK, &sp)
	return &sp, err
}

// UpdateSpace changes the fields set in p.
func (c *Client) UpdateSpace(ctx context.Context, spaceID string, p SpacePatch) (*Space, error) {
	var sp Space
	_, err := c.call(ctx, request{method: "PATCH", path: spacePath(spaceID), body: p.body()}, http.StatusOK, &sp)
	return &sp, err
}

// DeleteSpace deletes a space with all its sessions and data.
func (c *Client) DeleteSpace(ctx context.Context, spaceID string) error {
	_, err := c.call(ctx, request{method: "DELETE", path: spacePath(spaceID)}, http.StatusNoContent, nil)
	return err
}

// Tree returns the space's session tree, from its root session.
func (c *Client) Tree(ctx context.Context, spaceID string) (*TreeNode, error) {
	var t TreeNode
	_, err := c.call(ctx, request{method: "GET", path: spacePath(spaceID) + "/sessions"}, http.StatusOK, &t)
	return &t, err
}

// Session returns a session's metadata.
func (c *Client) Session(ctx context.Context, spaceID, sessionID string) (*SessionMeta, error) {
	var m SessionMeta
	_, err := c.call(ctx, request{method: "GET", path: sessionPath(spaceID, sessionID)}, http.StatusOK, &m)
	return &m, err
}

// Messages returns a session's messages, oldest first: at most limit of
// them (0: all) after skipping offset.
func (c *Client) Messages(ctx context.Context, spaceID, sessionID string, limit, offset int) ([]Message, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	var out []Message
	_, err := c.call(ctx, request{method: "GET", path: sessionPath(spaceID, sessionID) + "/messages", query: q}, http.StatusOK, &out)
	return out, err
}

// Fork creates a child of a session.
func (c *Client) Fork(ctx context.Context, spaceID, sessionID string, o ForkOptions) (*SessionMeta, error) {
	var m SessionMeta
	_, err := c.call(ctx, request{method: "POST", path: sessionPath(spaceID, sessionID) + "/fork", body: o}, http.StatusCreated, &m)
	return &m, err
}

// Archive archives a session (not the root).
func (c *Client) Archive(ctx context.Context, spaceID, sessionID string) (*SessionMeta, error) {
	var m SessionMeta
	_, err := c.call(ctx, request{method: "POST", path: sessionPath(spaceID, sessionID) + "/archive"}, http.StatusOK, &m)
	return &m, err
}

// Consolidate summarises the session into its memory now and returns the
// new memory.
func (c *Client) Consolidate(ctx context.Context, spaceID, sessionID string) (*string, error) {
	var out content
	_, err := c.call(ctx, request{method: "POST", path: sessionPath(spaceID, sessionID) + "/consolidate"}, http.StatusOK, &out)
	return out.Content, err
}

// Integrate writes the synthesis of the space's sessions into the root's
// memory and an insight into each active child.
func (c *Client) Integrate(ctx context.Context, spaceID string) (*Integration, error) {
	var out Integration
	_, err := c.call(ctx, request{method: "POST", path: spacePath(spaceID) + "/integrate"}, http.StatusOK, &out)
	return &out, err
}

// Slot reads a session's data slot; nil when nothing was ever written.
func (c *Client) Slot(ctx context.Context, spaceID, sessionID string, slot Slot) (*string, error) {
	var out content
	_, err := c.call(ctx, request{method: "GET", path: sessionPath(spaceID, sessionID) + "/" + string(slot)}, http.StatusOK, &out)
	return out.Content, err
}

// SetSlot writes a session's system, consolidate or integrate prompt.
func (c *Client) SetSlot(ctx context.Context, spaceID, sessionID string, slot Slot, value string) (*string, error) {
	var out content
	_, err := c.call(ctx, request{method: "PUT", path: sessionPath(spaceID, sessionID) + "/" + string(slot),
		body: content{Content: &value}}, http.StatusOK, &out)
	return out.Content, err
}

// IfBusy says what a turn does when its session already has one running
// or queued.
type IfBusy string

// The IfBusy policies.
const (
	IfBusyEnqueue   IfBusy = "enqueue"   // wait in arrival order (the server's default)
	IfBusyReject    IfBusy = "reject"    // fail at once with SESSION_BUSY
	IfBusyInterrupt IfBusy = "interrupt" // cancel the running and queued turns, then run
)

// TurnOption tunes a turn.
type TurnOption func(*turnOpts)

type turnOpts struct {
	key    string
	ifBusy IfBusy
}

// WithIdempotencyKey makes a repeat of the turn with the same key (within
// 24 hours, on the same session) return the first one's result instead of
// running the model again.
func WithIdempotencyKey(key string) TurnOption { return func(o *turnOpts) { o.key = key } }

// WithIfBusy sets what happens when the session is busy.
func WithIfBusy(p IfBusy) TurnOption { return func(o *turnOpts) { o.ifBusy = p } }

func turnRequest(spaceID, sessionID, input string, opts []TurnOption, sse bool) request {
	var o turnOpts
	for _, f := range opts {
		f(&o)
	}
	r := request{method: "POST", path: sessionPath(spaceID, sessionID) + "/turn", body: map[string]string{"input": input}, header: http.Header{}}
	if o.ifBusy != "" {
		r.query = url.Values{"ifBusy": {string(o.ifBusy)}}
	}
	if o.key != "" {
		r.header.Set("Idempotency-Key", o.key)
	}
	if sse {
		r.header.Set("Accept", "text/event-stream")
	}
	return r
}

// Turn runs a turn and returns its result, with its turn id.
func (c *Client) Turn(ctx context.Context, spaceID, sessionID, input string, opts ...TurnOption) (*TurnResult, error) {
	var res TurnResult
	h, err := c.call(ctx, turnRequest(spaceID, sessionID, input, opts, false), http.StatusOK, &res)
	if err != nil {
		return nil, err
	}
	if res.TurnID == "" {
		res.TurnID = h.Get("Stello-Turn-Id")
	}
	return &res, nil
}

// GetTurn returns a turn of a session.
func (c *Client) GetTurn(ctx context.Context, spaceID, sessionID, turnID string) (*Turn, error) {
	var t Turn
	_, err := c.call(ctx, request{method: "GET", path: turnPath(spaceID, sessionID, turnID)}, http.StatusOK, &t)
	return &t, err
}

// CancelTurn cancels a queued or running turn. The returned turn's state
// is "cancelled", or "completed" when the turn committed first.
func (c *Client) CancelTurn(ctx context.Context, spaceID, sessionID, turnID string) (*Turn, error) {
	var t Turn
	_, err := c.call(ctx, request{method: "POST", path: turnPath(spaceID, sessionID, turnID) + "/cancel"}, http.StatusAccepted, &t)
	return &t, err
}

// errStreamEnded is returned when a stream ended without end or error and
// could not be resumed.
var errStreamEnded = errors.New("stello: the stream ended before the turn did")
