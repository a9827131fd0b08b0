package main

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
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

	c := p.api(key)
	list := func(ctx context.Context) error { _, err := c.ListSpaces(ctx); return err }
	create := func(ctx context.Context) error {
		_, err := c.CreateSpace(ctx, client.SpaceInput{Label: "during"})
		return err
	}
	pg.Pause(t)
	var wg sync.WaitGroup
	for _, req := range []struct {
		what string
		do   func(context.Context) error
	}{{"GET /spaces", list}, {"POST /spaces", create}, {"GET /spaces", list}, {"POST /spaces", create}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			begin := time.Now()
			err := req.do(ctx)
			took := time.Since(begin)
			var apiErr *client.Error
			if assert.ErrorAs(t, err, &apiErr, req.what) {
				assert.Equal(t, http.StatusServiceUnavailable, apiErr.Status, "%s: %v", req.what, err)
				assert.Equal(t, "UNAVAILABLE", apiErr.Code, "%s: %v", req.what, err)
			}
			assert.Less(t, took, 5*time.Second, "%s answered after %v", req.what, took)
		}()
	}
	wg.Wait()
	pg.Resume(t)

	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return list(ctx) == nil
	}, 30*time.Second, 50*time.Millisecond)
	createSpace(t, p, key, "after")
}
