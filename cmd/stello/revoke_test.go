package main

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/pgstore/pgtest"
)

// openWS opens a space's WebSocket with key and waits until the server has
// registered it (one exchange).
func openWS(t *testing.T, p *serveProc, key, spaceID string) *websocket.Conn {
	t.Helper()
	hdr := http.Header{}
	hdr.Set("X-API-Key", key)
	ws, res, err := websocket.DefaultDialer.DialContext(t.Context(), "ws://"+p.addr+"/spaces/"+spaceID+"/ws", hdr)
	require.NoError(t, err)
	res.Body.Close()
	t.Cleanup(func() { ws.Close() })
	require.NoError(t, ws.WriteJSON(map[string]string{"type": "no.such.type", "id": "probe"}))
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(30*time.Second)))
	var reply map[string]any
	require.NoError(t, ws.ReadJSON(&reply))
	require.Equal(t, "probe", reply["id"])
	return ws
}

// closeCode reads until the connection ends before deadline and returns
// its close code (0 when it ended without a close frame, or did not end).
func closeCode(t *testing.T, ws *websocket.Conn, deadline time.Time) int {
	t.Helper()
	require.NoError(t, ws.SetReadDeadline(deadline))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			t.Logf("connection ended without a close frame: %v", err)
			return 0
		}
	}
}

// untilStatus polls GET /spaces with key until it answers want, or the
// deadline passes; it returns the last status.
func untilStatus(t *testing.T, p *serveProc, key string, want int, deadline time.Time) int {
	t.Helper()
	for {
		code, _ := httpDo(t, http.MethodGet, p.url("/spaces"), key, "")
		if code == want || time.Now().After(deadline) {
			return code
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// `stello keys revoke` reaches a running server within a second, although
// its key cache would remember the key for 30 s: REST answers 401 and a
// WebSocket opened with the key is closed with 4401. Another user's
// connection stays open.
func TestKeysRevokeReachesServerWithinASecond(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	p := startServe(t, "--database-url", url, "--key-cache-ttl", "30s")
	id, key := createUser(t, url, "alice")
	_, otherKey := createUser(t, url, "bob")
	space := createSpace(t, p, key, "revoked")
	otherSpace := createSpace(t, p, otherKey, "kept")
	ws := openWS(t, p, key, space)
	otherWS := openWS(t, p, otherKey, otherSpace)

	cliOK(t, "keys", "revoke", "--user", id, "--database-url", url)
	revoked := time.Now()
	assert.Equal(t, 4401, closeCode(t, ws, revoked.Add(time.Second)), "close code of the revoked key's WebSocket")
	assert.Equal(t, http.StatusUnauthorized, untilStatus(t, p, key, http.StatusUnauthorized, revoked.Add(time.Second)))

	code, _ := httpDo(t, http.MethodGet, p.url("/spaces"), otherKey, "")
	assert.Equal(t, http.StatusOK, code, "another user's key")
	require.NoError(t, otherWS.WriteJSON(map[string]string{"type": "no.such.type", "id": "still-open"}))
	var reply map[string]any
	require.NoError(t, otherWS.ReadJSON(&reply), "another user's WebSocket stays open")
	assert.Equal(t, "still-open", reply["id"])
}

// `stello keys rotate` closes WebSockets opened with the old key with 4401
// and the old key answers 401 within a second; the new key works, and a
// WebSocket opened with it stays open.
func TestKeysRotateReachesServerWithinASecond(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	p := startServe(t, "--database-url", url, "--key-cache-ttl", "30s")
	id, oldKey := createUser(t, url, "alice")
	space := createSpace(t, p, oldKey, "rotated")
	oldWS := openWS(t, p, oldKey, space)

	out := cliOK(t, "keys", "rotate", "--user", id, "--json", "--database-url", url)
	rotated := time.Now()
	var got map[string]string
	decodeLine(t, out, &got)
	newKey := got["apiKey"]
	require.NotEmpty(t, newKey)
	newWS := openWS(t, p, newKey, space)

	assert.Equal(t, 4401, closeCode(t, oldWS, rotated.Add(time.Second)), "close code of the old key's WebSocket")
	assert.Equal(t, http.StatusUnauthorized, untilStatus(t, p, oldKey, http.StatusUnauthorized, rotated.Add(time.Second)))
	code, body := httpDo(t, http.MethodGet, p.url("/spaces"), newKey, "")
	assert.Equal(t, http.StatusOK, code, body)
	require.NoError(t, newWS.WriteJSON(map[string]string{"type": "no.such.type", "id": "new"}))
	var reply map[string]any
	require.NoError(t, newWS.SetReadDeadline(time.Now().Add(10*time.Second)))
	require.NoError(t, newWS.ReadJSON(&reply), "the new key's WebSocket stays open")
	assert.Equal(t, "new", reply["id"])
}
