package transport_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/openai"
	"github.com/stellohq/stello/space"
	"github.com/stellohq/stello/transport"
)

// restTimeRe is the documented timestamp format: RFC 3339, UTC, milliseconds.
var restTimeRe = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)

// restHTTP bounds every request, so that a server that never answers fails
// the test that asked instead of hanging the package.
var restHTTP = &http.Client{Timeout: 60 * time.Second}

// restClient sends plain net/http requests as one user.
type restClient struct {
	t    *testing.T
	base string
	key  string
}

// restResp is a fully read response.
type restResp struct {
	Status int
	Header http.Header
	Body   []byte
}

// do sends a request. body nil sends no body; a string or []byte is sent
// raw; anything else is JSON-encoded. hdr are header name/value pairs.
func (c restClient) do(method, path string, body any, hdr ...string) restResp {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(c.t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	require.NoError(c.t, err)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("X-API-Key", c.key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := restHTTP.Do(req)
	require.NoError(c.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(c.t, err)
	return restResp{Status: res.StatusCode, Header: res.Header, Body: b}
}

func (c restClient) as(key string) restClient { return restClient{t: c.t, base: c.base, key: key} }

// ok asserts the status and decodes the JSON body into a T.
func restOK[T any](t *testing.T, r restResp, status int) T {
	t.Helper()
	require.Equal(t, status, r.Status, "body: %s", r.Body)
	require.Contains(t, r.Header.Get("Content-Type"), "application/json")
	var v T
	require.NoError(t, json.Unmarshal(r.Body, &v), "body: %s", r.Body)
	return v
}

// restErr asserts an error response {error, code} and returns its message.
func restErr(t *testing.T, r restResp, status int, code string) string {
	t.Helper()
	require.Equal(t, status, r.Status, "body: %s", r.Body)
	require.Contains(t, r.Header.Get("Content-Type"), "application/json")
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &m), "body: %s", r.Body)
	require.ElementsMatch(t, []string{"error", "code"}, restKeys(m), "body: %s", r.Body)
	require.Equal(t, code, m["code"], "body: %s", r.Body)
	msg, _ := m["error"].(string)
	require.NotEmpty(t, msg)
	return msg
}

func restKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// restEnv is a stack with one user (alice) and her client.
type restEnv struct {
	stack *testutil.Stack
	c     restClient
	uid   string
}

func newRESTEnv(t *testing.T, o testutil.StackOptions) *restEnv {
	t.Helper()
	st := testutil.NewStack(t, o)
	uid, key := st.User(t, "alice")
	return &restEnv{stack: st, c: restClient{t: t, base: st.URL, key: key}, uid: uid}
}

// user adds a user and returns a client acting as it.
func (e *restEnv) user(t *testing.T, name string) (string, restClient) {
	t.Helper()
	uid, key := e.stack.User(t, name)
	return uid, e.c.as(key)
}

// space creates a space and returns it with its root session id.
func (e *restEnv) space(t *testing.T, c restClient, body map[string]any) (transport.Space, string) {
	t.Helper()
	sp := restOK[transport.Space](t, c.do("POST", "/spaces", body), http.StatusCreated)
	tree := restOK[transport.TreeNode](t, c.do("GET", "/spaces/"+sp.ID+"/sessions", nil), http.StatusOK)
	return sp, tree.ID
}

func (e *restEnv) fork(t *testing.T, c restClient, spaceID, parent string, body map[string]any) transport.SessionMeta {
	t.Helper()
	return restOK[transport.SessionMeta](t, c.do("POST", "/spaces/"+spaceID+"/sessions/"+parent+"/fork", body), http.StatusCreated)
}

func (e *restEnv) turn(t *testing.T, c restClient, spaceID, sid, input string) transport.TurnResult {
	t.Helper()
	return restOK[transport.TurnResult](t, c.do("POST", "/spaces/"+spaceID+"/sessions/"+sid+"/turn", map[string]any{"input": input}), http.StatusOK)
}

func (e *restEnv) messages(t *testing.T, c restClient, spaceID, sid string) []transport.Message {
	t.Helper()
	return restOK[[]transport.Message](t, c.do("GET", "/spaces/"+spaceID+"/sessions/"+sid+"/messages", nil), http.StatusOK)
}

func (e *restEnv) slot(t *testing.T, c restClient, spaceID, sid, slot string) *string {
	t.Helper()
	return restOK[transport.Content](t, c.do("GET", "/spaces/"+spaceID+"/sessions/"+sid+"/"+slot, nil), http.StatusOK).Content
}

// mockModel starts bench/mockllm behind httptest, wrapped by wrap when not
// nil, and returns the real OpenAI client pointed at it.
func mockModel(t *testing.T, wrap func(http.Handler) http.Handler) (*mockllm.Server, *openai.Client) {
	t.Helper()
	mock := mockllm.New(mockllm.Config{})
	var h http.Handler = mock
	if wrap != nil {
		h = wrap(mock)
	}
	cl := testutil.ModelClient(t, h)
	return mock, cl
}

func ptr(s string) *string { return &s }

// ---------------------------------------------------------------------------

func TestRESTHealthReadyMetrics(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	anon := e.c.as("")

	h := restOK[map[string]any](t, anon.do("GET", "/healthz", nil), http.StatusOK)
	assert.Equal(t, "ok", h["status"])
	restOK[map[string]any](t, anon.do("GET", "/readyz", nil), http.StatusOK)

	sp, _ := e.space(t, e.c, map[string]any{"label": "m"})
	restOK[transport.Space](t, e.c.do("GET", "/spaces/"+sp.ID, nil), http.StatusOK)
	restErr(t, e.c.do("GET", "/spaces/"+uuid.NewString(), nil), http.StatusNotFound, "NOT_FOUND")

	r := anon.do("GET", "/metrics", nil)
	require.Equal(t, http.StatusOK, r.Status)
	assert.Contains(t, r.Header.Get("Content-Type"), "text/plain")
	body := string(r.Body)
	assert.Contains(t, body, `stello_http_requests_total{method="GET",route="/spaces/{spaceId}",status="200"} 1`)
	assert.Contains(t, body, `stello_http_requests_total{method="GET",route="/spaces/{spaceId}",status="404"} 1`)
	assert.Contains(t, body, `stello_http_requests_total{method="POST",route="/spaces",status="201"} 1`)
	assert.Contains(t, body, `stello_http_request_duration_seconds_bucket{route="/spaces/{spaceId}/sessions"`)
	assert.Contains(t, body, "stello_active_actors")
	assert.NotContains(t, body, sp.ID, "route labels must be patterns, not ids")
}

func TestRESTReadyzUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("database closed", func(t *testing.T) {
		t.Parallel()
		st := testutil.Store(t)
		e := newRESTEnv(t, testutil.StackOptions{Store: st})
		st.Close()
		restErr(t, e.c.as("").do("GET", "/readyz", nil), http.StatusServiceUnavailable, "UNAVAILABLE")
		h := restOK[map[string]any](t, e.c.as("").do("GET", "/healthz", nil), http.StatusOK)
		assert.Equal(t, "ok", h["status"], "healthz only says the process is up")
	})
	t.Run("shutting down", func(t *testing.T) {
		t.Parallel()
		e := newRESTEnv(t, testutil.StackOptions{})
		restOK[map[string]any](t, e.c.as("").do("GET", "/readyz", nil), http.StatusOK)
		e.stack.Front.Close()
		restErr(t, e.c.as("").do("GET", "/readyz", nil), http.StatusServiceUnavailable, "UNAVAILABLE")
	})
}

func TestRESTAuth(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, _ := e.space(t, e.c, map[string]any{"label": "mine"})
	key := e.c.key

	cases := []struct {
		name   string
		hdr    []string
		status int
	}{
		{"no key", nil, http.StatusUnauthorized},
		{"empty X-API-Key", []string{"X-API-Key", ""}, http.StatusUnauthorized},
		{"unknown X-API-Key", []string{"X-API-Key", "sk-not-a-real-key"}, http.StatusUnauthorized},
		{"unknown bearer", []string{"Authorization", "Bearer sk-not-a-real-key"}, http.StatusUnauthorized},
		{"basic auth is not a key", []string{"Authorization", "Basic " + key}, http.StatusUnauthorized},
		{"X-API-Key", []string{"X-API-Key", key}, http.StatusOK},
		{"Authorization: Bearer", []string{"Authorization", "Bearer " + key}, http.StatusOK},
		{"bearer lower case", []string{"Authorization", "bearer " + key}, http.StatusOK},
	}
	anon := e.c.as("")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/spaces", "/spaces/" + sp.ID, "/spaces/" + sp.ID + "/sessions"} {
				r := anon.do("GET", path, nil, tc.hdr...)
				if tc.status == http.StatusOK {
					require.Equal(t, http.StatusOK, r.Status, "%s: %s", path, r.Body)
				} else {
					restErr(t, r, tc.status, "UNAUTHORIZED")
				}
			}
		})
	}

	t.Run("auth is checked before the body", func(t *testing.T) {
		restErr(t, anon.do("POST", "/spaces", "{not json"), http.StatusUnauthorized, "UNAUTHORIZED")
		restErr(t, anon.do("POST", "/spaces/"+sp.ID+"/sessions/not-a-uuid/turn", map[string]any{}), http.StatusUnauthorized, "UNAUTHORIZED")
		spaces := restOK[[]transport.Space](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
		require.Len(t, spaces, 1)
	})

	t.Run("revoked key stops working after the cache TTL", func(t *testing.T) {
		uid, c := e.user(t, "revokee")
		restOK[[]transport.Space](t, c.do("GET", "/spaces", nil), http.StatusOK)
		n, err := e.stack.Store.RevokeKeys(context.Background(), uid)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Eventually(t, func() bool { return c.do("GET", "/spaces", nil).Status == http.StatusUnauthorized }, 5e9, 1e7)
		restErr(t, c.do("GET", "/spaces", nil), http.StatusUnauthorized, "UNAUTHORIZED")
		restErr(t, c.do("GET", "/spaces", nil, "X-API-Key", "", "Authorization", "Bearer "+c.key), http.StatusUnauthorized, "UNAUTHORIZED")
		// Other users are not affected.
		restOK[[]transport.Space](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
	})
}

func TestRESTCreateSpace(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})

	t.Run("all fields", func(t *testing.T) {
		r := e.c.do("POST", "/spaces", map[string]any{
			"label": "My Space", "systemPrompt": "You are helpful.", "consolidatePrompt": "Summarise.",
			"integratePrompt": "Integrate.", "config": map[string]any{"a": 1, "nested": map[string]any{"b": []int{1, 2}}},
		})
		m := restOK[map[string]any](t, r, http.StatusCreated)
		assert.Equal(t, []string{"config", "consolidatePrompt", "createdAt", "id", "integratePrompt", "label",
			"systemPrompt", "updatedAt", "userId"}, restKeys(m))
		require.NoError(t, uuid.Validate(m["id"].(string)))
		assert.Equal(t, e.uid, m["userId"])
		assert.Equal(t, "My Space", m["label"])
		assert.Equal(t, "You are helpful.", m["systemPrompt"])
		assert.Equal(t, "Summarise.", m["consolidatePrompt"])
		assert.Equal(t, "Integrate.", m["integratePrompt"])
		assert.Equal(t, map[string]any{"a": 1.0, "nested": map[string]any{"b": []any{1.0, 2.0}}}, m["config"])
		assert.Regexp(t, restTimeRe, m["createdAt"])
		assert.Regexp(t, restTimeRe, m["updatedAt"])
		id := m["id"].(string)

		// The same space reads back.
		got := restOK[map[string]any](t, e.c.do("GET", "/spaces/"+id, nil), http.StatusOK)
		assert.Equal(t, m, got)

		// The root session: label = space label, role main, the system prompt.
		tree := restOK[map[string]any](t, e.c.do("GET", "/spaces/"+id+"/sessions", nil), http.StatusOK)
		assert.Equal(t, []string{"children", "id", "label", "role", "sourceSessionId", "status", "turnCount"}, restKeys(tree))
		assert.Equal(t, "My Space", tree["label"])
		assert.Equal(t, "main", tree["role"])
		assert.Equal(t, "active", tree["status"])
		assert.Equal(t, 0.0, tree["turnCount"])
		assert.Nil(t, tree["sourceSessionId"])
		assert.Equal(t, []any{}, tree["children"])
		rootID := tree["id"].(string)
		require.NoError(t, uuid.Validate(rootID))

		meta := restOK[map[string]any](t, e.c.do("GET", "/spaces/"+id+"/sessions/"+rootID, nil), http.StatusOK)
		assert.Equal(t, []string{"children", "createdAt", "depth", "id", "index", "label", "lastActiveAt", "parentId",
			"role", "scope", "sourceSessionId", "status", "turnCount", "updatedAt"}, restKeys(meta))
		assert.Equal(t, rootID, meta["id"])
		assert.Nil(t, meta["parentId"])
		assert.Nil(t, meta["sourceSessionId"])
		assert.Nil(t, meta["scope"])
		assert.Equal(t, "My Space", meta["label"])
		assert.Equal(t, "main", meta["role"])
		assert.Equal(t, "active", meta["status"])
		assert.Equal(t, 0.0, meta["depth"])
		assert.Equal(t, 0.0, meta["index"])
		assert.Equal(t, 0.0, meta["turnCount"])
		assert.Equal(t, []any{}, meta["children"])
		for _, k := range []string{"createdAt", "updatedAt", "lastActiveAt"} {
			assert.Regexp(t, restTimeRe, meta[k], k)
		}

		assert.Equal(t, ptr("You are helpful."), e.slot(t, e.c, id, rootID, "system-prompt"))
		assert.Empty(t, e.messages(t, e.c, id, rootID))
	})

	t.Run("label only", func(t *testing.T) {
		m := restOK[map[string]any](t, e.c.do("POST", "/spaces", `{"label":"bare"}`), http.StatusCreated)
		assert.Nil(t, m["systemPrompt"])
		assert.Nil(t, m["consolidatePrompt"])
		assert.Nil(t, m["integratePrompt"])
		assert.Equal(t, map[string]any{}, m["config"])
		id := m["id"].(string)
		tree := restOK[transport.TreeNode](t, e.c.do("GET", "/spaces/"+id+"/sessions", nil), http.StatusOK)
		r := e.c.do("GET", "/spaces/"+id+"/sessions/"+tree.ID+"/system-prompt", nil)
		require.Equal(t, http.StatusOK, r.Status)
		assert.JSONEq(t, `{"content":null}`, string(r.Body))
	})

	t.Run("unknown fields are ignored", func(t *testing.T) {
		sp := restOK[transport.Space](t, e.c.do("POST", "/spaces", `{"label":"u","colour":"blue","id":"mine"}`), http.StatusCreated)
		assert.Equal(t, "u", sp.Label)
		require.NoError(t, uuid.Validate(sp.ID))
	})

	t.Run("label of 200 characters", func(t *testing.T) {
		label := strings.Repeat("é", 200)
		sp := restOK[transport.Space](t, e.c.do("POST", "/spaces", map[string]any{"label": label}), http.StatusCreated)
		assert.Equal(t, label, sp.Label)
	})
}

func TestRESTCreateSpaceValidation(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	cases := []struct {
		name  string
		body  string
		field string // the message must name it
	}{
		{"malformed JSON", `{"label":`, "JSON"},
		{"trailing garbage", `{"label":"x"} x`, "JSON"},
		{"array body", `["label"]`, "object"},
		{"string body", `"label"`, "object"},
		{"number body", `42`, "object"},
		{"empty body", ``, "label"},
		{"empty object", `{}`, "label"},
		{"null label", `{"label":null}`, "label"},
		{"empty label", `{"label":""}`, "label"},
		{"label too long", `{"label":"` + strings.Repeat("a", 201) + `"}`, "label"},
		{"label of wrong type", `{"label":5}`, "label"},
		{"label object", `{"label":{"x":1}}`, "label"},
		{"systemPrompt of wrong type", `{"label":"x","systemPrompt":5}`, "systemPrompt"},
		{"consolidatePrompt of wrong type", `{"label":"x","consolidatePrompt":true}`, "consolidatePrompt"},
		{"integratePrompt of wrong type", `{"label":"x","integratePrompt":[]}`, "integratePrompt"},
		{"config array", `{"label":"x","config":[1]}`, "config"},
		{"config string", `{"label":"x","config":"x"}`, "config"},
		{"config number", `{"label":"x","config":3}`, "config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := restErr(t, e.c.do("POST", "/spaces", tc.body), http.StatusBadRequest, "BAD_REQUEST")
			assert.Contains(t, msg, tc.field)
		})
	}
	spaces := restOK[[]transport.Space](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
	assert.Empty(t, spaces, "no failed request created a space")
}

func TestRESTListSpaces(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	_, bob := e.user(t, "bob")
	_, carol := e.user(t, "carol")

	var mine []string
	for i := range 4 {
		sp, _ := e.space(t, e.c, map[string]any{"label": fmt.Sprintf("a%d", i)})
		mine = append(mine, sp.ID)
		if i == 1 {
			e.space(t, bob, map[string]any{"label": "bob's"})
		}
	}
	list := restOK[[]map[string]any](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
	require.Len(t, list, 4)
	for i, m := range list {
		assert.Equal(t, mine[i], m["id"], "oldest first")
		assert.Equal(t, fmt.Sprintf("a%d", i), m["label"])
		assert.Equal(t, e.uid, m["userId"])
		assert.Regexp(t, restTimeRe, m["createdAt"])
		assert.Contains(t, m, "config")
	}
	bobs := restOK[[]transport.Space](t, bob.do("GET", "/spaces", nil), http.StatusOK)
	require.Len(t, bobs, 1)
	assert.Equal(t, "bob's", bobs[0].Label)

	r := carol.do("GET", "/spaces", nil)
	require.Equal(t, http.StatusOK, r.Status)
	assert.JSONEq(t, `[]`, string(r.Body), "an empty list is [], not null")

	// A deleted space leaves the list.
	require.Equal(t, http.StatusNoContent, e.c.do("DELETE", "/spaces/"+mine[1], nil).Status)
	list = restOK[[]map[string]any](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
	require.Len(t, list, 3)
	assert.Equal(t, []any{mine[0], mine[2], mine[3]}, []any{list[0]["id"], list[1]["id"], list[2]["id"]})
}

func TestRESTPatchSpace(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "orig", "systemPrompt": "one", "config": map[string]any{"x": 1}})
	path := "/spaces/" + sp.ID
	patch := func(t *testing.T, body any) transport.Space {
		t.Helper()
		return restOK[transport.Space](t, e.c.do("PATCH", path, body), http.StatusOK)
	}

	t.Run("label", func(t *testing.T) {
		got := patch(t, map[string]any{"label": "renamed"})
		assert.Equal(t, "renamed", got.Label)
		assert.Equal(t, ptr("one"), got.SystemPrompt, "untouched fields stay")
		assert.JSONEq(t, `{"x":1}`, string(got.Config))
		assert.Equal(t, sp.CreatedAt, got.CreatedAt)
		assert.Regexp(t, restTimeRe, got.UpdatedAt)
		assert.GreaterOrEqual(t, got.UpdatedAt, sp.UpdatedAt)
		assert.Equal(t, "renamed", restOK[transport.Space](t, e.c.do("GET", path, nil), http.StatusOK).Label)
	})

	t.Run("systemPrompt syncs the root session", func(t *testing.T) {
		got := patch(t, map[string]any{"systemPrompt": "two"})
		assert.Equal(t, ptr("two"), got.SystemPrompt)
		assert.Equal(t, ptr("two"), e.slot(t, e.c, sp.ID, root, "system-prompt"))
	})

	t.Run("config", func(t *testing.T) {
		got := patch(t, map[string]any{"config": map[string]any{"k": "v"}})
		assert.JSONEq(t, `{"k":"v"}`, string(got.Config))
		again := restOK[transport.Space](t, e.c.do("GET", path, nil), http.StatusOK)
		assert.JSONEq(t, `{"k":"v"}`, string(again.Config))
	})

	t.Run("prompts", func(t *testing.T) {
		got := patch(t, map[string]any{"consolidatePrompt": "c", "integratePrompt": "i"})
		assert.Equal(t, ptr("c"), got.ConsolidatePrompt)
		assert.Equal(t, ptr("i"), got.IntegratePrompt)
	})

	t.Run("empty patch changes nothing", func(t *testing.T) {
		before := restOK[transport.Space](t, e.c.do("GET", path, nil), http.StatusOK)
		got := patch(t, map[string]any{})
		assert.Equal(t, before.Label, got.Label)
		assert.Equal(t, before.SystemPrompt, got.SystemPrompt)
		assert.Equal(t, before.ConsolidatePrompt, got.ConsolidatePrompt)
		assert.Equal(t, before.IntegratePrompt, got.IntegratePrompt)
		assert.JSONEq(t, string(before.Config), string(got.Config))
	})

	t.Run("null prompts clear them", func(t *testing.T) {
		r := e.c.do("PATCH", path, `{"systemPrompt":null,"consolidatePrompt":null,"integratePrompt":null}`)
		m := restOK[map[string]any](t, r, http.StatusOK)
		assert.Nil(t, m["systemPrompt"])
		assert.Nil(t, m["consolidatePrompt"])
		assert.Nil(t, m["integratePrompt"])
		assert.Equal(t, "renamed", m["label"])
		assert.Nil(t, e.slot(t, e.c, sp.ID, root, "system-prompt"), "the root's system prompt is cleared too")
	})

	t.Run("null config resets it to {}", func(t *testing.T) {
		patch(t, map[string]any{"config": map[string]any{"k": "v"}})
		got := patch(t, map[string]any{"config": nil})
		assert.JSONEq(t, `{}`, string(got.Config))
	})

	t.Run("unknown fields are ignored", func(t *testing.T) {
		got := patch(t, map[string]any{"colour": "blue", "label": "renamed"})
		assert.Equal(t, "renamed", got.Label)
	})

	t.Run("invalid", func(t *testing.T) {
		before := restOK[transport.Space](t, e.c.do("GET", path, nil), http.StatusOK)
		cases := []struct {
			name, body, field string
		}{
			{"malformed", `{"label"`, "JSON"},
			{"array body", `[]`, "object"},
			{"empty label", `{"label":""}`, "label"},
			{"null label", `{"label":null}`, "label"},
			{"label of wrong type", `{"label":7}`, "label"},
			{"label too long", `{"label":"` + strings.Repeat("b", 201) + `"}`, "label"},
			{"systemPrompt of wrong type", `{"systemPrompt":5}`, "systemPrompt"},
			{"consolidatePrompt of wrong type", `{"consolidatePrompt":true}`, "consolidatePrompt"},
			{"integratePrompt of wrong type", `{"integratePrompt":{}}`, "integratePrompt"},
			{"config array", `{"config":[1]}`, "config"},
			{"config string", `{"config":"x"}`, "config"},
			{"valid label, invalid prompt", `{"label":"new","systemPrompt":1}`, "systemPrompt"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				msg := restErr(t, e.c.do("PATCH", path, tc.body), http.StatusBadRequest, "BAD_REQUEST")
				assert.Contains(t, msg, tc.field)
			})
		}
		after := restOK[transport.Space](t, e.c.do("GET", path, nil), http.StatusOK)
		assert.Equal(t, before, after, "a rejected PATCH changes nothing")
	})
}

func TestRESTDeleteSpace(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "doomed", "systemPrompt": "p"})
	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "kid"})
	e.turn(t, e.c, sp.ID, child.ID, "hello")
	other, _ := e.space(t, e.c, map[string]any{"label": "survivor"})

	r := e.c.do("DELETE", "/spaces/"+sp.ID, nil)
	require.Equal(t, http.StatusNoContent, r.Status)
	assert.Empty(t, r.Body)

	base := "/spaces/" + sp.ID
	reqs := []struct{ method, path, body string }{
		{"GET", base, ""},
		{"PATCH", base, `{"label":"x"}`},
		{"DELETE", base, ""},
		{"GET", base + "/sessions", ""},
		{"POST", base + "/integrate", ""},
	}
	for _, sid := range []string{root, child.ID} {
		s := base + "/sessions/" + sid
		reqs = append(reqs, []struct{ method, path, body string }{
			{"GET", s, ""}, {"GET", s + "/messages", ""}, {"POST", s + "/turn", `{"input":"hi"}`},
			{"POST", s + "/fork", `{"label":"x"}`}, {"POST", s + "/archive", ""}, {"POST", s + "/consolidate", ""},
			{"GET", s + "/system-prompt", ""}, {"PUT", s + "/system-prompt", `{"content":"x"}`},
			{"GET", s + "/memory", ""}, {"GET", s + "/insight", ""},
			{"GET", s + "/consolidate-prompt", ""}, {"PUT", s + "/consolidate-prompt", `{"content":"x"}`},
			{"GET", s + "/integrate-prompt", ""}, {"PUT", s + "/integrate-prompt", `{"content":"x"}`},
		}...)
	}
	for _, q := range reqs {
		var body any
		if q.body != "" {
			body = q.body
		}
		t.Run(q.method+" "+strings.ReplaceAll(q.path, base, ""), func(t *testing.T) {
			restErr(t, e.c.do(q.method, q.path, body), http.StatusNotFound, "NOT_FOUND")
		})
	}

	var n int
	pool := e.stack.Store.Pool()
	for _, table := range []string{"spaces WHERE id", "sessions WHERE space_id", "session_data WHERE space_id", "records WHERE space_id"} {
		require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table+" = $1", sp.ID).Scan(&n))
		assert.Zero(t, n, table)
	}
	list := restOK[[]transport.Space](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
	require.Len(t, list, 1)
	assert.Equal(t, other.ID, list[0].ID)
	restOK[transport.Space](t, e.c.do("GET", "/spaces/"+other.ID, nil), http.StatusOK)
}

func TestRESTNotFound(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "here"})
	unknownSpace := "/spaces/" + uuid.NewString()
	s := "/spaces/" + sp.ID

	cases := []struct{ method, path, body string }{
		{"GET", unknownSpace, ""},
		{"PATCH", unknownSpace, `{"label":"x"}`},
		{"DELETE", unknownSpace, ""},
		{"GET", unknownSpace + "/sessions", ""},
		{"POST", unknownSpace + "/integrate", ""},
		{"GET", unknownSpace + "/sessions/" + root, ""},
		{"POST", unknownSpace + "/sessions/" + root + "/turn", `{"input":"x"}`},
		{"GET", "/spaces/not-a-uuid", ""},
		{"PATCH", "/spaces/not-a-uuid", `{"label":"x"}`},
		{"DELETE", "/spaces/not-a-uuid", ""},
		{"GET", "/spaces/not-a-uuid/sessions", ""},
		{"POST", "/spaces/not-a-uuid/integrate", ""},
		{"GET", "/spaces/not-a-uuid/sessions/" + root, ""},
		{"POST", "/spaces/not-a-uuid/sessions/" + root + "/turn", `{"input":"x"}`},
		{"PUT", "/spaces/not-a-uuid/sessions/" + root + "/system-prompt", `{"content":"x"}`},
		{"GET", "/spaces/" + strings.ToUpper(sp.ID) + "x", ""},
		{"GET", s + "/nope", ""},
		{"GET", "/nope", ""},
	}
	for _, sid := range []string{"not-a-uuid", uuid.NewString(), "1"} {
		p := s + "/sessions/" + sid
		cases = append(cases, []struct{ method, path, body string }{
			{"GET", p, ""}, {"GET", p + "/messages", ""}, {"POST", p + "/turn", `{"input":"hi"}`},
			{"POST", p + "/fork", `{"label":"x"}`}, {"POST", p + "/archive", ""}, {"POST", p + "/consolidate", ""},
			{"GET", p + "/system-prompt", ""}, {"PUT", p + "/system-prompt", `{"content":"x"}`},
			{"GET", p + "/memory", ""}, {"GET", p + "/insight", ""},
			{"GET", p + "/consolidate-prompt", ""}, {"PUT", p + "/consolidate-prompt", `{"content":"x"}`},
			{"GET", p + "/integrate-prompt", ""}, {"PUT", p + "/integrate-prompt", `{"content":"x"}`},
		}...)
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			var body any
			if tc.body != "" {
				body = tc.body
			}
			restErr(t, e.c.do(tc.method, tc.path, body), http.StatusNotFound, "NOT_FOUND")
		})
	}
	tree := restOK[transport.TreeNode](t, e.c.do("GET", s+"/sessions", nil), http.StatusOK)
	assert.Empty(t, tree.Children, "no request created a session")
	assert.Empty(t, e.messages(t, e.c, sp.ID, root))
}

func TestRESTMethodNotAllowed(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "m"})
	s := "/spaces/" + sp.ID
	r := s + "/sessions/" + root
	cases := []struct{ method, path string }{
		{"DELETE", "/healthz"},
		{"POST", "/readyz"},
		{"PUT", "/metrics"},
		{"PUT", "/spaces"},
		{"DELETE", "/spaces"},
		{"POST", s},
		{"PUT", s},
		{"GET", s + "/integrate"},
		{"POST", s + "/sessions"},
		{"DELETE", r},
		{"PATCH", r},
		{"POST", r + "/messages"},
		{"GET", r + "/turn"},
		{"GET", r + "/fork"},
		{"GET", r + "/archive"},
		{"GET", r + "/consolidate"},
		{"POST", r + "/system-prompt"},
		{"PUT", r + "/memory"},
		{"PUT", r + "/insight"},
		{"DELETE", r + "/consolidate-prompt"},
		{"PATCH", r + "/integrate-prompt"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			msg := restErr(t, e.c.do(tc.method, tc.path, nil), http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
			assert.Contains(t, msg, tc.method)
		})
	}
	assert.Nil(t, e.slot(t, e.c, sp.ID, root, "memory"))
	assert.Nil(t, e.slot(t, e.c, sp.ID, root, "insight"))
}

func TestRESTTreeAndForkDefaults(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "tree", "systemPrompt": "root prompt"})

	r := e.c.do("POST", "/spaces/"+sp.ID+"/sessions/"+root+"/fork", map[string]any{"label": "a"})
	am := restOK[map[string]any](t, r, http.StatusCreated)
	assert.Equal(t, []string{"children", "createdAt", "depth", "id", "index", "label", "lastActiveAt", "parentId",
		"role", "scope", "sourceSessionId", "status", "turnCount", "updatedAt"}, restKeys(am))
	a := restOK[transport.SessionMeta](t, r, http.StatusCreated)
	require.NoError(t, uuid.Validate(a.ID))
	assert.Equal(t, ptr(root), a.ParentID)
	assert.Equal(t, ptr(root), a.SourceSessionID)
	assert.Equal(t, "a", a.Label)
	assert.Equal(t, "standard", a.Role)
	assert.Equal(t, "active", a.Status)
	assert.Nil(t, a.Scope)
	assert.Equal(t, 1, a.Depth)
	assert.Equal(t, 0, a.Index)
	assert.Equal(t, 0, a.TurnCount)
	assert.Equal(t, []string{}, a.Children)
	for _, ts := range []string{a.CreatedAt, a.UpdatedAt, a.LastActiveAt} {
		assert.Regexp(t, restTimeRe, ts)
	}

	b := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "b", "scope": "research only", "systemPrompt": "child prompt"})
	assert.Equal(t, 1, b.Index, "index increments per parent")
	assert.Equal(t, ptr("research only"), b.Scope)
	a1 := e.fork(t, e.c, sp.ID, a.ID, map[string]any{"label": "a1"})
	assert.Equal(t, 2, a1.Depth)
	assert.Equal(t, 0, a1.Index)
	assert.Equal(t, ptr(a.ID), a1.ParentID)
	assert.Equal(t, ptr(a.ID), a1.SourceSessionID)
	c := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "c", "context": "none"})
	assert.Equal(t, 2, c.Index)

	// System prompts: inherited from the parent unless given.
	assert.Equal(t, ptr("root prompt"), e.slot(t, e.c, sp.ID, a.ID, "system-prompt"))
	assert.Equal(t, ptr("child prompt"), e.slot(t, e.c, sp.ID, b.ID, "system-prompt"))
	assert.Equal(t, ptr("root prompt"), e.slot(t, e.c, sp.ID, a1.ID, "system-prompt"))
	// Changing a child's prompt later is inherited by its later children only.
	restOK[transport.Content](t, e.c.do("PUT", "/spaces/"+sp.ID+"/sessions/"+b.ID+"/system-prompt", map[string]any{"content": "b2"}), http.StatusOK)
	b1 := e.fork(t, e.c, sp.ID, b.ID, map[string]any{"label": "b1"})
	assert.Equal(t, ptr("b2"), e.slot(t, e.c, sp.ID, b1.ID, "system-prompt"))

	// The scope is stored.
	got := restOK[transport.SessionMeta](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+b.ID, nil), http.StatusOK)
	assert.Equal(t, ptr("research only"), got.Scope)
	assert.Equal(t, []string{b1.ID}, got.Children)

	rm := restOK[transport.SessionMeta](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+root, nil), http.StatusOK)
	assert.Equal(t, []string{a.ID, b.ID, c.ID}, rm.Children, "children ordered by index")

	tree := restOK[map[string]any](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions", nil), http.StatusOK)
	type node struct {
		id       string
		children []node
	}
	var walk func(m map[string]any) node
	walk = func(m map[string]any) node {
		assert.Equal(t, []string{"children", "id", "label", "role", "sourceSessionId", "status", "turnCount"}, restKeys(m))
		n := node{id: m["id"].(string)}
		for _, c := range m["children"].([]any) {
			n.children = append(n.children, walk(c.(map[string]any)))
		}
		return n
	}
	want := node{root, []node{{a.ID, []node{{a1.ID, nil}}}, {b.ID, []node{{b1.ID, nil}}}, {c.ID, nil}}}
	assert.Equal(t, want, walk(tree))
	kids := tree["children"].([]any)
	assert.Equal(t, "a", kids[0].(map[string]any)["label"])
	assert.Equal(t, "standard", kids[0].(map[string]any)["role"])
	assert.Equal(t, root, kids[0].(map[string]any)["sourceSessionId"])
}

func TestRESTForkContextAndPrompt(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "ctx"})
	e.turn(t, e.c, sp.ID, root, "first")
	e.turn(t, e.c, sp.ID, root, "second")
	parent := e.messages(t, e.c, sp.ID, root)
	require.Len(t, parent, 4)

	cases := []struct {
		name string
		body map[string]any
		want []string // role:content
	}{
		{"default is none", map[string]any{"label": "x"}, nil},
		{"none", map[string]any{"label": "x", "context": "none"}, nil},
		{"prompt", map[string]any{"label": "x", "prompt": "Welcome!"}, []string{"assistant:Welcome!"}},
		{"inherit", map[string]any{"label": "x", "context": "inherit"},
			[]string{"user:first", "assistant:" + parent[1].Content, "user:second", "assistant:" + parent[3].Content}},
		{"inherit and prompt", map[string]any{"label": "x", "context": "inherit", "prompt": "Go on."},
			[]string{"user:first", "assistant:" + parent[1].Content, "user:second", "assistant:" + parent[3].Content, "assistant:Go on."}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			child := e.fork(t, e.c, sp.ID, root, tc.body)
			var got []string
			for _, m := range e.messages(t, e.c, sp.ID, child.ID) {
				got = append(got, m.Role+":"+m.Content)
				assert.Regexp(t, restTimeRe, m.Timestamp)
			}
			assert.Equal(t, tc.want, got)
			assert.Equal(t, 0, child.TurnCount)
		})
	}
	assert.Len(t, e.messages(t, e.c, sp.ID, root), 4, "the parent is unchanged")

	// A turn in an inherited child continues from the copied history and
	// leaves the parent alone.
	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "cont", "context": "inherit"})
	e.turn(t, e.c, sp.ID, child.ID, "third")
	assert.Len(t, e.messages(t, e.c, sp.ID, child.ID), 6)
	assert.Len(t, e.messages(t, e.c, sp.ID, root), 4)
}

func TestRESTForkValidation(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "v"})
	path := "/spaces/" + sp.ID + "/sessions/" + root + "/fork"
	cases := []struct{ name, body, field string }{
		{"malformed", `{"label":"x"`, "JSON"},
		{"array body", `[{"label":"x"}]`, "object"},
		{"empty body", ``, "label"},
		{"missing label", `{"scope":"s"}`, "label"},
		{"empty label", `{"label":""}`, "label"},
		{"label too long", `{"label":"` + strings.Repeat("z", 201) + `"}`, "label"},
		{"label of wrong type", `{"label":1}`, "label"},
		{"scope of wrong type", `{"label":"x","scope":2}`, "scope"},
		{"systemPrompt of wrong type", `{"label":"x","systemPrompt":false}`, "systemPrompt"},
		{"prompt of wrong type", `{"label":"x","prompt":[]}`, "prompt"},
		{"context unknown", `{"label":"x","context":"all"}`, "context"},
		{"context of wrong type", `{"label":"x","context":1}`, "context"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := restErr(t, e.c.do("POST", path, tc.body), http.StatusBadRequest, "BAD_REQUEST")
			assert.Contains(t, msg, tc.field)
		})
	}
	tree := restOK[transport.TreeNode](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions", nil), http.StatusOK)
	assert.Empty(t, tree.Children, "no rejected fork created a session")
	// 200 characters is fine.
	e.fork(t, e.c, sp.ID, root, map[string]any{"label": strings.Repeat("z", 200)})
}

func TestRESTTurn(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "turns"})
	path := "/spaces/" + sp.ID + "/sessions/" + root
	before := restOK[transport.SessionMeta](t, e.c.do("GET", path, nil), http.StatusOK)

	r := e.c.do("POST", path+"/turn", map[string]any{"input": "hello"})
	m := restOK[map[string]any](t, r, http.StatusOK)
	assert.Equal(t, []string{"turn", "turnId"}, restKeys(m))
	assert.Equal(t, r.Header.Get("Stello-Turn-Id"), m["turnId"], "the header names the turn of the result")
	turn := m["turn"].(map[string]any)
	assert.Equal(t, []string{"finalContent", "rawResponse", "toolCallsExecuted", "toolRoundCount"}, restKeys(turn))
	assert.Equal(t, "Echo: hello", turn["finalContent"])
	assert.Equal(t, 0.0, turn["toolRoundCount"])
	assert.Equal(t, 0.0, turn["toolCallsExecuted"])
	assert.NotEmpty(t, turn["rawResponse"])

	after := restOK[transport.SessionMeta](t, e.c.do("GET", path, nil), http.StatusOK)
	assert.Equal(t, 1, after.TurnCount)
	assert.GreaterOrEqual(t, after.LastActiveAt, before.LastActiveAt)
	msgs := restOK[[]map[string]any](t, e.c.do("GET", path+"/messages", nil), http.StatusOK)
	require.Len(t, msgs, 2)
	assert.Equal(t, []string{"content", "role", "timestamp"}, restKeys(msgs[0]), "toolCalls and toolCallId are omitted when empty")
	assert.Equal(t, "user", msgs[0]["role"])
	assert.Equal(t, "hello", msgs[0]["content"])
	assert.Equal(t, "assistant", msgs[1]["role"])
	assert.Equal(t, "Echo: hello", msgs[1]["content"])
	assert.Regexp(t, restTimeRe, msgs[1]["timestamp"])

	tree := restOK[transport.TreeNode](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions", nil), http.StatusOK)
	assert.Equal(t, 1, tree.TurnCount)

	t.Run("invalid", func(t *testing.T) {
		cases := []struct{ name, body, field string }{
			{"malformed", `{"input":`, "JSON"},
			{"array body", `["hi"]`, "object"},
			{"empty body", ``, "input"},
			{"missing input", `{}`, "input"},
			{"null input", `{"input":null}`, "input"},
			{"empty input", `{"input":""}`, "input"},
			{"blank input", `{"input":"  \n "}`, "input"},
			{"input of wrong type", `{"input":5}`, "input"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				msg := restErr(t, e.c.do("POST", path+"/turn", tc.body), http.StatusBadRequest, "BAD_REQUEST")
				assert.Contains(t, msg, tc.field)
			})
			t.Run(tc.name+" streaming", func(t *testing.T) {
				r := e.c.do("POST", path+"/turn", tc.body, "Accept", "text/event-stream")
				msg := restErr(t, r, http.StatusBadRequest, "BAD_REQUEST")
				assert.Contains(t, msg, tc.field)
			})
		}
		assert.Len(t, e.messages(t, e.c, sp.ID, root), 2, "no rejected turn was persisted")
	})
}

func TestRESTTurnStream(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "sse"})
	r := e.c.do("POST", "/spaces/"+sp.ID+"/sessions/"+root+"/turn", map[string]any{"input": "stream me please"},
		"Accept", "text/event-stream")
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	assert.Equal(t, "text/event-stream", r.Header.Get("Content-Type"))

	type event struct{ name, data string }
	var evs []event
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	var cur event
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		case line == "":
			evs = append(evs, cur)
			cur = event{}
		}
	}
	require.GreaterOrEqual(t, len(evs), 3)
	require.Equal(t, "start", evs[0].name, "the first event names the turn")
	var start map[string]string
	require.NoError(t, json.Unmarshal([]byte(evs[0].data), &start))
	assert.NotEmpty(t, start["turnId"])
	assert.Equal(t, root, start["sessionId"])
	var text strings.Builder
	for _, ev := range evs[1 : len(evs)-1] {
		require.Equal(t, "delta", ev.name)
		var d map[string]string
		require.NoError(t, json.Unmarshal([]byte(ev.data), &d))
		text.WriteString(d["chunk"])
	}
	last := evs[len(evs)-1]
	require.Equal(t, "end", last.name)
	var end struct {
		Result transport.TurnResult `json:"result"`
	}
	require.NoError(t, json.Unmarshal([]byte(last.data), &end))
	require.NotNil(t, end.Result.Turn.FinalContent)
	assert.Equal(t, "Echo: stream me please", *end.Result.Turn.FinalContent)
	assert.Equal(t, *end.Result.Turn.FinalContent, text.String(), "the deltas add up to the final content")

	msgs := e.messages(t, e.c, sp.ID, root)
	require.Len(t, msgs, 2)
	assert.Equal(t, "Echo: stream me please", msgs[1].Content)
}

func TestRESTTurnWithModel(t *testing.T) {
	t.Parallel()
	mock, model := mockModel(t, nil)
	e := newRESTEnv(t, testutil.StackOptions{LLM: model})
	sp, root := e.space(t, e.c, map[string]any{"label": "model", "systemPrompt": "Be brief."})
	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "scoped", "scope": "only physics"})

	// The model forks a session through the built-in tool, then answers.
	mock.Enqueue(
		mockllm.Reply{ToolCalls: []mockllm.ToolCall{{ID: "call_1", Name: "stello_create_session", Arguments: `{"label":"sub"}`}}},
		mockllm.Reply{Content: "Done."},
	)
	res := e.turn(t, e.c, sp.ID, child.ID, "make a sub-session")
	require.NotNil(t, res.Turn.FinalContent)
	assert.Equal(t, "Done.", *res.Turn.FinalContent)
	assert.Equal(t, 1, res.Turn.ToolRoundCount)
	assert.Equal(t, 1, res.Turn.ToolCallsExecuted)
	assert.Contains(t, res.Turn.RawResponse, "Done.")

	// What the model was sent: system prompt, scope, then the input.
	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	var sent []string
	for _, m := range reqs[0].Messages {
		sent = append(sent, m.Role+":"+m.Content)
	}
	assert.Equal(t, []string{"system:Be brief.", "system:Scope of this session: only physics", "user:make a sub-session"}, sent)
	assert.Contains(t, reqs[0].Tools, "stello_create_session")

	msgs := restOK[[]map[string]any](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+child.ID+"/messages", nil), http.StatusOK)
	require.Len(t, msgs, 4)
	assert.Equal(t, "user", msgs[0]["role"])
	assert.Equal(t, "assistant", msgs[1]["role"])
	assert.Equal(t, []string{"content", "role", "timestamp", "toolCalls"}, restKeys(msgs[1]))
	calls := msgs[1]["toolCalls"].([]any)
	require.Len(t, calls, 1)
	call := calls[0].(map[string]any)
	assert.Equal(t, "call_1", call["id"])
	assert.Equal(t, "stello_create_session", call["name"])
	assert.Equal(t, map[string]any{"label": "sub"}, call["input"])
	assert.Equal(t, "tool", msgs[2]["role"])
	assert.Equal(t, "call_1", msgs[2]["toolCallId"])
	assert.Equal(t, []string{"content", "role", "timestamp", "toolCallId"}, restKeys(msgs[2]))
	assert.Equal(t, "assistant", msgs[3]["role"])
	assert.Equal(t, "Done.", msgs[3]["content"])

	meta := restOK[transport.SessionMeta](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+child.ID, nil), http.StatusOK)
	require.Len(t, meta.Children, 1)
	assert.Equal(t, 1, meta.TurnCount)
	sub := restOK[transport.SessionMeta](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+meta.Children[0], nil), http.StatusOK)
	assert.Equal(t, "sub", sub.Label)
	assert.Equal(t, 2, sub.Depth)
	assert.Contains(t, msgs[2]["content"], sub.ID, "the tool result names the new session")
}

func TestRESTMessagesPaging(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "pages"})
	for _, in := range []string{"m1", "m2", "m3"} {
		e.turn(t, e.c, sp.ID, root, in)
	}
	path := "/spaces/" + sp.ID + "/sessions/" + root + "/messages"
	all := []string{"user:m1", "assistant:Echo: m1", "user:m2", "assistant:Echo: m2", "user:m3", "assistant:Echo: m3"}
	cases := []struct {
		query string
		want  []string
	}{
		{"", all},
		{"?limit=0", all},
		{"?limit=2", all[:2]},
		{"?limit=2&offset=2", all[2:4]},
		{"?offset=5", all[5:]},
		{"?offset=6", nil},
		{"?offset=100&limit=3", nil},
		{"?limit=100", all},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			r := e.c.do("GET", path+tc.query, nil)
			msgs := restOK[[]transport.Message](t, r, http.StatusOK)
			var got []string
			for _, m := range msgs {
				got = append(got, m.Role+":"+m.Content)
			}
			assert.Equal(t, tc.want, got)
			if tc.want == nil {
				assert.JSONEq(t, `[]`, string(r.Body))
			}
		})
	}
	bad := []struct{ query, field string }{
		{"?limit=-1", "limit"},
		{"?limit=abc", "limit"},
		{"?limit=1.5", "limit"},
		{"?offset=-3", "offset"},
		{"?offset=x", "offset"},
		{"?limit=2&offset=no", "offset"},
	}
	for _, tc := range bad {
		t.Run(tc.query, func(t *testing.T) {
			msg := restErr(t, e.c.do("GET", path+tc.query, nil), http.StatusBadRequest, "BAD_REQUEST")
			assert.Contains(t, msg, tc.field)
		})
	}
}

func TestRESTArchive(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "arch"})
	base := "/spaces/" + sp.ID + "/sessions/"

	msg := restErr(t, e.c.do("POST", base+root+"/archive", nil), http.StatusConflict, "CONFLICT")
	assert.Contains(t, msg, "root")
	rm := restOK[transport.SessionMeta](t, e.c.do("GET", base+root, nil), http.StatusOK)
	assert.Equal(t, "active", rm.Status)

	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "c"})
	restOK[transport.Content](t, e.c.do("PUT", base+child.ID+"/system-prompt", map[string]any{"content": "sp"}), http.StatusOK)
	e.turn(t, e.c, sp.ID, child.ID, "before")

	r := e.c.do("POST", base+child.ID+"/archive", nil)
	m := restOK[map[string]any](t, r, http.StatusOK)
	assert.Equal(t, "archived", m["status"])
	assert.Equal(t, child.ID, m["id"])
	assert.Equal(t, 1.0, m["turnCount"])
	assert.Regexp(t, restTimeRe, m["updatedAt"])
	again := restOK[transport.SessionMeta](t, e.c.do("POST", base+child.ID+"/archive", nil), http.StatusOK)
	assert.Equal(t, "archived", again.Status, "archiving twice is harmless")

	p := base + child.ID
	writes := []struct{ name, method, path, body string }{
		{"turn", "POST", p + "/turn", `{"input":"after"}`},
		{"fork", "POST", p + "/fork", `{"label":"grandchild"}`},
		{"system-prompt", "PUT", p + "/system-prompt", `{"content":"changed"}`},
		{"consolidate-prompt", "PUT", p + "/consolidate-prompt", `{"content":"changed"}`},
		{"integrate-prompt", "PUT", p + "/integrate-prompt", `{"content":"changed"}`},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			restErr(t, e.c.do(w.method, w.path, w.body), http.StatusConflict, "SESSION_ARCHIVED")
		})
	}
	t.Run("streaming turn fails before the stream", func(t *testing.T) {
		restErr(t, e.c.do("POST", p+"/turn", `{"input":"after"}`, "Accept", "text/event-stream"), http.StatusConflict, "SESSION_ARCHIVED")
	})

	// Archived still reads, and nothing was written.
	meta := restOK[transport.SessionMeta](t, e.c.do("GET", p, nil), http.StatusOK)
	assert.Equal(t, "archived", meta.Status)
	assert.Equal(t, 1, meta.TurnCount)
	assert.Empty(t, meta.Children)
	assert.Len(t, e.messages(t, e.c, sp.ID, child.ID), 2)
	assert.Equal(t, ptr("sp"), e.slot(t, e.c, sp.ID, child.ID, "system-prompt"))
	for _, s := range []string{"memory", "insight", "consolidate-prompt", "integrate-prompt"} {
		assert.Nil(t, e.slot(t, e.c, sp.ID, child.ID, s), s)
	}
	tree := restOK[transport.TreeNode](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions", nil), http.StatusOK)
	require.Len(t, tree.Children, 1)
	assert.Equal(t, "archived", tree.Children[0].Status)

	// Siblings are unaffected.
	sib := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "sib"})
	e.turn(t, e.c, sp.ID, sib.ID, "fine")
}

func TestRESTSlots(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "slots"})
	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "c"})
	base := "/spaces/" + sp.ID + "/sessions/"

	for _, s := range []string{"system-prompt", "memory", "insight", "consolidate-prompt", "integrate-prompt"} {
		for _, sid := range []string{root, child.ID} {
			r := e.c.do("GET", base+sid+"/"+s, nil)
			require.Equal(t, http.StatusOK, r.Status)
			assert.JSONEq(t, `{"content":null}`, string(r.Body), "%s of %s is null when never written", s, sid)
		}
	}

	for _, s := range []string{"system-prompt", "consolidate-prompt", "integrate-prompt"} {
		t.Run(s, func(t *testing.T) {
			p := base + child.ID + "/" + s
			r := e.c.do("PUT", p, map[string]any{"content": "v1 " + s})
			got := restOK[map[string]any](t, r, http.StatusOK)
			assert.Equal(t, map[string]any{"content": "v1 " + s}, got)
			assert.Equal(t, ptr("v1 "+s), e.slot(t, e.c, sp.ID, child.ID, s))

			r = e.c.do("PUT", p, `{"content":""}`)
			require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
			assert.JSONEq(t, `{"content":""}`, string(r.Body))
			r = e.c.do("GET", p, nil)
			assert.JSONEq(t, `{"content":""}`, string(r.Body), `"" is stored, not null`)

			restOK[transport.Content](t, e.c.do("PUT", p, map[string]any{"content": "v2"}), http.StatusOK)
			bad := []struct{ name, body, field string }{
				{"missing content", `{}`, "content"},
				{"empty body", ``, "content"},
				{"null content", `{"content":null}`, "content"},
				{"content of wrong type", `{"content":5}`, "content"},
				{"malformed", `{"content":"x`, "JSON"},
				{"array body", `["x"]`, "object"},
			}
			for _, b := range bad {
				msg := restErr(t, e.c.do("PUT", p, b.body), http.StatusBadRequest, "BAD_REQUEST")
				assert.Contains(t, msg, b.field, b.name)
			}
			assert.Equal(t, ptr("v2"), e.slot(t, e.c, sp.ID, child.ID, s), "rejected PUTs change nothing")
			assert.Nil(t, e.slot(t, e.c, sp.ID, root, s), "slots are per session")
		})
	}
	sps := restOK[transport.Space](t, e.c.do("GET", "/spaces/"+sp.ID, nil), http.StatusOK)
	assert.Nil(t, sps.SystemPrompt, "a session's prompt is not the space's")

	// A root system prompt written through the slot is what the next fork
	// inherits.
	restOK[transport.Content](t, e.c.do("PUT", base+root+"/system-prompt", map[string]any{"content": "root sp"}), http.StatusOK)
	kid := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "k"})
	assert.Equal(t, ptr("root sp"), e.slot(t, e.c, sp.ID, kid.ID, "system-prompt"))
}

func TestRESTConsolidateIntegrate(t *testing.T) {
	t.Parallel()
	mock, model := mockModel(t, nil)
	e := newRESTEnv(t, testutil.StackOptions{LLM: model})
	sp, root := e.space(t, e.c, map[string]any{"label": "mem"})
	base := "/spaces/" + sp.ID + "/sessions/"
	child := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "c"})
	other := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "o"})

	mock.Enqueue(mockllm.Reply{Content: "Hi."})
	e.turn(t, e.c, sp.ID, child.ID, "remember the number 42")

	mock.Enqueue(mockllm.Reply{Content: "The user mentioned 42."})
	r := e.c.do("POST", base+child.ID+"/consolidate", nil)
	got := restOK[map[string]any](t, r, http.StatusOK)
	assert.Equal(t, map[string]any{"content": "The user mentioned 42."}, got)
	assert.Equal(t, ptr("The user mentioned 42."), e.slot(t, e.c, sp.ID, child.ID, "memory"))
	assert.Nil(t, e.slot(t, e.c, sp.ID, other.ID, "memory"))
	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	assert.Contains(t, reqs[1].Messages[len(reqs[1].Messages)-1].Content, "remember the number 42")

	synthesis := fmt.Sprintf(`{"synthesis":"All about 42.","insights":[{"sessionId":%q,"content":"Ask about 43."}]}`, child.ID)
	mock.Enqueue(mockllm.Reply{Content: synthesis})
	r = e.c.do("POST", "/spaces/"+sp.ID+"/integrate", nil)
	integ := restOK[map[string]any](t, r, http.StatusOK)
	assert.Equal(t, map[string]any{
		"synthesis": "All about 42.",
		"insights":  []any{map[string]any{"sessionId": child.ID, "content": "Ask about 43."}},
	}, integ)
	assert.Equal(t, ptr("All about 42."), e.slot(t, e.c, sp.ID, root, "memory"))
	assert.Equal(t, ptr("Ask about 43."), e.slot(t, e.c, sp.ID, child.ID, "insight"))
	assert.Nil(t, e.slot(t, e.c, sp.ID, other.ID, "insight"))

	// The insight is shown once in the child's next turn, then cleared.
	mock.Enqueue(mockllm.Reply{Content: "ok"})
	e.turn(t, e.c, sp.ID, child.ID, "next")
	reqs = mock.Requests()
	last := reqs[len(reqs)-1]
	var sys []string
	for _, m := range last.Messages {
		if m.Role == "system" {
			sys = append(sys, m.Content)
		}
	}
	require.Len(t, sys, 2)
	assert.Contains(t, sys[0], "The user mentioned 42.")
	assert.Contains(t, sys[1], "Ask about 43.")
	assert.Nil(t, e.slot(t, e.c, sp.ID, child.ID, "insight"))
}

func TestRESTIntegrateWithoutChildren(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "alone"})
	r := e.c.do("POST", "/spaces/"+sp.ID+"/integrate", nil)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	assert.JSONEq(t, `{"synthesis":"","insights":[]}`, string(r.Body))
	r = e.c.do("POST", "/spaces/"+sp.ID+"/sessions/"+root+"/consolidate", nil)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	assert.JSONEq(t, `{"content":null}`, string(r.Body), "nothing to consolidate leaves memory unwritten")
}

func TestRESTPayloadTooLarge(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{Transport: transport.Options{MaxBodyBytes: 256}})
	big := strings.Repeat("x", 300)
	sp, root := e.space(t, e.c, map[string]any{"label": "small"})
	base := "/spaces/" + sp.ID
	cases := []struct{ name, method, path, body string }{
		{"create space", "POST", "/spaces", `{"label":"` + big + `"}`},
		{"patch space", "PATCH", base, `{"systemPrompt":"` + big + `"}`},
		{"turn", "POST", base + "/sessions/" + root + "/turn", `{"input":"` + big + `"}`},
		{"streaming turn", "POST", base + "/sessions/" + root + "/turn", `{"input":"` + big + `"}`},
		{"fork", "POST", base + "/sessions/" + root + "/fork", `{"label":"x","prompt":"` + big + `"}`},
		{"put system-prompt", "PUT", base + "/sessions/" + root + "/system-prompt", `{"content":"` + big + `"}`},
		{"not JSON either", "POST", "/spaces", big},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.name == "streaming turn" {
				hdr = []string{"Accept", "text/event-stream"}
			}
			msg := restErr(t, e.c.do(tc.method, tc.path, tc.body, hdr...), http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")
			assert.Contains(t, msg, "256")
		})
	}
	// Nothing was written; a body under the limit still works.
	list := restOK[[]transport.Space](t, e.c.do("GET", "/spaces", nil), http.StatusOK)
	require.Len(t, list, 1)
	assert.Nil(t, list[0].SystemPrompt)
	assert.Empty(t, e.messages(t, e.c, sp.ID, root))
	assert.Nil(t, e.slot(t, e.c, sp.ID, root, "system-prompt"))
	tree := restOK[transport.TreeNode](t, e.c.do("GET", base+"/sessions", nil), http.StatusOK)
	assert.Empty(t, tree.Children)
	restOK[transport.Content](t, e.c.do("PUT", base+"/sessions/"+root+"/system-prompt", map[string]any{"content": strings.Repeat("y", 200)}), http.StatusOK)
}

// TestRESTBusy fills one session's turn queue (SessionQueue 1) while the
// model holds the first turn: of three concurrent turns exactly one is
// refused with 429 BUSY and Retry-After, and the other two complete in
// order once the model answers.
func TestRESTBusy(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	// The gate holds every model call until release, so the first turn is
	// still running whatever the machine's speed.
	mock, model := mockModel(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			next.ServeHTTP(w, r)
		})
	})
	mock.Enqueue(mockllm.Reply{Content: "one"}, mockllm.Reply{Content: "two"}, mockllm.Reply{Content: "three"})
	e := newRESTEnv(t, testutil.StackOptions{LLM: model, Space: space.Options{SessionQueue: 1}})
	sp, root := e.space(t, e.c, map[string]any{"label": "busy"})
	other := e.fork(t, e.c, sp.ID, root, map[string]any{"label": "other"})
	path := "/spaces/" + sp.ID + "/sessions/" + root + "/turn"

	type outcome struct {
		input string
		r     restResp
	}
	results := make(chan outcome, 3)
	for i := range 3 {
		input := fmt.Sprintf("turn %d", i)
		go func() {
			// do uses require, which must not run off the test goroutine.
			req, _ := http.NewRequest("POST", e.c.base+path, strings.NewReader(`{"input":"`+input+`"}`))
			req.Header.Set("X-API-Key", e.c.key)
			res, err := restHTTP.Do(req)
			if err != nil {
				results <- outcome{input, restResp{Status: -1, Body: []byte(err.Error())}}
				return
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			results <- outcome{input, restResp{Status: res.StatusCode, Header: res.Header, Body: b}}
		}()
	}
	next := func() outcome {
		t.Helper()
		select {
		case o := <-results:
			return o
		case <-time.After(30 * time.Second):
			t.Fatal("no answer to a turn")
			return outcome{}
		}
	}
	// While the model holds the first turn, one turn waits and the third is
	// refused at once.
	refused := next()
	restErr(t, refused.r, http.StatusTooManyRequests, "BUSY")
	assert.Equal(t, "1", refused.r.Header.Get("Retry-After"))

	// Reads and other sessions do not wait behind the running turn.
	restOK[transport.SessionMeta](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+root, nil), http.StatusOK)
	restOK[transport.Content](t, e.c.do("PUT", "/spaces/"+sp.ID+"/sessions/"+other.ID+"/system-prompt", map[string]any{"content": "x"}), http.StatusOK)

	open()
	answers := map[string]string{}
	for range 2 {
		o := next()
		res := restOK[transport.TurnResult](t, o.r, http.StatusOK)
		answers[o.input] = *res.Turn.FinalContent
	}
	require.Len(t, answers, 2)
	assert.NotContains(t, answers, refused.input)

	// The two accepted turns ran one after the other: the first model
	// answer went to one input, the second to the other, and the history
	// holds them in that order.
	msgs := e.messages(t, e.c, sp.ID, root)
	require.Len(t, msgs, 4, "the refused turn was not persisted")
	assert.Equal(t, "user", msgs[0].Role)
	assert.Equal(t, "one", answers[msgs[0].Content])
	assert.Equal(t, "one", msgs[1].Content)
	assert.Equal(t, "user", msgs[2].Role)
	assert.Equal(t, "two", answers[msgs[2].Content])
	assert.Equal(t, "two", msgs[3].Content)
	meta := restOK[transport.SessionMeta](t, e.c.do("GET", "/spaces/"+sp.ID+"/sessions/"+root, nil), http.StatusOK)
	assert.Equal(t, 2, meta.TurnCount)
	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	last := func(r mockllm.RecordedRequest) string { return r.Messages[len(r.Messages)-1].Content }
	assert.Equal(t, msgs[0].Content, last(reqs[0]))
	assert.Equal(t, msgs[2].Content, last(reqs[1]))
}

// TestRESTSpaceIDSpellings: another spelling of an existing space's UUID
// (upper case, no hyphens, braces, URN) is not that space. It used to start
// a second actor for the same space, whose cached state then diverged.
func TestRESTSpaceIDSpellings(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "orig"})
	for _, alias := range []string{strings.ToUpper(sp.ID), strings.ReplaceAll(sp.ID, "-", ""), "{" + sp.ID + "}", "urn:uuid:" + sp.ID} {
		t.Run(alias, func(t *testing.T) {
			restErr(t, e.c.do("GET", "/spaces/"+alias, nil), http.StatusNotFound, "NOT_FOUND")
			restErr(t, e.c.do("PATCH", "/spaces/"+alias, map[string]any{"label": "via alias"}), http.StatusNotFound, "NOT_FOUND")
			restErr(t, e.c.do("POST", "/spaces/"+alias+"/sessions/"+root+"/turn", map[string]any{"input": "x"}), http.StatusNotFound, "NOT_FOUND")
			restErr(t, e.c.do("DELETE", "/spaces/"+alias, nil), http.StatusNotFound, "NOT_FOUND")
		})
	}
	got := restOK[transport.Space](t, e.c.do("GET", "/spaces/"+sp.ID, nil), http.StatusOK)
	assert.Equal(t, "orig", got.Label)
	assert.Empty(t, e.messages(t, e.c, sp.ID, root))
	assert.Equal(t, 1, e.stack.Spaces.Len(), "one actor per space")
}
