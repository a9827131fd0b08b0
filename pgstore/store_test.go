package pgstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
	"github.com/stellohq/stello/session"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }

// ---- helpers shared by the pgstore tests ----

func ptr[T any](v T) *T { return &v }

func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// count runs a SELECT count(*) … query.
func count(t *testing.T, st *pgstore.Store, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, st.Pool().QueryRow(t.Context(), sql, args...).Scan(&n), sql)
	return n
}

func newUser(t *testing.T, st *pgstore.Store, name string) (string, string) {
	t.Helper()
	u, key, err := st.CreateUser(t.Context(), name)
	require.NoError(t, err)
	return u.ID, key
}

func newSpace(t *testing.T, st *pgstore.Store, userID, label string) (session.Space, session.State) {
	t.Helper()
	sp, root, err := st.CreateSpace(t.Context(), userID, session.SpaceInput{Label: label, SystemPrompt: ptr("prompt of " + label)})
	require.NoError(t, err)
	return sp, root
}

// childState builds a forked session of parent.
func childState(spaceID string, parent session.State, idx int, label string) session.State {
	t := now()
	pid := parent.Meta.ID
	return session.State{
		Meta: session.Meta{ID: uuid.NewString(), SpaceID: spaceID, ParentID: &pid, SourceSessionID: &pid, Label: label,
			Role: session.RoleStandard, Status: session.StatusActive, Depth: parent.Meta.Depth + 1, Index: idx,
			CreatedAt: t, UpdatedAt: t, LastActiveAt: t},
		Data: session.Data{SystemPrompt: parent.Data.SystemPrompt},
	}
}

func newChild(t *testing.T, st *pgstore.Store, spaceID string, parent session.State, idx int, label string) session.State {
	t.Helper()
	c := childState(spaceID, parent, idx, label)
	require.NoError(t, st.CreateSession(t.Context(), c, false, nil))
	return c
}

func commit(t *testing.T, st *pgstore.Store, spaceID, sessionID string, recs ...session.Record) (int, []int64) {
	t.Helper()
	n, ids, err := st.CommitTurn(t.Context(), session.TurnCommit{SpaceID: spaceID, SessionID: sessionID, Records: recs, At: now()})
	require.NoError(t, err)
	return n, ids
}

func userRec(s string) session.Record { return session.Record{Role: llm.RoleUser, Content: s} }
func assistantRec(s string) session.Record {
	return session.Record{Role: llm.RoleAssistant, Content: s}
}

func contents(recs []session.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Content
	}
	return out
}

// sessionByID loads the space and returns one of its sessions.
func sessionByID(t *testing.T, st *pgstore.Store, spaceID, id string) session.State {
	t.Helper()
	_, sessions, err := st.LoadSpace(t.Context(), spaceID)
	require.NoError(t, err)
	for _, s := range sessions {
		if s.Meta.ID == id {
			return s
		}
	}
	t.Fatalf("session %s not in space %s", id, spaceID)
	return session.State{}
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// ---- migrations ----

var schemaTables = []string{"users", "api_keys", "spaces", "sessions", "session_data", "records", "space_kv", "schema_migrations"}

func allVersions(t *testing.T) []int {
	t.Helper()
	ms, err := pgstore.Migrations()
	require.NoError(t, err)
	require.NotEmpty(t, ms)
	var vs []int
	for i, m := range ms {
		if i > 0 {
			require.Greater(t, m.Version, ms[i-1].Version, "migrations are in order")
		}
		require.NotEmpty(t, m.SQL)
		vs = append(vs, m.Version)
	}
	return vs
}

func openURL(t *testing.T, url string) *pgstore.Store {
	t.Helper()
	st, err := pgstore.Open(t.Context(), url, pgstore.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	return st
}

func TestMigrateEmptyDatabaseThenIdempotent(t *testing.T) {
	t.Parallel()
	st := openURL(t, pgtest.NewDatabase(t))
	ctx := t.Context()

	var exists bool
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT to_regclass('users') IS NOT NULL").Scan(&exists))
	require.False(t, exists, "the database starts empty")

	applied, err := st.Migrate(ctx)
	require.NoError(t, err)
	assert.Equal(t, allVersions(t), applied)
	for _, table := range schemaTables {
		require.NoError(t, st.Pool().QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists))
		assert.True(t, exists, "table %s exists after Migrate", table)
	}
	assert.Equal(t, len(applied), count(t, st, "SELECT count(*) FROM schema_migrations"))

	again, err := st.Migrate(ctx)
	require.NoError(t, err)
	assert.Empty(t, again, "a second Migrate applies nothing")
	assert.Equal(t, len(applied), count(t, st, "SELECT count(*) FROM schema_migrations"))

	// The migrated schema works.
	uid, key := newUser(t, st, "after-migrate")
	got, err := st.UserByKey(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, uid, got)
}

func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	const n = 4
	stores := make([]*pgstore.Store, n)
	for i := range stores {
		stores[i] = openURL(t, url)
	}
	results := make([][]int, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = stores[i].Migrate(context.Background())
		}()
	}
	close(start)
	wg.Wait()

	var appliedAll []int
	for i := range n {
		require.NoError(t, errs[i], "migrator %d", i)
		appliedAll = append(appliedAll, results[i]...)
	}
	sort.Ints(appliedAll)
	assert.Equal(t, allVersions(t), appliedAll, "every version applied by exactly one migrator")

	rows, err := stores[0].Pool().Query(t.Context(), "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
	require.NoError(t, err)
	var recorded []int
	for rows.Next() {
		var v, c int
		require.NoError(t, rows.Scan(&v, &c))
		assert.Equal(t, 1, c, "version %d recorded once", v)
		recorded = append(recorded, v)
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, allVersions(t), recorded)
}

// ---- users and keys ----

func TestCreateUserStoresOnlyKeyHash(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	u, key, err := st.CreateUser(ctx, "alice")
	require.NoError(t, err)
	require.NoError(t, uuid.Validate(u.ID))
	assert.Equal(t, "alice", u.Name)
	assert.Equal(t, 1, u.ActiveKeys)
	assert.Regexp(t, `^`+pgstore.KeyPrefix+`[A-Za-z0-9_-]{43}$`, key)

	// The plain key appears nowhere in api_keys (or users), in any column.
	assert.Zero(t, count(t, st, "SELECT count(*) FROM api_keys k WHERE strpos(k::text, $1) > 0", key))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM api_keys k WHERE strpos(k::text, $1) > 0", key[len(pgstore.KeyPrefix):]))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM users u WHERE strpos(u::text, $1) > 0", key[len(pgstore.KeyPrefix):]))
	var hash []byte
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT key_hash FROM api_keys WHERE user_id = $1", u.ID).Scan(&hash))
	assert.Equal(t, pgstore.HashKey(key), hash)
	assert.NotContains(t, string(hash), key)

	got, err := st.UserByKey(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, u.ID, got)

	// Two users never share a key.
	_, key2, err := st.CreateUser(ctx, "bob")
	require.NoError(t, err)
	assert.NotEqual(t, key, key2)
}

func TestUserByKeyUnknown(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	newUser(t, st, "alice")
	for _, key := range []string{"", "nope", pgstore.NewAPIKey()} {
		_, err := st.UserByKey(t.Context(), key)
		assert.ErrorIs(t, err, session.ErrNotFound, "key %q", key)
	}
}

func TestListUsers(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	us, err := st.ListUsers(ctx)
	require.NoError(t, err)
	assert.Empty(t, us)

	a, _ := newUser(t, st, "alice")
	b, _ := newUser(t, st, "bob")
	_, err = st.RevokeKeys(ctx, b)
	require.NoError(t, err)
	us, err = st.ListUsers(ctx)
	require.NoError(t, err)
	require.Len(t, us, 2)
	assert.Equal(t, []string{a, b}, []string{us[0].ID, us[1].ID}, "oldest first")
	assert.Equal(t, "alice", us[0].Name)
	assert.Equal(t, 1, us[0].ActiveKeys)
	assert.Equal(t, 0, us[1].ActiveKeys)
	assert.Equal(t, time.UTC, us[0].CreatedAt.Location())
}

func TestRevokeKeys(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, key := newUser(t, st, "alice")
	other, otherKey := newUser(t, st, "bob")

	n, err := st.RevokeKeys(ctx, uid)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	_, err = st.UserByKey(ctx, key)
	assert.ErrorIs(t, err, session.ErrNotFound)

	// Another user's key is untouched.
	got, err := st.UserByKey(ctx, otherKey)
	require.NoError(t, err)
	assert.Equal(t, other, got)

	// Revoking again revokes nothing, and is not an error.
	n, err = st.RevokeKeys(ctx, uid)
	require.NoError(t, err)
	assert.Equal(t, 0, n)
}

func TestRotateKey(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, old := newUser(t, st, "alice")

	key, err := st.RotateKey(ctx, uid)
	require.NoError(t, err)
	assert.NotEqual(t, old, key)
	_, err = st.UserByKey(ctx, old)
	assert.ErrorIs(t, err, session.ErrNotFound, "old key is dead")
	got, err := st.UserByKey(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, uid, got)

	key2, err := st.RotateKey(ctx, uid)
	require.NoError(t, err)
	_, err = st.UserByKey(ctx, key)
	assert.ErrorIs(t, err, session.ErrNotFound)
	got, err = st.UserByKey(ctx, key2)
	require.NoError(t, err)
	assert.Equal(t, uid, got)
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL", uid))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM api_keys k WHERE strpos(k::text, $1) > 0", key2[len(pgstore.KeyPrefix):]))
}

func TestKeysUnknownUser(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	_, key := newUser(t, st, "alice")
	for _, id := range []string{uuid.NewString(), "not-a-uuid", ""} {
		_, err := st.RevokeKeys(t.Context(), id)
		assert.ErrorIs(t, err, session.ErrNotFound, "revoke %q", id)
		_, err = st.RotateKey(t.Context(), id)
		assert.ErrorIs(t, err, session.ErrNotFound, "rotate %q", id)
	}
	// Nothing was created or revoked on the way.
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM api_keys"))
	_, err := st.UserByKey(t.Context(), key)
	assert.NoError(t, err)
}

// ---- space key/values ----

func TestSpaceValues(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a, _ := newSpace(t, st, uid, "A")
	b, _ := newSpace(t, st, uid, "B")

	_, err := st.SpaceValue(ctx, a.ID, "k")
	assert.ErrorIs(t, err, session.ErrNotFound)

	require.NoError(t, st.SetSpaceValue(ctx, a.ID, "k", json.RawMessage(`{"n":1,"s":"x"}`)))
	v, err := st.SpaceValue(ctx, a.ID, "k")
	require.NoError(t, err)
	assert.JSONEq(t, `{"n":1,"s":"x"}`, string(v))

	require.NoError(t, st.SetSpaceValue(ctx, a.ID, "k", json.RawMessage(`[1,2]`)))
	v, err = st.SpaceValue(ctx, a.ID, "k")
	require.NoError(t, err)
	assert.JSONEq(t, `[1,2]`, string(v), "a second set overwrites")

	_, err = st.SpaceValue(ctx, b.ID, "k")
	assert.ErrorIs(t, err, session.ErrNotFound, "values are per space")

	err = st.SetSpaceValue(ctx, uuid.NewString(), "k", json.RawMessage(`1`))
	assert.Error(t, err, "no value for a space that does not exist")
}
