package pgstore_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
)

// completedLog is the row of a completed turn of the session.
func completedLog(spaceID, sessionID, input, reply, key string) *session.TurnLog {
	return &session.TurnLog{ID: uuid.Must(uuid.NewV7()).String(), SpaceID: spaceID, SessionID: sessionID,
		State: session.TurnCompleted, Input: input, IdempotencyKey: key, CreatedAt: now(), FinalContent: ptr(reply),
		ToolRoundCount: 1, ToolCallsExecuted: 2, RawResponse: `{"content":"` + reply + `"}`}
}

// commitLogged commits a turn with its row in the turn log and returns the
// row.
func commitLogged(t *testing.T, st *pgstore.Store, spaceID, sessionID, input, key string) session.TurnLog {
	t.Helper()
	l := completedLog(spaceID, sessionID, input, "re: "+input, key)
	_, _, err := st.CommitTurn(t.Context(), session.TurnCommit{SpaceID: spaceID, SessionID: sessionID,
		Records: []session.Record{userRec(input), assistantRec("re: " + input)}, At: now(), Log: l})
	require.NoError(t, err)
	return *l
}

// failedLog is the row of a failed turn of the session.
func failedLog(spaceID, sessionID, key string) session.TurnLog {
	fin := now()
	return session.TurnLog{ID: uuid.Must(uuid.NewV7()).String(), SpaceID: spaceID, SessionID: sessionID,
		State: session.TurnFailed, Input: "x", IdempotencyKey: key, CreatedAt: fin.Add(-time.Second), FinishedAt: &fin,
		ErrorCode: "LLM_ERROR", ErrorMessage: "the model failed"}
}

func TestCommitTurnLogsTheTurn(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")

	l := commitLogged(t, st, sp.ID, root.Meta.ID, "hello", "k1")
	got, err := st.TurnLog(ctx, sp.ID, root.Meta.ID, l.ID)
	require.NoError(t, err)
	require.NotNil(t, got.FinishedAt)
	assert.Equal(t, l.CreatedAt, got.CreatedAt)
	got.FinishedAt = nil
	assert.Equal(t, l, got)
	assert.Equal(t, 1, sessionByID(t, st, sp.ID, root.Meta.ID).Meta.TurnCount)

	byKey, ok, err := st.CompletedTurnByKey(ctx, sp.ID, root.Meta.ID, "k1")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, l.ID, byKey.ID)

	_, err = st.TurnLog(ctx, sp.ID, uuid.NewString(), l.ID)
	assert.ErrorIs(t, err, session.ErrNotFound, "another session")
	_, err = st.TurnLog(ctx, uuid.NewString(), root.Meta.ID, l.ID)
	assert.ErrorIs(t, err, session.ErrNotFound, "another space")
}

// A key names at most one completed turn of a session: a second turn that
// completes with it commits nothing; failed turns may reuse it.
func TestCommitTurnIdempotencyKeyConflict(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	first := commitLogged(t, st, sp.ID, root.Meta.ID, "hello", "k1")

	second := completedLog(sp.ID, root.Meta.ID, "again", "re: again", "k1")
	_, ids, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID,
		Records: []session.Record{userRec("again"), assistantRec("re: again")}, At: now(), Log: second})
	require.ErrorIs(t, err, session.ErrConflict)
	assert.Nil(t, ids)
	recs, err := st.ListRecords(ctx, sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"hello", "re: hello"}, contents(recs), "nothing of the conflicting turn is stored")
	assert.Equal(t, 1, sessionByID(t, st, sp.ID, root.Meta.ID).Meta.TurnCount)
	_, err = st.TurnLog(ctx, sp.ID, root.Meta.ID, second.ID)
	assert.ErrorIs(t, err, session.ErrNotFound)

	// The same key in another session is another key.
	other := newChild(t, st, sp.ID, root, 0, "other")
	commitLogged(t, st, sp.ID, other.Meta.ID, "hello", "k1")

	// Failed turns may carry a key already used.
	require.NoError(t, st.LogTurn(ctx, failedLog(sp.ID, root.Meta.ID, "k1")))
	require.NoError(t, st.LogTurn(ctx, failedLog(sp.ID, root.Meta.ID, "k1")))
	byKey, ok, err := st.CompletedTurnByKey(ctx, sp.ID, root.Meta.ID, "k1")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, first.ID, byKey.ID)
	assert.Equal(t, 3, count(t, st, "SELECT count(*) FROM turns WHERE session_id = $1", root.Meta.ID))
}

// A turn whose commit reached the database although its caller saw an
// error is then logged as failed: it stays completed.
func TestLogTurnKeepsACommittedTurn(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	l := commitLogged(t, st, sp.ID, root.Meta.ID, "hello", "")

	f := failedLog(sp.ID, root.Meta.ID, "")
	f.ID = l.ID
	require.NoError(t, st.LogTurn(ctx, f))
	got, err := st.TurnLog(ctx, sp.ID, root.Meta.ID, l.ID)
	require.NoError(t, err)
	assert.Equal(t, session.TurnCompleted, got.State)
	assert.Equal(t, "re: hello", *got.FinalContent)
	assert.Empty(t, got.ErrorCode)
}

// No turn row outlives its session: a turn of a session that does not
// exist (or no longer does) is not logged.
func TestTurnLogNeedsItsSession(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	gone := uuid.NewString()

	assert.ErrorIs(t, st.LogTurn(ctx, failedLog(sp.ID, gone, "")), session.ErrNotFound)
	assert.ErrorIs(t, st.LogTurn(ctx, failedLog(uuid.NewString(), root.Meta.ID, "")), session.ErrNotFound,
		"the session of another space")
	// A commit of a session that does not exist fails, with no row left
	// behind, even when it carries no record to fail on.
	for _, recs := range [][]session.Record{nil, {userRec("q"), assistantRec("a")}} {
		_, _, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: gone, Records: recs, At: now(),
			Log: completedLog(sp.ID, gone, "q", "a", "")})
		require.Error(t, err)
	}
	assert.Zero(t, count(t, st, "SELECT count(*) FROM turns"))
}

// Deleting a space, or its user, deletes its turn log (every session's
// turns, completed and failed) and nothing else.
func TestTurnsDeletedWithTheirSpace(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	alice, _ := newUser(t, st, "alice")
	bob, _ := newUser(t, st, "bob")

	fill := func(userID, label string) (string, session.TurnLog) {
		sp, root := newSpace(t, st, userID, label)
		c := newChild(t, st, sp.ID, root, 0, "child")
		g := newChild(t, st, sp.ID, c, 0, "grandchild")
		l := commitLogged(t, st, sp.ID, root.Meta.ID, "hello", "k")
		commitLogged(t, st, sp.ID, c.Meta.ID, "hi", "")
		commitLogged(t, st, sp.ID, g.Meta.ID, "deep", "k")
		require.NoError(t, st.LogTurn(ctx, failedLog(sp.ID, g.Meta.ID, "")))
		return sp.ID, l
	}
	turns := func(spaceID string) int {
		return count(t, st, "SELECT count(*) FROM turns WHERE space_id = $1", spaceID)
	}
	doomed, _ := fill(alice, "doomed")
	kept, keptTurn := fill(alice, "kept")
	bobs, _ := fill(bob, "bob's")
	for _, sp := range []string{doomed, kept, bobs} {
		require.Equal(t, 4, turns(sp))
	}

	require.NoError(t, st.DeleteSpace(ctx, doomed))
	assert.Zero(t, turns(doomed))
	assert.Equal(t, 4, turns(kept))
	got, err := st.TurnLog(ctx, kept, keptTurn.SessionID, keptTurn.ID)
	require.NoError(t, err)
	assert.Equal(t, keptTurn.ID, got.ID)

	_, err = st.Pool().Exec(ctx, "DELETE FROM users WHERE id = $1", bob)
	require.NoError(t, err)
	assert.Zero(t, turns(bobs))
	assert.Equal(t, 4, turns(kept), "another user's turns stay")
	assert.Equal(t, 4, count(t, st, "SELECT count(*) FROM turns"))
}

// A space deleted while a turn's commit is in flight: the commit's batch
// and the delete both wait on the session row (held here by another
// transaction, so that the order is known); the commit goes first, the
// delete waits for it, and its trigger then deletes the turn's row with
// the rest: no turn row outlives its session.
func TestTurnCommittedDuringADelete(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	waiting := func(n int, why string) {
		t.Helper()
		require.Eventually(t, func() bool {
			var got int
			err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got)
			return err == nil && got == n
		}, 10*time.Second, 10*time.Millisecond, why)
	}

	blocker, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = blocker.Rollback(ctx) }()
	_, err = blocker.Exec(ctx, "SELECT 1 FROM sessions WHERE space_id = $1 AND id = $2 FOR UPDATE", sp.ID, root.Meta.ID)
	require.NoError(t, err)

	l := completedLog(sp.ID, root.Meta.ID, "q", "a", "")
	committed := make(chan error, 1)
	go func() {
		_, _, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID,
			Records: []session.Record{userRec("q"), assistantRec("a")}, At: now(), Log: l})
		committed <- err
	}()
	waiting(1, "the commit waits on the session row")
	deleted := make(chan error, 1)
	go func() { deleted <- st.DeleteSpace(ctx, sp.ID) }()
	waiting(2, "the delete waits behind it")
	require.NoError(t, blocker.Rollback(ctx))

	for name, ch := range map[string]chan error{"commit": committed, "delete": deleted} {
		select {
		case err := <-ch:
			require.NoError(t, err, name)
		case <-time.After(10 * time.Second):
			t.Fatalf("the %s did not finish", name)
		}
	}
	assert.Zero(t, count(t, st, "SELECT count(*) FROM turns"))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM records"))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM sessions"))
}
