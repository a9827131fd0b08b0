package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/pgstore/pgtest"
)

// openWS opens a space's WebSocket with key and waits until the server has
// registered it: one exchange (leaving before entering is refused with
// NOT_ENTERED).
func openWS(t *testing.T, p *serveProc, key, spaceID string) *client.Conn {
	t.Helper()
	conn, err := p.api(key).Dial(callCtx(t), spaceID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	requireOpen(t, conn)
	return conn
}

// requireOpen requires the connection to still answer.
func requireOpen(t *testing.T, conn *client.Conn) {
	t.Helper()
	err := conn.Leave(callCtx(t))
	require.ErrorIs(t, err, client.ErrNotEntered, "the connection answers")
}

// closeCode waits until the connection ends before deadline and returns
// its close code (0 when it ended without a close frame, or did not end).
func closeCode(t *testing.T, conn *client.Conn, deadline time.Time) int {
	t.Helper()
	select {
	case <-conn.Done():
	case <-time.After(time.Until(deadline)):
		t.Log("the connection did not end in time")
		return 0
	}
	ce := conn.CloseError()
	if ce == nil {
		t.Log("connection ended without a close frame")
		return 0
	}
	return ce.Code
}

// untilStatus polls GET /spaces with key until it answers want, or the
// deadline passes; it returns the last status.
func untilStatus(t *testing.T, p *serveProc, key string, want int, deadline time.Time) int {
	t.Helper()
	c := p.api(key)
	for {
		code := http.StatusOK
		if _, err := c.ListSpaces(callCtx(t)); err != nil {
			var apiErr *client.Error
			require.ErrorAs(t, err, &apiErr, "an answer of the server")
			code = apiErr.Status
		}
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

	_, err := p.api(otherKey).ListSpaces(callCtx(t))
	assert.NoError(t, err, "another user's key")
	requireOpen(t, otherWS) // another user's WebSocket stays open
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
	_, err := p.api(newKey).ListSpaces(callCtx(t))
	assert.NoError(t, err, "the new key")
	requireOpen(t, newWS) // the new key's WebSocket stays open
}
