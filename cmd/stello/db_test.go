package main

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/pgstore/pgtest"
)

// With PostgreSQL frozen (SIGSTOP), REST reads and writes answer
// 503 UNAVAILABLE within --db-statement-timeout instead of hanging, and the
// same server works again once the database continues.
func TestServeFrozenDatabaseAnswersUnavailableThenRecovers(t *testing.T) {
	t.Parallel()
	pg := pgtest.NewInstance(t)
	p := startServe(t, "--database-url", pg.URL(), "--db-statement-timeout", "1s")
	_, key := createUser(t, pg.URL(), "frozen")
	createSpace(t, p, key, "before") // also caches the key

	pg.Pause(t)
	var wg sync.WaitGroup
	for _, req := range []struct{ method, path, body string }{
		{http.MethodGet, "/spaces", ""},
		{http.MethodPost, "/spaces", `{"label":"during"}`},
		{http.MethodGet, "/spaces", ""},
		{http.MethodPost, "/spaces", `{"label":"during"}`},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			code, body := httpDo(t, req.method, p.url(req.path), key, req.body)
			took := time.Since(begin)
			assert.Equal(t, http.StatusServiceUnavailable, code, "%s %s: %s", req.method, req.path, body)
			var e struct{ Code string }
			_ = json.Unmarshal([]byte(body), &e)
			assert.Equal(t, "UNAVAILABLE", e.Code, body)
			assert.Less(t, took, 5*time.Second, "%s %s answered after %v", req.method, req.path, took)
		}()
	}
	wg.Wait()
	pg.Resume(t)

	require.Eventually(t, func() bool {
		code, _ := httpDo(t, http.MethodGet, p.url("/spaces"), key, "")
		return code == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond)
	createSpace(t, p, key, "after")
}
