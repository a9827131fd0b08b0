package pgstore_test

import (
	"context"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
)

// Losing the database is ErrUnavailable (503), whichever way it is lost:
// a closed pool, a server that refuses connections, or one that accepts
// them and then hangs up.
func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	closed := testutil.Store(t)
	closed.Close()
	_, err := closed.ListUsers(ctx)
	assert.ErrorIs(t, err, pgstore.ErrUnavailable, "closed pool: %v", err)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close() // hang up at once
		}
	}()
	pool, err := pgxpool.New(ctx, "postgres://stello@"+addr+"/stello?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	_, err = pgstore.New(pool).ListUsers(ctx)
	assert.ErrorIs(t, err, pgstore.ErrUnavailable, "server hangs up: %v", err)
	_ = ln.Close()
	_, err = pgstore.New(pool).ListUsers(ctx)
	assert.ErrorIs(t, err, pgstore.ErrUnavailable, "connection refused: %v", err)
}
