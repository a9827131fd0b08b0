// Package apitest checks real HTTP traffic against Stello's OpenAPI
// document: a Validator is an http.RoundTripper that validates every
// response it carries (status, headers, JSON body, and each Server-Sent
// Event of a stream) against the document's schemas, and records which
// operation answered with which status, so that a test can assert that it
// covered every route.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	legacyrouter "github.com/getkin/kin-openapi/routers/legacy"

	"github.com/stellohq/stello/transport"
)

// Doc loads and validates the embedded OpenAPI document.
func Doc(t testing.TB) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(transport.OpenAPI)
	if err != nil {
		t.Fatalf("load the OpenAPI document: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	return doc
}

// Validator validates the responses it carries against the document.
type Validator struct {
	t      testing.TB
	doc    *openapi3.T
	router routers.Router
	next   http.RoundTripper

	mu   sync.Mutex
	seen map[string]map[int]bool // operationId → statuses
}

func init() {
	// The web console's page and assets are text.
	for _, ct := range []string{"text/html", "text/css", "text/javascript"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
}

// New returns a Validator over next (http.DefaultTransport when nil).
// Validation failures are reported with t.Errorf.
func New(t testing.TB, next http.RoundTripper) *Validator {
	t.Helper()
	doc := Doc(t)
	// The router matches paths only: the document's server is "/".
	doc.Servers = nil
	r, err := legacyrouter.NewRouter(doc)
	if err != nil {
		t.Fatalf("OpenAPI router: %v", err)
	}
	if next == nil {
		next = http.DefaultTransport
	}
	return &Validator{t: t, doc: doc, router: r, next: next, seen: map[string]map[int]bool{}}
}

// Client returns an HTTP client that validates through v.
func (v *Validator) Client() *http.Client { return &http.Client{Transport: v} }

// Seen returns, for each operationId, the statuses it answered with.
func (v *Validator) Seen() map[string][]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string][]int{}
	for op, st := range v.seen {
		for s := range st {
			out[op] = append(out[op], s)
		}
		sort.Ints(out[op])
	}
	return out
}

// Mark records an exchange that did not pass through the validator (a
// WebSocket upgrade made by a dialer of its own).
func (v *Validator) Mark(operationID string, status int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen[operationID] == nil {
		v.seen[operationID] = map[int]bool{}
	}
	v.seen[operationID][status] = true
}

// Operations returns every operationId of the document.
func (v *Validator) Operations() []string {
	var out []string
	for _, item := range v.doc.Paths.Map() {
		for _, op := range item.Operations() {
			out = append(out, op.OperationID)
		}
	}
	sort.Strings(out)
	return out
}

// RoundTrip sends the request and validates the response.
func (v *Validator) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := v.next.RoundTrip(req)
	if err != nil {
		return res, err
	}
	route, params, ferr := v.router.FindRoute(req)
	if ferr != nil {
		// No documented operation: only an error answer is acceptable.
		body, rerr := io.ReadAll(res.Body)
		_ = res.Body.Close()
		res.Body = io.NopCloser(bytes.NewReader(body))
		if rerr != nil {
			return res, nil
		}
		v.checkUnrouted(req, res, body, ferr)
		return res, nil
	}
	v.Mark(route.Operation.OperationID, res.StatusCode)
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if mt == "text/event-stream" {
		// Headers and status now; each event as it is read.
		v.validate(in, res, nil, true)
		res.Body = &sseChecker{v: v, what: req.Method + " " + req.URL.Path, body: res.Body}
		return res, nil
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		v.validate(in, res, nil, true)
		return res, nil
	}
	body, rerr := io.ReadAll(res.Body)
	_ = res.Body.Close()
	res.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return res, nil // the caller sees the truncated body; nothing to validate
	}
	v.validate(in, res, body, false)
	return res, nil
}

func (v *Validator) validate(in *openapi3filter.RequestValidationInput, res *http.Response, body []byte, noBody bool) {
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, ExcludeResponseBody: noBody}
	err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: res.StatusCode, Header: res.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: opts})
	if err != nil {
		v.t.Errorf("%s %s → %d does not match the OpenAPI document: %v\nbody: %.2000s",
			in.Request.Method, in.Request.URL.Path, res.StatusCode, err, body)
	}
}

// checkUnrouted checks an answer to a request the document has no
// operation for: a 405 with Allow, or a 404, each with an Error body.
func (v *Validator) checkUnrouted(req *http.Request, res *http.Response, body []byte, ferr error) {
	what := req.Method + " " + req.URL.Path
	var re *routers.RouteError
	reason := ""
	if errors.As(ferr, &re) {
		reason = re.Reason
	}
	switch reason {
	case routers.ErrMethodNotAllowed.Error():
		v.Mark("(method not allowed)", res.StatusCode)
		if res.StatusCode != http.StatusMethodNotAllowed {
			v.t.Errorf("%s: a method the document does not have answered %d, want 405", what, res.StatusCode)
		}
		if res.Header.Get("Allow") == "" {
			v.t.Errorf("%s: 405 without an Allow header", what)
		}
	case routers.ErrPathNotFound.Error():
		// The router says "no path" for a documented path asked with a
		// method it lacks, too: the server's 405 with Allow is right then.
		v.Mark("(no such path)", res.StatusCode)
		if res.StatusCode != http.StatusNotFound && (res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") == "") {
			v.t.Errorf("%s: a path the document does not have answered %d, want 404 (or 405 with Allow)", what, res.StatusCode)
		}
	default:
		v.t.Errorf("%s: OpenAPI router: %v", what, ferr)
		return
	}
	if err := v.ValidateSchema("Error", body); err != nil {
		v.t.Errorf("%s → %d: the body is not an Error: %v\nbody: %.2000s", what, res.StatusCode, err, body)
	}
}

// ValidateSchema validates a JSON document against a schema of
// components.schemas.
func (v *Validator) ValidateSchema(name string, data []byte) error {
	ref, ok := v.doc.Components.Schemas[name]
	if !ok || ref.Value == nil {
		return fmt.Errorf("no schema %q in the document", name)
	}
	var val any
	if err := json.Unmarshal(data, &val); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return ref.Value.VisitJSON(val, openapi3.EnableJSONSchema2020(), openapi3.MultiErrors())
}

// sseSchemas names the schema of each turn event's data.
var sseSchemas = map[string]string{"start": "StreamStart", "delta": "StreamDelta", "end": "StreamEnd", "error": "Error"}

// sseChecker validates the events of a stream as the caller reads them:
// each has a known name and a data line matching its schema; start, delta
// and end carry an `id:` offset that never decreases, and start comes
// first.
type sseChecker struct {
	v    *Validator
	what string
	body io.ReadCloser

	buf    []byte
	events int
	lastID int
}

func (c *sseChecker) Read(p []byte) (int, error) {
	n, err := c.body.Read(p)
	c.buf = append(c.buf, p[:n]...)
	c.scan()
	return n, err
}

func (c *sseChecker) Close() error { return c.body.Close() }

// scan checks every complete event in the buffer.
func (c *sseChecker) scan() {
	for {
		text := strings.ReplaceAll(string(c.buf), "\r\n", "\n")
		i := strings.Index(text, "\n\n")
		if i < 0 {
			return
		}
		c.buf = []byte(text[i+2:])
		c.event(text[:i])
	}
}

func (c *sseChecker) event(block string) {
	var name, data, id string
	hasID := false
	for _, line := range strings.Split(block, "\n") {
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			name = value
		case "data":
			if data != "" {
				data += "\n"
			}
			data += value
		case "id":
			id, hasID = value, true
		}
	}
	if name == "" && data == "" {
		return // a comment or keep-alive
	}
	c.events++
	t := c.v.t
	schema, ok := sseSchemas[name]
	if !ok {
		t.Errorf("%s: SSE event %q is not documented", c.what, name)
		return
	}
	if err := c.v.ValidateSchema(schema, []byte(data)); err != nil {
		t.Errorf("%s: SSE event %s: data does not match %s: %v\ndata: %.2000s", c.what, name, schema, err, data)
	}
	if c.events == 1 && name != "start" && name != "error" {
		t.Errorf("%s: the first SSE event is %q, want start", c.what, name)
	}
	if name == "error" {
		return
	}
	if !hasID {
		t.Errorf("%s: SSE event %s has no id (offset)", c.what, name)
		return
	}
	n, err := strconv.Atoi(id)
	if err != nil || n < c.lastID {
		t.Errorf("%s: SSE event %s: id %q is not an offset at or after %d", c.what, name, id, c.lastID)
		return
	}
	c.lastID = n
}
