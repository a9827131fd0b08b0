package transport_test

// Fuzz targets for every decoder of untrusted REST input, driven through
// the real HTTP server over a real space manager, database and (fake)
// model. Properties, for every input: no panic (a panic ends the server and
// the run), no 500, every rejection a documented status and code with a
// {"error", "code"} JSON body and no internals in the message, a 400 for a
// body or query field names that field, NUL and invalid UTF-8 in a string
// field are 400 naming the field, and ids that are not canonical UUIDs are
// 404. The seed corpus is in testdata/fuzz/<FuzzName>/ (see
// fuzz_seeds_test.go); `make test` runs each target for a few seconds.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// spaceFields are the fields of POST /spaces and PATCH /spaces/:id.
var spaceFields = []string{"label", "systemPrompt", "consolidatePrompt", "integratePrompt", "config"}

// forkFields are the fields of POST …/fork.
var forkFields = []string{"label", "scope", "systemPrompt", "context", "prompt"}

// fzWantBadField fails unless r is a 400 naming one of the bad fields.
func fzWantBadField(t *testing.T, r fzResp, bad []string) {
	t.Helper()
	if len(bad) == 0 {
		return
	}
	if r.status != http.StatusBadRequest {
		t.Fatalf("NUL or invalid UTF-8 in %v must be 400 BAD_REQUEST naming the field: %s", bad, r)
	}
	var m struct{ Error string }
	_ = json.Unmarshal(r.body, &m)
	if !fzNamesField(m.Error, bad) && !strings.Contains(m.Error, "JSON") {
		// Another field may legitimately be refused first, but it must be named.
		t.Logf("400 for another reason than %v: %s", bad, r)
	}
}

func FuzzRESTCreateSpace(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r := e.do(http.MethodPost, "/spaces", body, nil)
		if fzCheck(t, r, spaceFields, http.StatusCreated) == http.StatusCreated {
			fzCheckSpaceEcho(t, r, body)
		}
		fzWantBadField(t, r, fzBadStrings(body, spaceFields...))
	})
}

// fzCheckSpaceEcho checks that a created or patched space stores the string
// fields as sent: nothing silently replaced.
func fzCheckSpaceEcho(t *testing.T, r fzResp, body []byte) {
	t.Helper()
	var sent map[string]json.RawMessage
	if json.Unmarshal(body, &sent) != nil {
		return
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("success body is not JSON: %s", r)
	}
	for _, f := range []string{"label", "systemPrompt", "consolidatePrompt", "integratePrompt"} {
		raw, ok := sent[f]
		if !ok {
			continue
		}
		var want, have *string
		if json.Unmarshal(raw, &want) != nil || want == nil {
			continue
		}
		_ = json.Unmarshal(got[f], &have)
		if have == nil || *have != *want {
			t.Fatalf("field %s sent as %q was stored as %v: %s", f, *want, have, r)
		}
	}
}

func FuzzRESTPatchSpace(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r := e.do(http.MethodPatch, "/spaces/"+e.spaceID, body, nil)
		if fzCheck(t, r, spaceFields, http.StatusOK) == http.StatusOK {
			fzCheckSpaceEcho(t, r, body)
		}
		fzWantBadField(t, r, fzBadStrings(body, spaceFields...))
	})
}

func FuzzRESTTurn(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, body []byte, stream bool) {
		sp, root, err := e.turnTarget()
		if err != nil {
			t.Fatalf("turn target: %v", err)
		}
		hdr := map[string]string{}
		if stream {
			hdr["Accept"] = "text/event-stream"
		}
		r := e.do(http.MethodPost, "/spaces/"+sp+"/sessions/"+root+"/turn", body, hdr)
		bad := fzBadStrings(body, "input")
		if r.err == nil && r.status == http.StatusOK && stream {
			fzCheckSSE(t, r)
			if len(bad) > 0 {
				t.Fatalf("NUL or invalid UTF-8 in input must be 400 BAD_REQUEST before the stream starts: %s", r)
			}
			return
		}
		fzCheck(t, r, []string{"input"}, http.StatusOK)
		fzWantBadField(t, r, bad)
	})
}

// fzCheckSSE checks a turn's event stream: well-formed events, ending with
// exactly one `end` or a documented `error` (never INTERNAL).
func fzCheckSSE(t *testing.T, r fzResp) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("streamed turn answered %q: %s", ct, r)
	}
	var last, data string
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			if last == "end" || last == "error" {
				t.Fatalf("event after the stream's end: %s", r)
			}
			last = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
			if !json.Valid([]byte(data)) {
				t.Fatalf("event data is not JSON: %s", r)
			}
		}
	}
	switch last {
	case "end":
	case "error":
		var m map[string]string
		if err := json.Unmarshal([]byte(data), &m); err != nil {
			t.Fatalf("error event is not {error, code}: %s", r)
		}
		if m["code"] == "INTERNAL" || !fzWSCodes[m["code"]] && m["code"] != "UNAVAILABLE" {
			t.Fatalf("stream ended with error code %q: %s", m["code"], r)
		}
		if fzInternals.MatchString(m["error"]) {
			t.Fatalf("error event shows internals: %s", r)
		}
	default:
		t.Fatalf("stream did not end with `end` or `error`: %s", r)
	}
}

func FuzzRESTFork(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		r := e.do(http.MethodPost, "/spaces/"+e.spaceID+"/sessions/"+e.rootID+"/fork", body, nil)
		fzCheck(t, r, forkFields, http.StatusCreated)
		fzWantBadField(t, r, fzBadStrings(body, forkFields...))
	})
}

// fzSlots are the writable data slots of a session.
var fzSlots = []string{"system-prompt", "consolidate-prompt", "integrate-prompt"}

func FuzzRESTPutSlot(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, body []byte, slot uint8) {
		name := fzSlots[int(slot)%len(fzSlots)]
		path := "/spaces/" + e.spaceID + "/sessions/" + e.rootID + "/" + name
		r := e.do(http.MethodPut, path, body, nil)
		if fzCheck(t, r, []string{"content"}, http.StatusOK) == http.StatusOK {
			var sent, got struct{ Content *string }
			if json.Unmarshal(body, &sent) == nil && sent.Content != nil {
				_ = json.Unmarshal(r.body, &got)
				if got.Content == nil || *got.Content != *sent.Content {
					t.Fatalf("%s sent as %q answered %v: %s", name, *sent.Content, got.Content, r)
				}
			}
		}
		fzWantBadField(t, r, fzBadStrings(body, "content"))
	})
}

// fzQueryInt reports whether v is a valid paging parameter: absent, or a
// non-negative integer.
func fzQueryInt(v string) bool {
	if v == "" {
		return true
	}
	n, err := strconv.Atoi(v)
	return err == nil && n >= 0
}

func FuzzRESTMessagesQuery(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, limit, offset string) {
		q := url.Values{}
		if limit != "" {
			q.Set("limit", limit)
		}
		if offset != "" {
			q.Set("offset", offset)
		}
		r := e.do(http.MethodGet, "/spaces/"+e.spaceID+"/sessions/"+e.rootID+"/messages?"+q.Encode(), nil, nil)
		status := fzCheck(t, r, []string{"limit", "offset"}, http.StatusOK)
		valid := fzQueryInt(limit) && fzQueryInt(offset)
		if valid && status != http.StatusOK {
			t.Fatalf("valid paging limit=%q offset=%q refused: %s", limit, offset, r)
		}
		if !valid && status != http.StatusBadRequest {
			t.Fatalf("invalid paging limit=%q offset=%q must be 400: %s", limit, offset, r)
		}
		if status == http.StatusOK {
			var msgs []json.RawMessage
			if err := json.Unmarshal(r.body, &msgs); err != nil {
				t.Fatalf("messages are not a JSON array: %s", r)
			}
		}
	})
}

// FuzzRESTTurnIfBusy fuzzes the ifBusy query parameter of a turn. Until the
// parameter is implemented it is ignored; the property holds either way: no
// 500, and a 400 names ifBusy.
func FuzzRESTTurnIfBusy(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, ifBusy string) {
		sp, root, err := e.turnTarget()
		if err != nil {
			t.Fatalf("turn target: %v", err)
		}
		q := url.Values{"ifBusy": {ifBusy}}
		r := e.do(http.MethodPost, "/spaces/"+sp+"/sessions/"+root+"/turn?"+q.Encode(), []byte(`{"input":"hello"}`), nil)
		status := fzCheck(t, r, []string{"ifBusy"}, http.StatusOK)
		switch ifBusy {
		case "", "enqueue", "reject", "interrupt":
			if status != http.StatusOK && status != http.StatusConflict {
				t.Fatalf("ifBusy=%q refused: %s", ifBusy, r)
			}
		}
	})
}

// fzIDRoutes are the requests a path id reaches; each is a method and a
// path with {space} and {session} in it.
var fzIDRoutes = []struct{ method, path, body string }{
	{"GET", "/spaces/{space}", ""},
	{"PATCH", "/spaces/{space}", `{"label":"renamed"}`},
	{"GET", "/spaces/{space}/sessions", ""},
	{"POST", "/spaces/{space}/integrate", ""},
	{"GET", "/spaces/{space}/sessions/{session}", ""},
	{"GET", "/spaces/{space}/sessions/{session}/messages", ""},
	{"POST", "/spaces/{space}/sessions/{session}/turn", `{"input":"hi"}`},
	{"POST", "/spaces/{space}/sessions/{session}/fork", `{"label":"child"}`},
	{"POST", "/spaces/{space}/sessions/{session}/archive", ""},
	{"POST", "/spaces/{space}/sessions/{session}/consolidate", ""},
	{"GET", "/spaces/{space}/sessions/{session}/memory", ""},
	{"PUT", "/spaces/{space}/sessions/{session}/system-prompt", `{"content":"p"}`},
	{"DELETE", "/spaces/{space}", ""},
	{"WS", "/spaces/{space}/ws", ""},
}

func FuzzRESTPathIDs(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, spaceID, sessionID string, route uint8) {
		rt := fzIDRoutes[int(route)%len(fzIDRoutes)]
		spaceID, sessionID = e.fzSubst(spaceID), e.fzSubst(sessionID)
		if spaceID == "" || sessionID == "" {
			return // an empty segment is another route, not an id
		}
		if rt.method == "DELETE" && spaceID == e.spaceID {
			return // the shared space must stay
		}
		if rt.method == "POST" && strings.HasSuffix(rt.path, "/archive") && sessionID != e.rootID && fzCanonical(sessionID) {
			return // archiving a real child would be fine, but keep the tree stable
		}
		path := strings.NewReplacer("{space}", url.PathEscape(spaceID), "{session}", url.PathEscape(sessionID)).Replace(rt.path)
		var r fzResp
		if rt.method == "WS" {
			r = e.wsHandshake(path, http.Header{"X-API-Key": {e.key}})
		} else {
			var body []byte
			if rt.body != "" {
				body = []byte(rt.body)
			}
			r = e.do(rt.method, path, body, nil)
		}
		status := fzCheck(t, r, nil, http.StatusOK, http.StatusCreated, http.StatusNoContent, http.StatusSwitchingProtocols)
		usesSession := strings.Contains(rt.path, "{session}")
		if !fzCanonical(spaceID) || (usesSession && !fzCanonical(sessionID)) {
			if status != http.StatusNotFound {
				t.Fatalf("space id %q, session id %q are not canonical UUIDs: want 404 NOT_FOUND, got %s", spaceID, sessionID, r)
			}
		}
	})
}

// wsHandshake dials a WebSocket and reports the handshake's answer as a
// response (101 with an empty body on success; the connection is closed).
func (e *fzEnv) wsHandshake(path string, hdr http.Header) fzResp {
	return e.wsHandshakeWith(websocket.DefaultDialer, path, hdr)
}

func (e *fzEnv) wsHandshakeWith(d *websocket.Dialer, path string, hdr http.Header) fzResp {
	out := fzResp{method: "WS", path: path}
	u := "ws" + strings.TrimPrefix(e.st.URL, "http") + path
	c, res, err := d.Dial(u, hdr)
	if c != nil {
		_ = c.Close()
	}
	if res != nil {
		out.status, out.header = res.StatusCode, res.Header
		if res.Body != nil {
			var b bytes.Buffer
			_, _ = b.ReadFrom(res.Body)
			_ = res.Body.Close()
			out.body = b.Bytes()
		}
		return out
	}
	out.err = err
	return out
}

// fzKeyPlaces are where a key can be put.
var fzKeyPlaces = []string{"X-API-Key", "Authorization", "subprotocol"}

func FuzzAPIKey(f *testing.F) {
	e := newFzEnv(f)
	f.Fuzz(func(t *testing.T, key string, place uint8) {
		key = e.fzSubst(key)
		where := fzKeyPlaces[int(place)%len(fzKeyPlaces)]
		var r fzResp
		var sent string
		switch where {
		case "X-API-Key":
			sent = key
		case "Authorization":
			sent = "Bearer " + key
		case "subprotocol":
			sent = "stello.v1, stello.key." + key
		}
		if !fzValidHeader(sent) {
			return // no HTTP client can send it
		}
		if where == "subprotocol" {
			r = e.wsHandshake("/spaces/"+e.spaceID+"/ws", http.Header{"Sec-WebSocket-Protocol": {sent}})
		} else {
			hdr := map[string]string{"X-API-Key": ""}
			if sent != "" {
				hdr[where] = sent
			}
			r = e.do(http.MethodGet, "/spaces/"+e.spaceID, nil, hdr)
		}
		status := fzCheck(t, r, nil, http.StatusOK, http.StatusSwitchingProtocols)
		if status < 300 && !strings.Contains(key, e.key) {
			t.Fatalf("key %q was accepted: %s", key, r)
		}
		// 503 is the documented answer when lookups of unknown keys are
		// over their rate (the fuzzer itself floods them).
		rateLimited := status == http.StatusServiceUnavailable && strings.Contains(r.String(), "unknown API keys")
		if status >= 300 && status != http.StatusUnauthorized && !rateLimited && !(where == "subprotocol" && status == http.StatusBadRequest) {
			t.Fatalf("key %q: want 401 UNAUTHORIZED, got %s", key, r)
		}
		if strings.Trim(key, " \t") == e.key && where != "subprotocol" && status != http.StatusOK {
			t.Fatalf("the valid key was refused: %s", r)
		}
	})
}
