package transport_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/transport"
)

// isoRoute is one request on a session-scoped route; the body is valid, so
// that only the ids decide the answer.
type isoRoute struct {
	name, method, suffix, body string
	hdr                        []string
}

var isoSessionRoutes = []isoRoute{
	{name: "GET meta", method: "GET"},
	{name: "GET messages", method: "GET", suffix: "/messages"},
	{name: "GET messages paged", method: "GET", suffix: "/messages?limit=1&offset=1"},
	{name: "POST turn", method: "POST", suffix: "/turn", body: `{"input":"leak?"}`},
	{name: "POST turn streaming", method: "POST", suffix: "/turn", body: `{"input":"leak?"}`, hdr: []string{"Accept", "text/event-stream"}},
	{name: "POST fork", method: "POST", suffix: "/fork", body: `{"label":"intruder","context":"inherit","prompt":"hi"}`},
	{name: "POST archive", method: "POST", suffix: "/archive"},
	{name: "POST consolidate", method: "POST", suffix: "/consolidate"},
	{name: "GET system-prompt", method: "GET", suffix: "/system-prompt"},
	{name: "PUT system-prompt", method: "PUT", suffix: "/system-prompt", body: `{"content":"hacked"}`},
	{name: "GET memory", method: "GET", suffix: "/memory"},
	{name: "GET insight", method: "GET", suffix: "/insight"},
	{name: "GET consolidate-prompt", method: "GET", suffix: "/consolidate-prompt"},
	{name: "PUT consolidate-prompt", method: "PUT", suffix: "/consolidate-prompt", body: `{"content":"hacked"}`},
	{name: "GET integrate-prompt", method: "GET", suffix: "/integrate-prompt"},
	{name: "PUT integrate-prompt", method: "PUT", suffix: "/integrate-prompt", body: `{"content":"hacked"}`},
}

// isoSnapshot is everything a user can read of a space.
type isoSnapshot struct {
	Space    transport.Space
	Tree     transport.TreeNode
	Sessions map[string]isoSession
	Records  int
}

type isoSession struct {
	Meta     transport.SessionMeta
	Messages []transport.Message
	Slots    map[string]*string
}

func isoSnap(t *testing.T, e *restEnv, c restClient, spaceID string, sessions ...string) isoSnapshot {
	t.Helper()
	s := isoSnapshot{
		Space:    restOK[transport.Space](t, c.do("GET", "/spaces/"+spaceID, nil), http.StatusOK),
		Tree:     restOK[transport.TreeNode](t, c.do("GET", "/spaces/"+spaceID+"/sessions", nil), http.StatusOK),
		Sessions: map[string]isoSession{},
	}
	for _, sid := range sessions {
		is := isoSession{
			Meta:     restOK[transport.SessionMeta](t, c.do("GET", "/spaces/"+spaceID+"/sessions/"+sid, nil), http.StatusOK),
			Messages: e.messages(t, c, spaceID, sid),
			Slots:    map[string]*string{},
		}
		for _, slot := range []string{"system-prompt", "memory", "insight", "consolidate-prompt", "integrate-prompt"} {
			is.Slots[slot] = e.slot(t, c, spaceID, sid, slot)
		}
		s.Sessions[sid] = is
	}
	require.NoError(t, e.stack.Store.Pool().QueryRow(context.Background(),
		"SELECT count(*) FROM records WHERE space_id = $1", spaceID).Scan(&s.Records))
	return s
}

// isoWorld is user A with space SA (root RA, child CA) and user B with space
// SB (root RB, child CB), all with data in every slot that can be written.
type isoWorld struct {
	e             *restEnv
	a, b          restClient
	sa, ra, ca    string
	sb, rb, cb    string
	beforeA, befB isoSnapshot
	sessionsOfA   []string
	sessionsOfB   []string
}

func newIsoWorld(t *testing.T) *isoWorld {
	t.Helper()
	e := newRESTEnv(t, testutil.StackOptions{})
	_, b := e.user(t, "bob")
	w := &isoWorld{e: e, a: e.c, b: b}
	seed := func(c restClient, label string) (string, string, string) {
		sp, root := e.space(t, c, map[string]any{"label": label, "systemPrompt": label + " system",
			"consolidatePrompt": label + " consolidate", "integratePrompt": label + " integrate"})
		child := e.fork(t, c, sp.ID, root, map[string]any{"label": label + " child", "scope": label + " scope"})
		for _, sid := range []string{root, child.ID} {
			e.turn(t, c, sp.ID, sid, label+" says hello")
			for _, slot := range []string{"consolidate-prompt", "integrate-prompt"} {
				restOK[transport.Content](t, c.do("PUT", "/spaces/"+sp.ID+"/sessions/"+sid+"/"+slot,
					map[string]any{"content": label + " " + slot + " of " + sid}), http.StatusOK)
			}
		}
		restOK[transport.Content](t, c.do("POST", "/spaces/"+sp.ID+"/sessions/"+child.ID+"/consolidate", nil), http.StatusOK)
		restOK[map[string]any](t, c.do("POST", "/spaces/"+sp.ID+"/integrate", nil), http.StatusOK)
		return sp.ID, root, child.ID
	}
	w.sa, w.ra, w.ca = seed(w.a, "A")
	w.sb, w.rb, w.cb = seed(w.b, "B")
	w.sessionsOfA = []string{w.ra, w.ca}
	w.sessionsOfB = []string{w.rb, w.cb}
	w.beforeA = isoSnap(t, e, w.a, w.sa, w.sessionsOfA...)
	w.befB = isoSnap(t, e, w.b, w.sb, w.sessionsOfB...)
	// The seeding wrote every slot the checks below watch.
	require.NotNil(t, w.beforeA.Sessions[w.ca].Slots["memory"])
	require.NotNil(t, w.beforeA.Sessions[w.ca].Slots["insight"])
	require.NotNil(t, w.beforeA.Sessions[w.ra].Slots["memory"])
	require.Len(t, w.beforeA.Sessions[w.ra].Messages, 2)
	return w
}

// unchanged asserts that neither user's data changed.
func (w *isoWorld) unchanged(t *testing.T) {
	t.Helper()
	assert.Equal(t, w.beforeA, isoSnap(t, w.e, w.a, w.sa, w.sessionsOfA...), "A's data changed")
	assert.Equal(t, w.befB, isoSnap(t, w.e, w.b, w.sb, w.sessionsOfB...), "B's data changed")
}

func isoBody(body string) any {
	if body == "" {
		return nil
	}
	return body
}

// TestIsolationSessionOfAnotherSpace puts a session id of another space
// into the path of a space the caller owns: every session-scoped route
// answers 404 and neither space changes.
func TestIsolationSessionOfAnotherSpace(t *testing.T) {
	t.Parallel()
	w := newIsoWorld(t)
	type probe struct {
		name      string
		c         restClient
		spaceID   string
		sessionID string
	}
	probes := []probe{
		{"B in SB with A's root", w.b, w.sb, w.ra},
		{"B in SB with A's child", w.b, w.sb, w.ca},
		{"A in SA with B's root", w.a, w.sa, w.rb},
		{"A in SA with B's child", w.a, w.sa, w.cb},
	}
	for _, p := range probes {
		for _, r := range isoSessionRoutes {
			t.Run(p.name+"/"+r.name, func(t *testing.T) {
				res := p.c.do(r.method, "/spaces/"+p.spaceID+"/sessions/"+p.sessionID+r.suffix, isoBody(r.body), r.hdr...)
				msg := restErr(t, res, http.StatusNotFound, "NOT_FOUND")
				for _, secret := range []string{"A says", "B says", "A system", "B system", "hacked"} {
					assert.NotContains(t, msg, secret)
				}
			})
		}
	}
	w.unchanged(t)
	// The prober's own space works normally afterwards.
	restOK[transport.SessionMeta](t, w.b.do("GET", "/spaces/"+w.sb+"/sessions/"+w.rb, nil), http.StatusOK)
}

// TestIsolationSpaceOfAnotherUser sends B's key to A's space: every route
// answers 403, whatever session id is in the path, and nothing changes.
func TestIsolationSpaceOfAnotherUser(t *testing.T) {
	t.Parallel()
	w := newIsoWorld(t)
	sa := "/spaces/" + w.sa
	routes := []isoRoute{
		{name: "GET space", method: "GET"},
		{name: "PATCH space", method: "PATCH", body: `{"label":"mine now","systemPrompt":"hacked"}`},
		{name: "DELETE space", method: "DELETE"},
		{name: "GET tree", method: "GET", suffix: "/sessions"},
		{name: "POST integrate", method: "POST", suffix: "/integrate"},
		{name: "ws upgrade", method: "GET", suffix: "/ws", hdr: []string{"Connection", "Upgrade", "Upgrade", "websocket",
			"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}},
	}
	for _, sid := range []string{w.ra, w.ca, w.rb} {
		for _, r := range isoSessionRoutes {
			r.name = sid[:8] + " " + r.name
			r.suffix = "/sessions/" + sid + r.suffix
			routes = append(routes, r)
		}
	}
	for _, r := range routes {
		t.Run(r.name, func(t *testing.T) {
			res := w.b.do(r.method, sa+r.suffix, isoBody(r.body), r.hdr...)
			msg := restErr(t, res, http.StatusForbidden, "FORBIDDEN")
			assert.NotContains(t, msg, "A system")
			assert.False(t, strings.Contains(string(res.Body), "A says"))
		})
	}
	w.unchanged(t)
	n, err := w.e.stack.Spaces.Conns(context.Background(), w.sa)
	require.NoError(t, err)
	assert.Zero(t, n, "no connection was attached to A's space")

	// A still owns and uses the space.
	restOK[transport.TurnResult](t, w.a.do("POST", sa+"/sessions/"+w.ca+"/turn", map[string]any{"input": "still mine"}), http.StatusOK)
	list := restOK[[]transport.Space](t, w.b.do("GET", "/spaces", nil), http.StatusOK)
	require.Len(t, list, 1)
	assert.Equal(t, w.sb, list[0].ID, "B lists only B's spaces")
}
