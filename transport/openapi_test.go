package transport_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/apitest"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/llm/openai"
	"github.com/stellohq/stello/space"
	"github.com/stellohq/stello/transport"
)

var paramRe = regexp.MustCompile(`\{[^}]*\}`)

// routeKey normalises a route to "METHOD /path/{}/…": no trailing slash,
// parameter names dropped (chi calls the session {id}, the document
// {sessionId}).
func routeKey(method, path string) string {
	if len(path) > 1 {
		path = strings.TrimSuffix(path, "/")
	}
	return method + " " + paramRe.ReplaceAllString(strings.ReplaceAll(path, "*", "{file}"), "{}")
}

// TestOpenAPIDocumentMatchesRouter walks the server's chi routes and fails
// on any route the document lacks, and on any operation of the document
// that is not routed.
func TestOpenAPIDocumentMatchesRouter(t *testing.T) {
	t.Parallel()
	st := testutil.NewStack(t, testutil.StackOptions{})
	routes, ok := st.Front.Handler().(chi.Routes)
	require.True(t, ok, "the server's handler is not a chi router")

	routed := map[string]bool{}
	require.NoError(t, chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routed[routeKey(method, route)] = true
		return nil
	}))
	documented := map[string]bool{}
	doc := apitest.Doc(t)
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[routeKey(method, path)] = true
		}
	}
	var missing, unrouted []string
	for k := range routed {
		if !documented[k] {
			missing = append(missing, k)
		}
	}
	for k := range documented {
		if !routed[k] {
			unrouted = append(unrouted, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(unrouted)
	assert.Empty(t, missing, "routed but missing from the OpenAPI document")
	assert.Empty(t, unrouted, "documented in the OpenAPI document but not routed")
	assert.NotEmpty(t, routed)
}

// TestOpenAPIServed: GET /openapi.json needs no key and serves the
// embedded document, a valid OpenAPI 3.1 document.
func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	st := testutil.NewStack(t, testutil.StackOptions{})
	res, err := restHTTP.Get(st.URL + "/openapi.json")
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Contains(t, res.Header.Get("Content-Type"), "application/json")
	assert.Equal(t, transport.OpenAPI, body)
	var doc struct {
		OpenAPI string `json:"openapi"`
	}
	require.NoError(t, json.Unmarshal(body, &doc))
	assert.Equal(t, "3.1.0", doc.OpenAPI)
	apitest.Doc(t) // loads and validates
}

// vreq is one request of the validation tour.
type vreq struct {
	c    *http.Client
	base string
	key  string
	t    *testing.T
}

func (v vreq) do(method, path string, body any, hdr ...string) (int, []byte) {
	v.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(v.t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, v.base+path, rd)
	require.NoError(v.t, err)
	if v.key != "" {
		req.Header.Set("X-API-Key", v.key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := v.c.Do(req)
	require.NoError(v.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(v.t, err)
	return res.StatusCode, b
}

func (v vreq) as(key string) vreq { v.key = key; return v }

func (v vreq) want(status int, method, path string, body any, hdr ...string) map[string]any {
	v.t.Helper()
	got, b := v.do(method, path, body, hdr...)
	require.Equal(v.t, status, got, "%s %s: %s", method, path, b)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// expect is want without stopping the test on a wrong status.
func (v vreq) expect(status int, method, path string, body any, hdr ...string) {
	v.t.Helper()
	got, b := v.do(method, path, body, hdr...)
	assert.Equal(v.t, status, got, "%s %s: %s", method, path, b)
}

// TestOpenAPIResponsesMatchDocument drives every route of the running
// stack, successes and errors, through a validator that checks each
// response (status, headers, body, every SSE event) against the document,
// then checks that every documented operation answered with success at
// least once and that every documented error status was produced.
func TestOpenAPIResponsesMatchDocument(t *testing.T) {
	t.Parallel()
	val := apitest.New(t, nil)
	st := testutil.NewStack(t, testutil.StackOptions{Transport: transport.Options{MaxBodyBytes: 64 << 10}})
	anon := vreq{c: val.Client(), base: st.URL, t: t}
	_, key := st.User(t, "alice")
	_, otherKey := st.User(t, "bob")
	c := anon.as(key)

	// Operations without a key.
	anon.want(200, "GET", "/healthz", nil)
	anon.want(200, "GET", "/", nil)
	anon.want(200, "HEAD", "/", nil)
	anon.want(200, "GET", "/console/app.js", nil)
	anon.want(200, "HEAD", "/console/console.css", nil)
	anon.want(200, "GET", "/readyz", nil)
	anon.want(200, "GET", "/metrics", nil)
	anon.want(200, "GET", "/openapi.json", nil)

	// Spaces.
	sp := c.want(201, "POST", "/spaces", map[string]any{"label": "tour", "systemPrompt": "Be brief.", "config": map[string]any{"k": 1}})
	spID := sp["id"].(string)
	S := "/spaces/" + spID
	c.want(200, "GET", "/spaces", nil)
	c.want(200, "GET", S, nil)
	c.want(200, "PATCH", S, map[string]any{"label": "tour 2", "integratePrompt": nil})
	tree := c.want(200, "GET", S+"/sessions", nil)
	root := tree["id"].(string)
	SS := S + "/sessions/" + root
	c.want(200, "GET", SS, nil)

	// Turns: JSON and SSE.
	res := c.want(200, "POST", SS+"/turn", map[string]any{"input": "hello there"})
	turnID, _ := res["turnId"].(string)
	c.want(200, "POST", SS+"/turn", map[string]any{"input": "stream please"}, "Accept", "text/event-stream")
	c.want(200, "GET", SS+"/messages?limit=2&offset=1", nil)

	// Turn objects.
	if turnID == "" {
		turnID = "00000000-0000-0000-0000-000000000000"
		t.Errorf("POST …/turn: the result has no turnId")
	}
	c.expect(200, "GET", SS+"/turns/"+turnID, nil)
	c.expect(200, "GET", SS+"/turns/"+turnID+"/stream?from=3", nil)
	c.expect(200, "GET", SS+"/turns/"+turnID+"/stream", nil, "Last-Event-ID", "5")
	c.expect(202, "POST", SS+"/turns/"+turnID+"/cancel", nil)

	// Fork, slots, memory.
	child := c.want(201, "POST", SS+"/fork", map[string]any{"label": "child", "scope": "tests", "context": "inherit"})
	CS := S + "/sessions/" + child["id"].(string)
	for _, slot := range []string{"system-prompt", "consolidate-prompt", "integrate-prompt"} {
		c.want(200, "PUT", CS+"/"+slot, map[string]any{"content": "p " + slot})
		c.want(200, "GET", CS+"/"+slot, nil)
	}
	c.want(200, "GET", CS+"/memory", nil)
	c.want(200, "GET", CS+"/insight", nil)
	c.want(200, "POST", CS+"/turn", map[string]any{"input": "child turn"})
	c.want(200, "POST", CS+"/consolidate", nil)
	c.want(200, "POST", S+"/integrate", nil)
	c.want(200, "POST", CS+"/archive", nil)

	// WebSocket: the upgrade itself does not pass through the validator.
	ws, wres, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(st.URL, "http")+S+"/ws", http.Header{"X-API-Key": {key}})
	require.NoError(t, err)
	val.Mark("websocket", wres.StatusCode)
	_ = ws.Close()
	c.want(400, "GET", S+"/ws", nil) // not an upgrade

	// Errors.
	c.want(400, "POST", "/spaces", `{"label": `)
	c.want(400, "POST", "/spaces", map[string]any{"label": 3})
	c.want(400, "GET", SS+"/messages?limit=-1", nil)
	c.want(400, "POST", SS+"/fork", map[string]any{})
	c.want(400, "POST", SS+"/turn", map[string]any{"input": ""})
	c.want(400, "PUT", SS+"/system-prompt", map[string]any{})
	c.expect(400, "POST", SS+"/turn?ifBusy=sometimes", map[string]any{"input": "x"})
	anon.want(401, "GET", "/spaces", nil)
	anon.as("sk-not-a-key").want(401, "GET", S, nil)
	anon.as(otherKey).want(403, "GET", S, nil)
	anon.as(otherKey).want(403, "GET", SS+"/messages", nil)
	c.want(404, "GET", "/spaces/not-a-uuid", nil)
	c.want(404, "GET", S+"/sessions/00000000-0000-0000-0000-000000000000", nil)
	c.want(404, "GET", SS+"/turns/00000000-0000-0000-0000-000000000000", nil)
	c.want(200, "POST", SS+"/turn?ifBusy=reject", map[string]any{"input": "ok"}, "Idempotency-Key", "k1") // idle: runs
	c.expect(409, "POST", SS+"/turn", map[string]any{"input": "another input"}, "Idempotency-Key", "k1")  // CONFLICT
	c.want(404, "GET", "/no/such/path", nil)
	c.want(405, "PATCH", "/healthz", nil)
	c.want(405, "DELETE", SS+"/turn", nil)
	c.want(409, "POST", SS+"/archive", nil)                                      // the root: CONFLICT
	c.want(409, "POST", CS+"/turn", map[string]any{"input": "archived"})         // SESSION_ARCHIVED
	c.want(409, "POST", CS+"/fork", map[string]any{"label": "from an archived"}) // SESSION_ARCHIVED
	c.want(413, "POST", "/spaces", map[string]any{"label": strings.Repeat("x", 70<<10)})
	c.want(204, "DELETE", S, nil)
	c.want(404, "GET", S, nil)

	// 429, 502, 503, 504 need stacks of their own.
	tourBusy(t, val)
	tourModelErrors(t, val)
	st.Front.Close()
	anon.want(503, "GET", "/readyz", nil)

	seen := val.Seen()
	for _, op := range val.Operations() {
		ok := false
		for _, s := range seen[op] {
			if s < 300 {
				ok = true
			}
		}
		assert.True(t, ok, "operation %s never answered with success (statuses seen: %v)", op, seen[op])
	}
	statuses := map[int]bool{}
	for _, ss := range seen {
		for _, s := range ss {
			statuses[s] = true
		}
	}
	for _, s := range []int{400, 401, 403, 404, 405, 409, 413, 429, 502, 503, 504} {
		assert.True(t, statuses[s], "no response with status %d was validated", s)
	}
}

// tourBusy produces 429 BUSY (with Retry-After): the model holds the first
// turn, one waits in the session queue, the third is refused.
func tourBusy(t *testing.T, val *apitest.Validator) {
	t.Helper()
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	mock, model := mockModel(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
			next.ServeHTTP(w, r)
		})
	})
	mock.Enqueue(mockllm.Reply{Content: "one"}, mockllm.Reply{Content: "two"})
	st := testutil.NewStack(t, testutil.StackOptions{LLM: model, Space: space.Options{SessionQueue: 1}})
	_, key := st.User(t, "carol")
	c := vreq{c: val.Client(), base: st.URL, key: key, t: t}
	sp := c.want(201, "POST", "/spaces", map[string]any{"label": "busy"})
	tree := c.want(200, "GET", "/spaces/"+sp["id"].(string)+"/sessions", nil)
	path := "/spaces/" + sp["id"].(string) + "/sessions/" + tree["id"].(string) + "/turn"

	// Three turns at once: one runs (held by the model), one waits in the
	// queue of one, the third is refused.
	done := make(chan int, 3)
	for i := range 3 {
		go func() {
			defer func() {
				if v := recover(); v != nil {
					done <- -1
				}
			}()
			req, _ := http.NewRequest("POST", st.URL+path, strings.NewReader(`{"input":"turn `+string(rune('a'+i))+`"}`))
			req.Header.Set("X-API-Key", key)
			res, err := val.Client().Do(req)
			if err != nil {
				done <- -1
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			_ = res.Body.Close()
			done <- res.StatusCode
		}()
	}
	var statuses []int
	for len(statuses) < 3 {
		select {
		case s := <-done:
			statuses = append(statuses, s)
			if s == http.StatusTooManyRequests {
				open()
			}
		case <-time.After(30 * time.Second):
			open()
			t.Fatalf("turns never answered (got %v)", statuses)
		}
	}
	assert.ElementsMatch(t, []int{200, 200, 429}, statuses)
}

// tourModelErrors produces 502 LLM_ERROR (the model fails) and 504 TIMEOUT
// (the turn exceeds its deadline), as JSON and as SSE error events.
func tourModelErrors(t *testing.T, val *apitest.Validator) {
	t.Helper()
	model := mockModelWith(t, mockllm.Config{ErrorRate: 1})
	st := testutil.NewStack(t, testutil.StackOptions{LLM: model})
	_, key := st.User(t, "dave")
	c := vreq{c: val.Client(), base: st.URL, key: key, t: t}
	sp := c.want(201, "POST", "/spaces", map[string]any{"label": "fails"})
	tree := c.want(200, "GET", "/spaces/"+sp["id"].(string)+"/sessions", nil)
	path := "/spaces/" + sp["id"].(string) + "/sessions/" + tree["id"].(string)
	c.want(502, "POST", path+"/turn", map[string]any{"input": "x"})
	// As a stream: accepted (start), then the model's failure as an error event.
	c.want(200, "POST", path+"/turn", map[string]any{"input": "x"}, "Accept", "text/event-stream")

	slow := testutil.NewStack(t, testutil.StackOptions{LLM: fake.New(fake.Config{Latency: 5 * time.Second}),
		Space: space.Options{TurnTimeout: 200 * time.Millisecond}})
	_, key = slow.User(t, "erin")
	c = vreq{c: val.Client(), base: slow.URL, key: key, t: t}
	sp = c.want(201, "POST", "/spaces", map[string]any{"label": "slow"})
	tree = c.want(200, "GET", "/spaces/"+sp["id"].(string)+"/sessions", nil)
	c.want(504, "POST", "/spaces/"+sp["id"].(string)+"/sessions/"+tree["id"].(string)+"/turn", map[string]any{"input": "x"})
}

// mockModelWith starts bench/mockllm with cfg behind httptest and returns
// the real OpenAI client pointed at it.
func mockModelWith(t *testing.T, cfg mockllm.Config) *openai.Client {
	t.Helper()
	cl := testutil.ModelClient(t, mockllm.New(cfg))
	return cl
}
