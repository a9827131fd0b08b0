package transport_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fzWSFields are the names a WebSocket BAD_REQUEST may cite, in API terms.
var fzWSFields = []string{"type", "id", "sessionId", "input", "options", "label", "scope", "systemPrompt",
	"context", "prompt", "idempotencyKey", "ifBusy", "turnId", "from"}

// fzWSTerminal are the replies that answer a client message.
var fzWSTerminal = map[string]bool{"error": true, "session.entered": true, "session.left": true,
	"turn.complete": true, "stream.end": true, "session.forked": true}

// FuzzWSMessage sends one fuzzed message on a real WebSocket connection
// (optionally entered into the space's root session first) and checks the
// reply: one answer whose error code is documented (never HANDLER_ERROR),
// whose message names fields in API terms and shows no Go type, that echoes
// the message's string id, and after which the connection still answers.
// NUL or invalid UTF-8 in a turn's input or a fork's options is BAD_REQUEST;
// a session id that is not a canonical UUID is NOT_FOUND.
func FuzzWSMessage(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, enter bool, msg []byte) {
		msg = []byte(e.fzSubst(string(msg)))
		c, res, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(e.st.URL, "http")+"/spaces/"+e.spaceID+"/ws",
			http.Header{"X-API-Key": {e.key}})
		if err != nil {
			status := 0
			if res != nil {
				status = res.StatusCode
			}
			t.Fatalf("dial: %v (status %d)", err, status)
		}
		defer c.Close()
		if enter {
			m := fzWSCall(t, c, []byte(`{"type":"session.enter","id":"enter","sessionId":"`+e.rootID+`"}`))
			if m.Type != "session.entered" {
				t.Fatalf("enter the root session: %s", m.raw)
			}
		}
		var probe struct{ Type string }
		if json.Unmarshal(msg, &probe) == nil && probe.Type == "space.subscribe" {
			// Subscribing answers nothing on success; only the probe below.
			p := fzWSCall(t, c, []byte(`{"type":"fuzz.probe","id":"probe"}`))
			if p.Type != "error" || p.Code != "UNKNOWN_TYPE" || p.ID == nil || *p.ID != "probe" {
				fzWSCheckReply(t, p, msg)
			}
			return
		}
		m := fzWSCall(t, c, msg)
		fzWSCheckReply(t, m, msg)
		fzWSStrict(t, enter, m, msg)
		// The connection survived and still answers, in order.
		p := fzWSCall(t, c, []byte(`{"type":"fuzz.probe","id":"probe"}`))
		if p.Type != "error" || p.Code != "UNKNOWN_TYPE" || p.ID == nil || *p.ID != "probe" {
			t.Fatalf("connection no longer answers after %q: %s", msg, p.raw)
		}
	})
}

// fzWSMsg is a server message as far as the fuzz properties look.
type fzWSMsg struct {
	Type    string          `json:"type"`
	ID      *string         `json:"-"`
	RawID   json.RawMessage `json:"id"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	raw     string
}

// fzWSCall sends a text frame and reads until the message that answers it
// (skipping stream deltas and space events).
func fzWSCall(t *testing.T, c *websocket.Conn, msg []byte) fzWSMsg {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		typ, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("no answer to %q: %v", msg, err)
		}
		if typ != websocket.TextMessage {
			t.Fatalf("binary frame in answer to %q", msg)
		}
		var m fzWSMsg
		if err := json.Unmarshal(data, &m); err != nil || m.Type == "" {
			t.Fatalf("answer to %q is not a typed JSON object: %s", msg, data)
		}
		m.raw = string(data)
		var id string
		if json.Unmarshal(m.RawID, &id) == nil {
			m.ID = &id
		}
		if fzWSTerminal[m.Type] {
			return m
		}
	}
}

// fzWSCheckReply checks the properties every reply has.
func fzWSCheckReply(t *testing.T, m fzWSMsg, msg []byte) {
	t.Helper()
	if m.Type == "error" {
		if !fzWSCodes[m.Code] {
			t.Fatalf("error code %q for %q: %s", m.Code, msg, m.raw)
		}
		if m.Message == "" || fzInternals.MatchString(m.Message) {
			t.Fatalf("error message empty or showing internals for %q: %s", msg, m.raw)
		}
		if m.Code == "BAD_REQUEST" && !fzNamesField(m.Message, fzWSFields) {
			t.Fatalf("BAD_REQUEST names no field for %q: %s", msg, m.raw)
		}
	}
	var in struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(msg, &in) == nil && m.Code != "PARSE_ERROR" {
		var want string
		if json.Unmarshal(in.ID, &want) == nil && (m.ID == nil || *m.ID != want) {
			t.Fatalf("reply to %q does not echo id %q: %s", msg, want, m.raw)
		}
	}
}

// fzWSStrict checks the answers the contract fixes for nasty field values.
func fzWSStrict(t *testing.T, entered bool, m fzWSMsg, msg []byte) {
	t.Helper()
	var raw map[string]json.RawMessage
	if json.Unmarshal(msg, &raw) != nil {
		return
	}
	var typ string
	if json.Unmarshal(raw["type"], &typ) != nil {
		return
	}
	want := func(code, field string) {
		t.Helper()
		if m.Type != "error" || m.Code != code || (field != "" && !strings.Contains(m.Message, field)) {
			t.Fatalf("%q: want error %s naming %q, got %s", msg, code, field, m.raw)
		}
	}
	switch typ {
	case "session.message", "session.stream":
		if entered && len(fzBadStrings(msg, "input")) > 0 {
			want("BAD_REQUEST", "input")
		}
	case "session.fork":
		if opts, ok := raw["options"]; ok && entered && bytes.HasPrefix(bytes.TrimSpace(opts), []byte("{")) {
			if bad := fzBadStrings(opts, forkFields...); len(bad) > 0 {
				want("BAD_REQUEST", "")
			}
		}
	case "session.enter":
		var sid string
		if !entered && json.Unmarshal(raw["sessionId"], &sid) == nil && sid != "" && !fzCanonical(sid) && len(fzBadStrings(msg, "sessionId")) == 0 {
			want("NOT_FOUND", "")
		}
	}
}
