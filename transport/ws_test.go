package transport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
	"github.com/stellohq/stello/transport"
)

// wsWait bounds every wait for an eventual state in these tests.
const wsWait = 10 * time.Second

// wsEnv is a stack with one user owning one space.
type wsEnv struct {
	stack   *testutil.Stack
	userID  string
	key     string
	spaceID string
	rootID  string
}

func newWSEnv(t *testing.T, o testutil.StackOptions) *wsEnv {
	t.Helper()
	st := testutil.NewStack(t, o)
	uid, key := st.User(t, "ws-user")
	e := &wsEnv{stack: st, userID: uid, key: key}
	e.spaceID, e.rootID = e.createSpace(t, key, "ws space")
	return e
}

// createSpace creates a space over REST and returns its id and root session.
func (e *wsEnv) createSpace(t *testing.T, key, label string) (string, string) {
	t.Helper()
	var sp struct {
		ID string `json:"id"`
	}
	wsREST(t, e.stack, http.MethodPost, "/spaces", key, map[string]any{"label": label}, http.StatusCreated, &sp)
	var tree struct {
		ID string `json:"id"`
	}
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+sp.ID+"/sessions", key, nil, http.StatusOK, &tree)
	require.NotEmpty(t, sp.ID)
	require.NotEmpty(t, tree.ID)
	return sp.ID, tree.ID
}

// wsREST does one REST call, checks its status and decodes the body into out.
func wsREST(t *testing.T, st *testutil.Stack, method, path, key string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, st.URL+path, rd)
	require.NoError(t, err)
	req.Header.Set("X-API-Key", key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, want, resp.StatusCode, "%s %s: %s", method, path, raw)
	if out != nil {
		require.NoError(t, json.Unmarshal(raw, out), string(raw))
	}
}

type wsRecord struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// messages lists a session's records over REST.
func (e *wsEnv) messages(t *testing.T, sessionID string) []wsRecord {
	t.Helper()
	var recs []wsRecord
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+e.spaceID+"/sessions/"+sessionID+"/messages", e.key, nil, http.StatusOK, &recs)
	return recs
}

// eventuallyMessages waits until the session has exactly n records.
func (e *wsEnv) eventuallyMessages(t *testing.T, sessionID string, n int) []wsRecord {
	t.Helper()
	var recs []wsRecord
	require.Eventually(t, func() bool {
		recs = e.messagesNoFail(sessionID)
		return len(recs) == n
	}, wsWait, 10*time.Millisecond, "waiting for %d records", n)
	return recs
}

// messagesNoFail is messages for use inside Eventually.
func (e *wsEnv) messagesNoFail(sessionID string) []wsRecord {
	req, err := http.NewRequest(http.MethodGet, e.stack.URL+"/spaces/"+e.spaceID+"/sessions/"+sessionID+"/messages", nil)
	if err != nil {
		return nil
	}
	req.Header.Set("X-API-Key", e.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var recs []wsRecord
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&recs) != nil {
		return nil
	}
	return recs
}

// fork creates a child session over REST.
func (e *wsEnv) fork(t *testing.T, parentID string, body map[string]any) string {
	t.Helper()
	var meta struct {
		ID string `json:"id"`
	}
	wsREST(t, e.stack, http.MethodPost, "/spaces/"+e.spaceID+"/sessions/"+parentID+"/fork", e.key, body, http.StatusCreated, &meta)
	return meta.ID
}

func (e *wsEnv) url(spaceID string) string {
	return "ws" + strings.TrimPrefix(e.stack.URL, "http") + "/spaces/" + spaceID + "/ws"
}

// dial opens an authenticated connection to the space, closed at cleanup.
func (e *wsEnv) dial(t *testing.T, spaceID string) *websocket.Conn {
	t.Helper()
	return e.dialWith(t, websocket.DefaultDialer, spaceID)
}

func (e *wsEnv) dialWith(t *testing.T, d *websocket.Dialer, spaceID string) *websocket.Conn {
	t.Helper()
	c, resp, err := d.Dial(e.url(spaceID), http.Header{"X-API-Key": {e.key}})
	if err != nil && resp != nil {
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.NoError(t, err, "status %d: %s", resp.StatusCode, body)
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// conns is the number of connections attached to the space (-1 on error).
func (e *wsEnv) conns(spaceID string) int {
	ctx, cancel := context.WithTimeout(context.Background(), wsWait)
	defer cancel()
	n, err := e.stack.Spaces.Conns(ctx, spaceID)
	if err != nil {
		return -1
	}
	return n
}

func (e *wsEnv) eventuallyConns(t *testing.T, spaceID string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return e.conns(spaceID) == n }, wsWait, 10*time.Millisecond,
		"waiting for %d connections on space %s", n, spaceID)
}

// Wire shapes as documented in docs/api.md, declared here so that the test
// checks the documented field names rather than the server's own types.
type wsSessionMeta struct {
	ID              string   `json:"id"`
	ParentID        *string  `json:"parentId"`
	SourceSessionID *string  `json:"sourceSessionId"`
	Label           string   `json:"label"`
	Role            string   `json:"role"`
	Status          string   `json:"status"`
	Scope           *string  `json:"scope"`
	Depth           int      `json:"depth"`
	Index           int      `json:"index"`
	TurnCount       int      `json:"turnCount"`
	Children        []string `json:"children"`
}

type wsBootstrap struct {
	Context struct {
		Core          *string   `json:"core"`
		Memories      []*string `json:"memories"`
		CurrentMemory *string   `json:"currentMemory"`
		Scope         *string   `json:"scope"`
	} `json:"context"`
	Session wsSessionMeta `json:"session"`
}

type wsTurnResult struct {
	Turn struct {
		FinalContent      *string `json:"finalContent"`
		ToolRoundCount    int     `json:"toolRoundCount"`
		ToolCallsExecuted int     `json:"toolCallsExecuted"`
		RawResponse       string  `json:"rawResponse"`
	} `json:"turn"`
}

type wsMsg struct {
	Type      string         `json:"type"`
	ID        *string        `json:"id"`
	Code      string         `json:"code"`
	Message   string         `json:"message"`
	SessionID string         `json:"sessionId"`
	Chunk     string         `json:"chunk"`
	Bootstrap *wsBootstrap   `json:"bootstrap"`
	Result    *wsTurnResult  `json:"result"`
	Child     *wsSessionMeta `json:"child"`
	raw       string
}

// wsSend writes a string as a raw text frame, anything else as JSON.
func wsSend(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	var b []byte
	if s, ok := v.(string); ok {
		b = []byte(s)
	} else {
		var err error
		b, err = json.Marshal(v)
		require.NoError(t, err)
	}
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(wsWait)))
	require.NoError(t, c.WriteMessage(websocket.TextMessage, b))
}

func wsRead(t *testing.T, c *websocket.Conn) wsMsg {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wsWait)))
	typ, data, err := c.ReadMessage()
	require.NoError(t, err)
	require.Equal(t, websocket.TextMessage, typ)
	var m wsMsg
	require.NoError(t, json.Unmarshal(data, &m), string(data))
	m.raw = string(data)
	return m
}

func wsCall(t *testing.T, c *websocket.Conn, v any) wsMsg {
	t.Helper()
	wsSend(t, c, v)
	return wsRead(t, c)
}

func wsEnter(t *testing.T, c *websocket.Conn, sessionID string) wsMsg {
	t.Helper()
	m := wsCall(t, c, map[string]any{"type": "session.enter", "id": "enter-" + sessionID, "sessionId": sessionID})
	require.Equal(t, "session.entered", m.Type, m.raw)
	require.Equal(t, sessionID, m.SessionID)
	return m
}

// wsReadClose reads (discarding messages) until the connection ends and
// returns the close frame the server sent.
func wsReadClose(t *testing.T, c *websocket.Conn) *websocket.CloseError {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wsWait)))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		require.ErrorAs(t, err, &ce, "expected a close frame, got %v", err)
		return ce
	}
}

func wsStr(s string) *string { return &s }

func TestWSHandshakeRefusedBeforeUpgrade(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	_, otherKey := e.stack.User(t, "other")
	otherSpace, _ := e.createSpace(t, otherKey, "theirs")

	cases := []struct {
		name    string
		spaceID string
		header  http.Header
		protos  []string
		status  int
		code    string
	}{
		{"no key", e.spaceID, nil, nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"unknown X-API-Key", e.spaceID, http.Header{"X-API-Key": {"sk-unknown"}}, nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"unknown bearer", e.spaceID, http.Header{"Authorization": {"Bearer sk-unknown"}}, nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"unknown key as subprotocol", e.spaceID, nil, []string{"stello.v1", "stello.key.sk-unknown"}, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"subprotocol without key", e.spaceID, nil, []string{"stello.v1"}, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"other user's space", otherSpace, http.Header{"X-API-Key": {e.key}}, nil, http.StatusForbidden, "FORBIDDEN"},
		{"unknown space", uuid.NewString(), http.Header{"X-API-Key": {e.key}}, nil, http.StatusNotFound, "NOT_FOUND"},
		{"non-UUID space", "not-a-uuid", http.Header{"X-API-Key": {e.key}}, nil, http.StatusNotFound, "NOT_FOUND"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := &websocket.Dialer{Subprotocols: tc.protos, HandshakeTimeout: wsWait}
			c, resp, err := d.Dial(e.url(tc.spaceID), tc.header)
			if c != nil {
				_ = c.Close()
			}
			require.ErrorIs(t, err, websocket.ErrBadHandshake)
			require.NotNil(t, resp)
			defer resp.Body.Close()
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Empty(t, resp.Header.Get("Sec-WebSocket-Protocol"))
			var body struct {
				Error string `json:"error"`
				Code  string `json:"code"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Equal(t, tc.code, body.Code)
			assert.NotEmpty(t, body.Error)
		})
	}

	t.Run("plain GET without upgrade", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, e.stack.URL+"/spaces/"+e.spaceID+"/ws", nil)
		require.NoError(t, err)
		req.Header.Set("X-API-Key", e.key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		var body struct {
			Code string `json:"code"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		assert.Equal(t, "BAD_REQUEST", body.Code)
	})

	// Refused handshakes leave nothing attached.
	assert.Equal(t, 0, e.conns(e.spaceID))
	assert.Equal(t, 0, e.conns(otherSpace))
}

func TestWSAuthMethods(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	cases := []struct {
		name      string
		header    http.Header
		protos    []string
		wantProto string
	}{
		{"X-API-Key header", http.Header{"X-API-Key": {e.key}}, nil, ""},
		{"Authorization Bearer", http.Header{"Authorization": {"Bearer " + e.key}}, nil, ""},
		{"key subprotocol", nil, []string{"stello.v1", "stello.key." + e.key}, "stello.v1"},
		{"header key offering stello.v1", http.Header{"X-API-Key": {e.key}}, []string{"stello.v1"}, "stello.v1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := &websocket.Dialer{Subprotocols: tc.protos, HandshakeTimeout: wsWait}
			c, resp, err := d.Dial(e.url(e.spaceID), tc.header)
			require.NoError(t, err)
			defer c.Close()
			assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
			assert.Equal(t, tc.wantProto, c.Subprotocol())
			m := wsEnter(t, c, e.rootID)
			assert.Equal(t, e.rootID, m.Bootstrap.Session.ID)
		})
	}
}

func TestWSProtocolErrors(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	_, otherRoot := e.createSpace(t, e.key, "other space of the same user")
	c := e.dial(t, e.spaceID)

	enter := func(id, sid string) string {
		return `{"type":"session.enter","id":"` + id + `","sessionId":"` + sid + `"}`
	}
	steps := []struct {
		name     string
		send     string
		wantType string
		wantCode string
		wantID   string // "" = no id in the reply
	}{
		{"not JSON", `this is not json`, "error", "PARSE_ERROR", ""},
		{"truncated JSON", `{"type":"session.enter"`, "error", "PARSE_ERROR", ""},
		{"unknown type", `{"type":"session.dance","id":"u1"}`, "error", "UNKNOWN_TYPE", "u1"},
		{"missing type", `{"id":"u2"}`, "error", "BAD_REQUEST", "u2"},
		{"message before enter", `{"type":"session.message","id":"n1","input":"hi"}`, "error", "NOT_ENTERED", "n1"},
		{"stream before enter", `{"type":"session.stream","id":"n2","input":"hi"}`, "error", "NOT_ENTERED", "n2"},
		{"fork before enter", `{"type":"session.fork","id":"n3","options":{"label":"x"}}`, "error", "NOT_ENTERED", "n3"},
		{"leave before enter", `{"type":"session.leave","id":"n4"}`, "error", "NOT_ENTERED", "n4"},
		{"enter without sessionId", `{"type":"session.enter","id":"e1"}`, "error", "BAD_REQUEST", "e1"},
		{"enter with empty sessionId", enter("e2", ""), "error", "BAD_REQUEST", "e2"},
		{"enter with non-string sessionId", `{"type":"session.enter","id":"e3","sessionId":42}`, "error", "BAD_REQUEST", "e3"},
		{"enter a session of another space", enter("e4", otherRoot), "error", "NOT_FOUND", "e4"},
		{"enter an unknown session", enter("e5", uuid.NewString()), "error", "NOT_FOUND", "e5"},
		{"enter a non-UUID session", enter("e6", "nope"), "error", "NOT_FOUND", "e6"},
		{"enter", enter("e7", e.rootID), "session.entered", "", "e7"},
		{"enter twice", enter("e8", e.rootID), "error", "ALREADY_ENTERED", "e8"},
		{"enter another session while entered", enter("e9", otherRoot), "error", "ALREADY_ENTERED", "e9"},
		{"stream without input", `{"type":"session.stream","id":"s1"}`, "error", "BAD_REQUEST", "s1"},
		{"stream with empty input", `{"type":"session.stream","id":"s2","input":""}`, "error", "BAD_REQUEST", "s2"},
		{"message without input", `{"type":"session.message","id":"s3"}`, "error", "BAD_REQUEST", "s3"},
		{"fork without options", `{"type":"session.fork","id":"f1"}`, "error", "BAD_REQUEST", "f1"},
		{"fork without label", `{"type":"session.fork","id":"f2","options":{}}`, "error", "BAD_REQUEST", "f2"},
		{"fork with empty label", `{"type":"session.fork","id":"f3","options":{"label":""}}`, "error", "BAD_REQUEST", "f3"},
		{"fork with bad context", `{"type":"session.fork","id":"f4","options":{"label":"x","context":"all"}}`, "error", "BAD_REQUEST", "f4"},
		{"message still works", `{"type":"session.message","id":"m1","input":"still here"}`, "turn.complete", "", "m1"},
	}
	for _, s := range steps {
		m := wsCall(t, c, s.send)
		assert.Equal(t, s.wantType, m.Type, "%s: %s", s.name, m.raw)
		if s.wantType == "error" {
			assert.Equal(t, s.wantCode, m.Code, "%s: %s", s.name, m.raw)
			assert.NotEmpty(t, m.Message, s.name)
		}
		if s.wantID == "" {
			assert.Nil(t, m.ID, "%s: %s", s.name, m.raw)
		} else if assert.NotNil(t, m.ID, "%s: %s", s.name, m.raw) {
			assert.Equal(t, s.wantID, *m.ID, s.name)
		}
		if s.name == "message still works" {
			require.NotNil(t, m.Result, m.raw)
			require.NotNil(t, m.Result.Turn.FinalContent)
			assert.Equal(t, "Echo: still here", *m.Result.Turn.FinalContent)
		}
	}

	// None of the refused requests changed anything: one turn, no children.
	var meta wsSessionMeta
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+e.spaceID+"/sessions/"+e.rootID, e.key, nil, http.StatusOK, &meta)
	assert.Equal(t, 1, meta.TurnCount)
	assert.Empty(t, meta.Children)
	assert.Len(t, e.messages(t, e.rootID), 2)
}

func TestWSEnterBootstrap(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	child := e.fork(t, e.rootID, map[string]any{"label": "child"})
	grand := e.fork(t, child, map[string]any{"label": "grandchild", "scope": "grand scope"})
	ctx := context.Background()
	for id, mem := range map[string]string{e.rootID: "root memory", child: "child memory", grand: "grandchild memory"} {
		_, err := e.stack.Spaces.SetSlot(ctx, e.userID, e.spaceID, id, session.SlotMemory, mem)
		require.NoError(t, err)
	}
	c := e.dial(t, e.spaceID)

	m := wsCall(t, c, map[string]any{"type": "session.enter", "id": "g", "sessionId": grand})
	require.Equal(t, "session.entered", m.Type, m.raw)
	require.NotNil(t, m.ID)
	assert.Equal(t, "g", *m.ID)
	assert.Equal(t, grand, m.SessionID)
	require.NotNil(t, m.Bootstrap, m.raw)
	bc := m.Bootstrap.Context
	assert.Equal(t, wsStr("root memory"), bc.Core)
	assert.Equal(t, []*string{wsStr("child memory"), wsStr("root memory")}, bc.Memories, "ancestor memories, nearest first")
	assert.Equal(t, wsStr("grandchild memory"), bc.CurrentMemory)
	assert.Equal(t, wsStr("grand scope"), bc.Scope)
	s := m.Bootstrap.Session
	assert.Equal(t, grand, s.ID)
	assert.Equal(t, &child, s.ParentID)
	assert.Equal(t, &child, s.SourceSessionID)
	assert.Equal(t, "grandchild", s.Label)
	assert.Equal(t, "standard", s.Role)
	assert.Equal(t, "active", s.Status)
	assert.Equal(t, wsStr("grand scope"), s.Scope)
	assert.Equal(t, 2, s.Depth)
	assert.Equal(t, 0, s.TurnCount)
	assert.NotNil(t, s.Children)
	assert.Empty(t, s.Children)

	m = wsCall(t, c, map[string]any{"type": "session.leave", "id": "l"})
	require.Equal(t, "session.left", m.Type, m.raw)
	assert.Equal(t, grand, m.SessionID)
	require.NotNil(t, m.ID)
	assert.Equal(t, "l", *m.ID)

	// The root has no ancestors: memories is an empty array, not null.
	m = wsEnter(t, c, e.rootID)
	assert.Contains(t, m.raw, `"memories":[]`)
	bc = m.Bootstrap.Context
	assert.Equal(t, wsStr("root memory"), bc.Core)
	assert.Empty(t, bc.Memories)
	assert.Equal(t, wsStr("root memory"), bc.CurrentMemory)
	assert.Nil(t, bc.Scope)
	assert.Equal(t, "main", m.Bootstrap.Session.Role)
	assert.Nil(t, m.Bootstrap.Session.ParentID)
	assert.Equal(t, 0, m.Bootstrap.Session.Depth)
	assert.Equal(t, []string{child}, m.Bootstrap.Session.Children)

	// A session without memory in a space without any: all null.
	otherSpace, otherRoot := e.createSpace(t, e.key, "blank")
	c2 := e.dial(t, otherSpace)
	m = wsEnter(t, c2, otherRoot)
	assert.Contains(t, m.raw, `"core":null`)
	assert.Contains(t, m.raw, `"currentMemory":null`)
	assert.Contains(t, m.raw, `"scope":null`)
}

func TestWSLeaveAndFork(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)

	m := wsCall(t, c, map[string]any{"type": "session.fork", "id": "f1",
		"options": map[string]any{"label": "ws child", "scope": "ws scope"}})
	require.Equal(t, "session.forked", m.Type, m.raw)
	require.NotNil(t, m.ID)
	assert.Equal(t, "f1", *m.ID)
	require.NotNil(t, m.Child, m.raw)
	child := *m.Child
	require.NoError(t, uuid.Validate(child.ID))
	assert.Equal(t, &e.rootID, child.ParentID)
	assert.Equal(t, &e.rootID, child.SourceSessionID)
	assert.Equal(t, "ws child", child.Label)
	assert.Equal(t, wsStr("ws scope"), child.Scope)
	assert.Equal(t, "standard", child.Role)
	assert.Equal(t, "active", child.Status)
	assert.Equal(t, 1, child.Depth)
	assert.Equal(t, 0, child.Index)
	assert.NotNil(t, child.Children)

	m = wsCall(t, c, map[string]any{"type": "session.fork", "id": "f2", "options": map[string]any{"label": "second"}})
	require.Equal(t, "session.forked", m.Type, m.raw)
	assert.Equal(t, 1, m.Child.Index)
	second := m.Child.ID

	// Both children are in the tree, in order, and readable over REST.
	var tree struct {
		ID       string `json:"id"`
		Children []struct {
			ID              string  `json:"id"`
			Label           string  `json:"label"`
			SourceSessionID *string `json:"sourceSessionId"`
		} `json:"children"`
	}
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+e.spaceID+"/sessions", e.key, nil, http.StatusOK, &tree)
	require.Len(t, tree.Children, 2)
	assert.Equal(t, child.ID, tree.Children[0].ID)
	assert.Equal(t, "ws child", tree.Children[0].Label)
	assert.Equal(t, &e.rootID, tree.Children[0].SourceSessionID)
	assert.Equal(t, second, tree.Children[1].ID)
	var meta wsSessionMeta
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+e.spaceID+"/sessions/"+child.ID, e.key, nil, http.StatusOK, &meta)
	assert.Equal(t, wsStr("ws scope"), meta.Scope)

	m = wsCall(t, c, map[string]any{"type": "session.leave", "id": "l1"})
	require.Equal(t, "session.left", m.Type, m.raw)
	assert.Equal(t, e.rootID, m.SessionID)
	assert.Equal(t, "l1", *m.ID)

	m = wsCall(t, c, map[string]any{"type": "session.message", "id": "x", "input": "hello?"})
	assert.Equal(t, "NOT_ENTERED", m.Code, m.raw)

	// After leaving, the connection can enter the child; its turns go there.
	m = wsEnter(t, c, child.ID)
	assert.Equal(t, wsStr("ws scope"), m.Bootstrap.Context.Scope)
	m = wsCall(t, c, map[string]any{"type": "session.message", "id": "m", "input": "in the child"})
	require.Equal(t, "turn.complete", m.Type, m.raw)
	recs := e.messages(t, child.ID)
	require.Len(t, recs, 2)
	assert.Equal(t, wsRecord{"user", "in the child"}, recs[0])
	assert.Empty(t, e.messages(t, e.rootID))
}

func TestWSTurns(t *testing.T) {
	t.Parallel()
	mock := mockllm.New(mockllm.Config{})
	chunks := []string{"Str", "eam", "ed ", "answer."}
	mock.Enqueue(mockllm.Reply{Content: "Plain answer."}, mockllm.Reply{Chunks: chunks})
	e := newWSEnv(t, testutil.StackOptions{LLM: testutil.ModelClient(t, mock)})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)

	m := wsCall(t, c, map[string]any{"type": "session.message", "id": "m1", "input": "first"})
	require.Equal(t, "turn.complete", m.Type, m.raw)
	require.NotNil(t, m.ID)
	assert.Equal(t, "m1", *m.ID)
	require.NotNil(t, m.Result, m.raw)
	require.NotNil(t, m.Result.Turn.FinalContent)
	assert.Equal(t, "Plain answer.", *m.Result.Turn.FinalContent)
	assert.Equal(t, 0, m.Result.Turn.ToolRoundCount)
	assert.Equal(t, 0, m.Result.Turn.ToolCallsExecuted)
	assert.NotEmpty(t, m.Result.Turn.RawResponse)

	wsSend(t, c, map[string]any{"type": "session.stream", "id": "s1", "input": "second"})
	start := wsRead(t, c)
	require.Equal(t, "stream.start", start.Type, start.raw)
	require.NotNil(t, start.ID)
	assert.Equal(t, "s1", *start.ID)
	assert.Contains(t, start.raw, `"turnId":"`)
	var got []string
	for {
		m = wsRead(t, c)
		require.NotNil(t, m.ID, m.raw)
		assert.Equal(t, "s1", *m.ID)
		if m.Type != "stream.delta" {
			break
		}
		got = append(got, m.Chunk)
	}
	require.Equal(t, "stream.end", m.Type, m.raw)
	require.NotEmpty(t, got, "at least one stream.delta before stream.end")
	// Deltas waiting for the writer may be merged; their text is exact.
	assert.Equal(t, strings.Join(chunks, ""), strings.Join(got, ""))
	require.NotNil(t, m.Result, m.raw)
	require.NotNil(t, m.Result.Turn.FinalContent)
	assert.Equal(t, strings.Join(got, ""), *m.Result.Turn.FinalContent)
	assert.Equal(t, "Streamed answer.", *m.Result.Turn.FinalContent)

	reqs := mock.Requests()
	require.Len(t, reqs, 2)
	assert.False(t, reqs[0].Stream, "session.message is a non-streaming call")
	assert.True(t, reqs[1].Stream, "session.stream is a streaming call")

	assert.Equal(t, []wsRecord{{"user", "first"}, {"assistant", "Plain answer."}, {"user", "second"}, {"assistant", "Streamed answer."}},
		e.messages(t, e.rootID))
	var meta wsSessionMeta
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+e.spaceID+"/sessions/"+e.rootID, e.key, nil, http.StatusOK, &meta)
	assert.Equal(t, 2, meta.TurnCount)
}

func TestWSArchivedSessionRefusesTurns(t *testing.T) {
	t.Parallel()
	mock := mockllm.New(mockllm.Config{})
	e := newWSEnv(t, testutil.StackOptions{LLM: testutil.ModelClient(t, mock)})
	child := e.fork(t, e.rootID, map[string]any{"label": "old"})
	wsREST(t, e.stack, http.MethodPost, "/spaces/"+e.spaceID+"/sessions/"+child+"/archive", e.key, nil, http.StatusOK, nil)

	c := e.dial(t, e.spaceID)
	m := wsEnter(t, c, child) // an archived session still reads
	assert.Equal(t, "archived", m.Bootstrap.Session.Status)
	for _, req := range []map[string]any{
		{"type": "session.message", "id": "a1", "input": "hi"},
		{"type": "session.stream", "id": "a2", "input": "hi"},
		{"type": "session.fork", "id": "a3", "options": map[string]any{"label": "x"}},
	} {
		m := wsCall(t, c, req)
		assert.Equal(t, "error", m.Type, m.raw)
		assert.Equal(t, "SESSION_ARCHIVED", m.Code, m.raw)
		require.NotNil(t, m.ID)
		assert.Equal(t, req["id"], *m.ID)
	}
	assert.Zero(t, mock.Calls(), "no model call for an archived session")
	assert.Empty(t, e.messages(t, child))
}

func TestWSOversizeFrameCloses1009(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{Transport: transport.Options{WSMaxMessageBytes: 1024}})
	// One write syscall for the whole frame: the server closes as soon as it
	// has read the frame header, and a second write could meet a reset.
	c := e.dialWith(t, &websocket.Dialer{HandshakeTimeout: wsWait, WriteBufferSize: 16 << 10}, e.spaceID)
	wsEnter(t, c, e.rootID) // a frame under the limit is fine

	big := `{"type":"session.message","input":"` + strings.Repeat("x", 4096) + `"}`
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(wsWait)))
	_ = c.WriteMessage(websocket.TextMessage, []byte(big)) // may race the server's close
	ce := wsReadClose(t, c)
	assert.Equal(t, websocket.CloseMessageTooBig, ce.Code)
	e.eventuallyConns(t, e.spaceID, 0)
	assert.Empty(t, e.messages(t, e.rootID), "the oversize message was not run")
}

// A client that reads nothing at all is dropped (it stops answering
// pings), and its turn is still persisted.
func TestWSClientThatNeverReadsIsDropped(t *testing.T) {
	t.Parallel()
	model := fake.New(fake.Config{ReplyWords: 2000})
	e := newWSEnv(t, testutil.StackOptions{
		LLM:       model,
		Transport: transport.Options{WSSendQueue: 4, WSPingInterval: 100 * time.Millisecond},
	})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)

	const input = "flood me"
	wsSend(t, c, map[string]any{"type": "session.stream", "id": "s", "input": input})
	// The client never reads again (so it never answers a ping).
	e.eventuallyConns(t, e.spaceID, 0)

	want := model.Reply(llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: input}}})
	require.Greater(t, len(strings.Fields(want)), 1000)
	recs := e.eventuallyMessages(t, e.rootID, 2)
	assert.Equal(t, wsRecord{"user", input}, recs[0])
	assert.Equal(t, wsRecord{"assistant", want}, recs[1])
}

// A client that reads, but slower than its stream is produced, gets a
// close frame with code 1008 once its queue is over the byte bound (not a
// bare drop), and the turn is still persisted.
func TestWSSlowReaderGetsClose1008(t *testing.T) {
	t.Parallel()
	model := fake.New(fake.Config{ReplyWords: 4000})
	e := newWSEnv(t, testutil.StackOptions{
		LLM:       model,
		Transport: transport.Options{WSSendQueueBytes: 2048},
	})
	d := &websocket.Dialer{HandshakeTimeout: wsWait, NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return conn, err
	}}
	c := e.dialWith(t, d, e.spaceID)
	wsEnter(t, c, e.rootID)
	const input = "stream slowly"
	wsSend(t, c, map[string]any{"type": "session.stream", "id": "s", "input": input})
	time.Sleep(300 * time.Millisecond) // the model outruns the reader
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wsWait)))
	var closeErr *websocket.CloseError
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		require.ErrorAs(t, err, &closeErr, "the connection ends with a close frame, not a bare drop")
		break
	}
	assert.Equal(t, websocket.ClosePolicyViolation, closeErr.Code)

	want := model.Reply(llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: input}}})
	recs := e.eventuallyMessages(t, e.rootID, 2)
	assert.Equal(t, wsRecord{"assistant", want}, recs[1])
}

// A client that pipelines far more requests than the server queues, while
// reading its answers, gets one answer per request (BUSY for turns over
// the per-connection limit) and keeps its connection.
func TestWSPipelinedRequestsGetAnswersNotADrop(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{
		LLM:       fake.New(fake.Config{}),
		Transport: transport.Options{WSSendQueue: 16},
		Space:     space.Options{SessionQueue: 1000},
	})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)
	const n = 1000
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			var msg any = map[string]any{"type": "session.leave-nope", "id": fmt.Sprintf("r%d", i)}
			if i%10 == 0 {
				msg = map[string]any{"type": "session.message", "id": fmt.Sprintf("r%d", i), "input": fmt.Sprintf("turn %d", i)}
			}
			b, _ := json.Marshal(msg)
			_ = c.SetWriteDeadline(time.Now().Add(wsWait))
			if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	seen := map[string]string{}
	for len(seen) < n {
		m := wsRead(t, c)
		require.NotNil(t, m.ID, m.raw)
		_, dup := seen[*m.ID]
		require.False(t, dup, "one answer per request: %s", m.raw)
		code := m.Type
		if m.Type == "error" {
			code = m.Code
		}
		seen[*m.ID] = code
	}
	require.NoError(t, <-sendErr)
	turns, busy := 0, 0
	for id, code := range seen {
		var i int
		_, _ = fmt.Sscanf(id, "r%d", &i)
		if i%10 != 0 {
			assert.Equal(t, "UNKNOWN_TYPE", code, id)
			continue
		}
		switch code {
		case "turn.complete":
			turns++
		case "BUSY":
			busy++
		default:
			t.Errorf("turn %s answered %s", id, code)
		}
	}
	assert.Equal(t, n/10, turns+busy)
	assert.Positive(t, turns)
	// Still open and answering.
	m := wsCall(t, c, map[string]any{"type": "session.leave", "id": "last"})
	assert.Equal(t, "session.left", m.Type)
}

// wsGatedWriter holds a streamed model answer before its n-th write until
// the gate opens.
type wsGatedWriter struct {
	http.ResponseWriter
	n, writes int
	gate      <-chan struct{}
	done      <-chan struct{}
}

func (w *wsGatedWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.writes == w.n {
		select {
		case <-w.gate:
		case <-w.done:
			return 0, errors.New("client gone")
		}
	}
	return w.ResponseWriter.Write(b)
}

func (w *wsGatedWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func TestWSClientDisconnectMidStreamStillPersists(t *testing.T) {
	t.Parallel()
	mock := mockllm.New(mockllm.Config{})
	mock.Enqueue(mockllm.Reply{Chunks: []string{"one ", "two ", "three ", "four"}})
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	// Writes: 1 = role chunk, 2 = "one ", 3 = "two " (held until the gate opens).
	model := testutil.ModelClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mock.ServeHTTP(&wsGatedWriter{ResponseWriter: w, n: 3, gate: gate, done: r.Context().Done()}, r)
	}))
	e := newWSEnv(t, testutil.StackOptions{LLM: model})
	t.Cleanup(open) // runs before the stack shuts down

	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)
	wsSend(t, c, map[string]any{"type": "session.stream", "id": "s", "input": "count"})
	m := wsRead(t, c)
	require.Equal(t, "stream.start", m.Type, m.raw)
	m = wsRead(t, c)
	require.Equal(t, "stream.delta", m.Type, m.raw)
	assert.Equal(t, "one ", m.Chunk)

	require.NoError(t, c.Close()) // mid-stream, without a close frame
	e.eventuallyConns(t, e.spaceID, 0)
	// The model is still answering: nothing of the turn is written yet.
	assert.Empty(t, e.messages(t, e.rootID))

	open()
	recs := e.eventuallyMessages(t, e.rootID, 2)
	assert.Equal(t, []wsRecord{{"user", "count"}, {"assistant", "one two three four"}}, recs)
	assert.Equal(t, 1, mock.Calls(), "the model call was not cancelled and retried")
	var meta wsSessionMeta
	wsREST(t, e.stack, http.MethodGet, "/spaces/"+e.spaceID+"/sessions/"+e.rootID, e.key, nil, http.StatusOK, &meta)
	assert.Equal(t, 1, meta.TurnCount)
}

func TestWSDeleteSpaceCloses4404(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	otherSpace, otherRoot := e.createSpace(t, e.key, "survivor")
	entered := e.dial(t, e.spaceID)
	wsEnter(t, entered, e.rootID)
	idle := e.dial(t, e.spaceID)
	other := e.dial(t, otherSpace)

	wsREST(t, e.stack, http.MethodDelete, "/spaces/"+e.spaceID, e.key, nil, http.StatusNoContent, nil)
	for _, c := range []*websocket.Conn{entered, idle} {
		ce := wsReadClose(t, c)
		assert.Equal(t, 4404, ce.Code)
	}
	// Other spaces' connections are untouched.
	wsEnter(t, other, otherRoot)

	c, resp, err := websocket.DefaultDialer.Dial(e.url(e.spaceID), http.Header{"X-API-Key": {e.key}})
	if c != nil {
		_ = c.Close()
	}
	require.ErrorIs(t, err, websocket.ErrBadHandshake)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestWSPingKeepsAnsweringClient(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{Transport: transport.Options{WSPingInterval: 250 * time.Millisecond}})
	c := e.dial(t, e.spaceID)
	var pings atomic.Int32
	c.SetPingHandler(func(data string) error { // the default answer, counted
		pings.Add(1)
		err := c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	// A peer is dropped when silent for two intervals; six pings means the
	// connection lived through three such windows. (The interval leaves the
	// client's pong 500ms, so that a loaded machine, the race detector and
	// the package's other tests running alongside do not flake the test.)
	deadline := time.After(wsWait)
	for pings.Load() < 6 {
		select {
		case err := <-readErr:
			t.Fatalf("answering client was dropped after %d pings: %v", pings.Load(), err)
		case <-deadline:
			t.Fatalf("only %d pings in %v", pings.Load(), wsWait)
		case <-time.After(10 * time.Millisecond):
		}
	}
	assert.Equal(t, 1, e.conns(e.spaceID))
}

func TestWSPingDropsSilentClient(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{Transport: transport.Options{WSPingInterval: 50 * time.Millisecond}})
	c := e.dial(t, e.spaceID)
	var pings atomic.Int32
	c.SetPingHandler(func(string) error { pings.Add(1); return nil }) // never answers
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	var err error
	select {
	case err = <-readErr:
	case <-time.After(wsWait):
		t.Fatal("a client that does not answer pings was not dropped")
	}
	var ce *websocket.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, websocket.CloseGoingAway, ce.Code)
	assert.Positive(t, pings.Load(), "the server pinged before dropping")
	e.eventuallyConns(t, e.spaceID, 0)
}

func TestWSCloseDetachesAndAllowsEviction(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)
	require.Equal(t, 1, e.conns(e.spaceID))

	// An attached connection keeps the actor resident: eviction is refused
	// (a new actor would report no connection).
	require.True(t, e.stack.Spaces.Evict(e.spaceID))
	require.Equal(t, 1, e.conns(e.spaceID))

	require.NoError(t, c.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second)))
	require.NoError(t, c.Close())
	e.eventuallyConns(t, e.spaceID, 0)

	require.True(t, e.stack.Spaces.Evict(e.spaceID))
	require.Eventually(t, func() bool {
		_, ok := e.stack.Spaces.System().Lookup(e.spaceID)
		return !ok
	}, wsWait, 10*time.Millisecond, "the space actor was not evicted")

	// The space loads again on demand.
	c = e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)
}

func TestWSServerShutdownCloses1001(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	otherSpace, _ := e.createSpace(t, e.key, "second")
	a := e.dial(t, e.spaceID)
	wsEnter(t, a, e.rootID)
	b := e.dial(t, otherSpace)

	e.stack.Front.Close()
	for _, c := range []*websocket.Conn{a, b} {
		ce := wsReadClose(t, c)
		assert.Equal(t, websocket.CloseGoingAway, ce.Code)
	}
	e.eventuallyConns(t, e.spaceID, 0)
	e.eventuallyConns(t, otherSpace, 0)

	// New connections are refused while shutting down.
	c, resp, err := websocket.DefaultDialer.Dial(e.url(e.spaceID), http.Header{"X-API-Key": {e.key}})
	if c != nil {
		_ = c.Close()
	}
	require.ErrorIs(t, err, websocket.ErrBadHandshake)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	var body struct {
		Code string `json:"code"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	assert.Equal(t, "UNAVAILABLE", body.Code)
}
