package transport_test

// Support for the fuzz targets of fuzz_rest_test.go and fuzz_ws_test.go: one
// real stack per fuzz target (and per fuzz worker process), and the
// properties every answer to untrusted input must have.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/stellohq/stello/internal/testutil"
)

// fzHTTP bounds every fuzz request generously: a request that hangs fails
// the input instead of the whole run.
var fzHTTP = &http.Client{Timeout: 30 * time.Second}

// fzEnv is a whole server over the throwaway PostgreSQL, shared by every
// input of one fuzz target, with one user owning one space.
type fzEnv struct {
	st      *testutil.Stack
	key     string
	spaceID string
	rootID  string

	mu       sync.Mutex
	turnSeq  atomic.Int64
	turnSpc  string // space whose root session takes the turns
	turnRoot string
}

// newFzEnv builds the stack once for the fuzz target f.
func newFzEnv(f *testing.F) *fzEnv {
	f.Helper()
	st := testutil.NewStack(f, testutil.StackOptions{})
	_, key := st.User(f, "fuzz")
	e := &fzEnv{st: st, key: key}
	sp, root, err := e.newSpace("fuzz space")
	if err != nil {
		f.Fatalf("create the fuzz space: %v", err)
	}
	e.spaceID, e.rootID = sp, root
	e.turnSpc, e.turnRoot = sp, root
	return e
}

// newSpace creates a space and returns its id and root session id.
func (e *fzEnv) newSpace(label string) (string, string, error) {
	r := e.do(http.MethodPost, "/spaces", []byte(`{"label":`+strconvQuote(label)+`}`), nil)
	if r.err != nil {
		return "", "", r.err
	}
	var sp struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(r.body, &sp); err != nil || sp.ID == "" {
		return "", "", &fzErr{"create space answered " + r.String()}
	}
	r = e.do(http.MethodGet, "/spaces/"+sp.ID+"/sessions", nil, nil)
	var tree struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(r.body, &tree); err != nil || tree.ID == "" {
		return "", "", &fzErr{"tree answered " + r.String()}
	}
	return sp.ID, tree.ID, nil
}

// turnTarget returns the space and session that takes the next fuzzed turn:
// a fresh space every 200 turns, so that a long fuzz run does not make every
// turn assemble an ever longer history.
func (e *fzEnv) turnTarget() (string, string, error) {
	n := e.turnSeq.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if n%200 == 0 {
		sp, root, err := e.newSpace("fuzz turns")
		if err != nil {
			return "", "", err
		}
		e.turnSpc, e.turnRoot = sp, root
	}
	return e.turnSpc, e.turnRoot, nil
}

type fzErr struct{ s string }

func (e *fzErr) Error() string { return e.s }

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// fzResp is a fully read answer.
type fzResp struct {
	method, path string
	sent         []byte // the request body
	status       int
	header       http.Header
	body         []byte
	err          error
}

func (r fzResp) String() string {
	sent := ""
	if r.sent != nil {
		s := r.sent
		if len(s) > 300 {
			s = append(s[:300:300], "…"...)
		}
		sent = fmt.Sprintf(" %q", s)
	}
	if r.err != nil {
		return r.method + " " + r.path + sent + ": " + r.err.Error()
	}
	b := r.body
	if len(b) > 300 {
		b = append(b[:300:300], "…"...)
	}
	return r.method + " " + r.path + sent + " → " + http.StatusText(r.status) + " " + string(b)
}

// do sends a request as the fuzz user; hdr overrides or adds headers (an
// empty value removes one). path is sent as written (already escaped).
func (e *fzEnv) do(method, path string, body []byte, hdr map[string]string) fzResp {
	out := fzResp{method: method, path: path, sent: body}
	u, err := url.Parse(e.st.URL + path)
	if err != nil {
		out.err = err
		return out
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u.String(), rd)
	if err != nil {
		out.err = err
		return out
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-API-Key", e.key)
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	res, err := fzHTTP.Do(req)
	if err != nil {
		out.err = err
		return out
	}
	defer res.Body.Close()
	out.status, out.header = res.StatusCode, res.Header
	out.body, out.err = io.ReadAll(res.Body)
	return out
}

// fzDocumented are the REST error codes of the contract, by status. 500
// INTERNAL is documented too, as a bug: the fuzz targets treat it as one.
var fzDocumented = map[int][]string{
	400: {"BAD_REQUEST"}, 401: {"UNAUTHORIZED"}, 403: {"FORBIDDEN"}, 404: {"NOT_FOUND"},
	405: {"METHOD_NOT_ALLOWED"}, 409: {"SESSION_ARCHIVED", "SESSION_BUSY", "CANCELLED", "CONFLICT"},
	413: {"PAYLOAD_TOO_LARGE"}, 429: {"BUSY"}, 502: {"LLM_ERROR"}, 503: {"UNAVAILABLE"}, 504: {"TIMEOUT"},
}

// fzWSCodes are the WebSocket error codes of the contract, less
// HANDLER_ERROR ("anything else"), which untrusted input must never cause.
var fzWSCodes = map[string]bool{
	"PARSE_ERROR": true, "UNKNOWN_TYPE": true, "ALREADY_ENTERED": true, "NOT_ENTERED": true,
	"BAD_REQUEST": true, "NOT_FOUND": true, "SESSION_ARCHIVED": true, "SESSION_BUSY": true,
	"CANCELLED": true, "CONFLICT": true, "BUSY": true, "LLM_ERROR": true, "TIMEOUT": true,
}

// fzInternals matches what an error message must never show: Go types and
// struct fields, SQL states, stack traces.
var fzInternals = regexp.MustCompile(`Go (struct|value|type)|of type [*\[\]]*(string|int|int64|float64|bool|map|struct|json)|SQLSTATE|goroutine [0-9]|\.go:[0-9]|\bpgx\b|\bjson: `)

// fzCheckError checks an error answer: a documented status and code, the
// body exactly {"error", "code"} with a message free of internals. It
// returns the code and message.
func fzCheckError(t *testing.T, r fzResp) (string, string) {
	t.Helper()
	if r.status == http.StatusInternalServerError {
		t.Fatalf("500 for untrusted input: %s", r)
	}
	codes, ok := fzDocumented[r.status]
	if !ok {
		t.Fatalf("undocumented error status %d: %s", r.status, r)
	}
	if ct := r.header.Get("Content-Type"); !strings.Contains(ct, "application/json") {
		t.Fatalf("error answer is %q, not JSON: %s", ct, r)
	}
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("error body is not a JSON object (%v): %s", err, r)
	}
	code, _ := m["code"].(string)
	msg, _ := m["error"].(string)
	if len(m) != 2 || code == "" || msg == "" {
		t.Fatalf("error body is not {\"error\", \"code\"}: %s", r)
	}
	found := false
	for _, c := range codes {
		found = found || c == code
	}
	if !found {
		t.Fatalf("code %s is not documented for status %d: %s", code, r.status, r)
	}
	if fzInternals.MatchString(msg) {
		t.Fatalf("error message shows internals: %s", r)
	}
	return code, msg
}

// fzCheck checks any answer to a request whose body or query carries
// fields: success statuses from ok, else a documented error; a 400 names
// one of the fields or is about the body as a whole (not JSON, not an
// object, too deep). It returns the status.
func fzCheck(t *testing.T, r fzResp, fields []string, ok ...int) int {
	t.Helper()
	if r.err != nil {
		t.Fatalf("no answer: %s", r)
	}
	for _, s := range ok {
		if r.status == s {
			return r.status
		}
	}
	if r.status < 400 {
		t.Fatalf("unexpected status: %s", r)
	}
	_, msg := fzCheckError(t, r)
	if r.status == http.StatusBadRequest && len(fields) > 0 && !fzNamesField(msg, fields) &&
		!strings.Contains(msg, "JSON") && !strings.Contains(msg, "body") {
		t.Fatalf("400 names none of the fields %v: %s", fields, r)
	}
	return r.status
}

func fzNamesField(msg string, fields []string) bool {
	for _, f := range fields {
		if strings.Contains(msg, f) {
			return true
		}
	}
	return false
}

// fzBadStrings returns the fields among names whose JSON value in the
// object body is a string holding NUL or invalid UTF-8, or (for object
// fields) any such string or key inside. The contract rejects those with
// 400 naming the field, before anything runs.
func fzBadStrings(body []byte, names ...string) []string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(body, &raw) != nil {
		return nil
	}
	var bad []string
	for _, n := range names {
		v, ok := raw[n]
		if !ok {
			continue
		}
		if fzBadJSONValue(v) {
			bad = append(bad, n)
		}
	}
	return bad
}

// fzBadJSONValue reports whether a JSON value has a string (or key) with
// NUL or invalid UTF-8.
func fzBadJSONValue(v json.RawMessage) bool {
	if !utf8.Valid(v) {
		return true
	}
	var x any
	if json.Unmarshal(v, &x) != nil {
		return false
	}
	var walk func(any) bool
	walk = func(x any) bool {
		switch x := x.(type) {
		case string:
			return strings.ContainsRune(x, 0)
		case []any:
			for _, e := range x {
				if walk(e) {
					return true
				}
			}
		case map[string]any:
			for k, e := range x {
				if strings.ContainsRune(k, 0) || walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(x)
}

// fzCanonical reports whether id is a UUID in its one canonical spelling
// (lower case, hyphens, no braces or prefix).
func fzCanonical(id string) bool {
	u, err := uuid.Parse(id)
	return err == nil && u.String() == id
}

// fzSubst replaces the placeholders a seed may use for ids and keys known
// only at run time: $SPACE, $ROOT and $KEY; $USPACE and $UROOT (upper case);
// $NSPACE and $NROOT (without hyphens).
func (e *fzEnv) fzSubst(s string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	return strings.NewReplacer("$SPACE", e.spaceID, "$ROOT", e.rootID, "$KEY", e.key,
		"$USPACE", strings.ToUpper(e.spaceID), "$UROOT", strings.ToUpper(e.rootID),
		"$NSPACE", strings.ReplaceAll(e.spaceID, "-", ""), "$NROOT", strings.ReplaceAll(e.rootID, "-", "")).Replace(s)
}

// fzValidHeader reports whether v can be sent as a header value at all
// (net/http refuses control characters): other values never reach a server.
func fzValidHeader(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
