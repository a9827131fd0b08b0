package pgstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
	"github.com/stellohq/stello/session"
)

// A frozen database (every PostgreSQL process stopped with SIGSTOP: the
// connections stay open, nothing answers) fails reads, writes and waits
// for a pooled connection with ErrUnavailable within the statement
// timeout, instead of hanging; once the database continues, the same store
// works again.
func TestFrozenDatabaseIsUnavailableWithinTheStatementTimeoutThenRecovers(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	pg := pgtest.NewInstance(t)
	st, err := pgstore.Open(t.Context(), pg.URL(), pgstore.PoolOptions{MaxConns: 3, StatementTimeout: timeout})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(t.Context())
	require.NoError(t, err)
	u, _, err := st.CreateUser(t.Context(), "before")
	require.NoError(t, err)

	// The server-side half: every connection has the statement timeout.
	var setting string
	require.NoError(t, st.Pool().QueryRow(t.Context(), "SHOW statement_timeout").Scan(&setting))
	assert.Equal(t, "1s", setting)

	ops := map[string]func(ctx context.Context) error{
		"read users": func(ctx context.Context) error { _, err := st.ListUsers(ctx); return err },
		"read key":   func(ctx context.Context) error { _, err := st.UserByKey(ctx, "sk_stello_unknown"); return err },
		"write user": func(ctx context.Context) error { _, _, err := st.CreateUser(ctx, "during"); return err },
		"write keys": func(ctx context.Context) error { _, err := st.RotateKey(ctx, u.ID); return err },
	}

	pg.Pause(t)
	// Twice as many callers as connections: half of them wait for a
	// connection, and that wait is bounded too.
	var wg sync.WaitGroup
	for round := range 2 {
		for name, op := range ops {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Far longer than the bound: without it the call would
				// fail with this context's deadline, not ErrUnavailable.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				begin := time.Now()
				err := op(ctx)
				took := time.Since(begin)
				assert.ErrorIs(t, err, pgstore.ErrUnavailable, "%s #%d: %v", name, round, err)
				// One bound for the connection wait plus one for the
				// statement, and scheduling slack for a loaded machine.
				assert.Less(t, took, 2*timeout+3*time.Second, "%s #%d answered after %v", name, round, took)
			}()
		}
	}
	wg.Wait()
	pg.Resume(t)

	// Without a restart, the store works again.
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := st.ListUsers(ctx)
		return err == nil
	}, 30*time.Second, 50*time.Millisecond)
	for name, op := range ops {
		err := op(t.Context())
		if name == "read key" {
			assert.ErrorIs(t, err, session.ErrNotFound)
			continue
		}
		assert.NoError(t, err, name)
	}
}

// Migrations may outlast the statement timeout: here the wait for another
// migrator's advisory lock lasts three times as long.
func TestMigrateIgnoresTheStatementTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	url := pgtest.NewDatabase(t)
	st, err := pgstore.Open(t.Context(), url, pgstore.PoolOptions{MaxConns: 2, StatementTimeout: timeout})
	require.NoError(t, err)
	t.Cleanup(st.Close)

	holder, err := pgx.Connect(t.Context(), url)
	require.NoError(t, err)
	defer holder.Close(context.Background())
	const migrationLockID = 0x5741_1e11_0000_0001 // pgstore's advisory lock key
	_, err = holder.Exec(t.Context(), "SELECT pg_advisory_lock($1)", int64(migrationLockID))
	require.NoError(t, err)
	released := make(chan error, 1)
	go func() {
		time.Sleep(3 * timeout)
		_, err := holder.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", int64(migrationLockID))
		released <- err
	}()
	_, err = st.Migrate(t.Context())
	require.NoError(t, err)
	require.NoError(t, <-released)

	// Afterwards the pool's connections have the timeout again.
	var setting string
	require.NoError(t, st.Pool().QueryRow(t.Context(), "SHOW statement_timeout").Scan(&setting))
	assert.Equal(t, "300ms", setting)
}
