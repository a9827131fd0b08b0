// Package testutil builds Stello's real parts for tests: a migrated
// PostgreSQL database per test (the throwaway instance of pgtest), and a
// whole server stack over it.
package testutil

import (
	"context"
	"testing"

	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
)

// MigratedURL returns the URL of a fresh database with every migration
// applied, cloned from a template migrated once per test process.
func MigratedURL(t testing.TB) string {
	t.Helper()
	return pgtest.NewDatabaseFromTemplate(t, "stello-migrated", func(ctx context.Context, url string) error {
		st, err := pgstore.Open(ctx, url, pgstore.PoolOptions{MaxConns: 2})
		if err != nil {
			return err
		}
		defer st.Close()
		_, err = st.Migrate(ctx)
		return err
	})
}

// Store returns a store over a fresh migrated database, closed at cleanup.
func Store(t testing.TB) *pgstore.Store {
	t.Helper()
	st, err := pgstore.Open(context.Background(), MigratedURL(t), pgstore.PoolOptions{MaxConns: 16})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}
