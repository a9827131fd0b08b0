package pgstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
)

// Turns of many sessions committing at once share transactions, and each
// gets its own records, ids, turn count and turn log row.
func TestConcurrentTurnCommitsAreEachStoredWhole(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "busy")
	const spaces, perSpace, turns = 4, 6, 8
	type target struct{ space, session string }
	var targets []target
	for i := range spaces {
		sp, root := newSpace(t, st, uid, fmt.Sprintf("S%d", i))
		targets = append(targets, target{sp.ID, root.Meta.ID})
		for j := 1; j < perSpace; j++ {
			targets = append(targets, target{sp.ID, newChild(t, st, sp.ID, root, j, fmt.Sprintf("c%d", j)).Meta.ID})
		}
	}
	var wg sync.WaitGroup
	for _, tg := range targets {
		wg.Go(func() {
			var last int64
			for n := 1; n <= turns; n++ {
				in := fmt.Sprintf("%s · %d · naïve ☕", tg.session, n)
				l := completedLog(tg.space, tg.session, in, "re: "+in, fmt.Sprintf("k%d", n))
				count, ids, err := st.CommitTurn(t.Context(), session.TurnCommit{SpaceID: tg.space, SessionID: tg.session,
					Records: []session.Record{userRec(in), assistantRec("re: " + in)}, ConsumedInsight: ptr("none"), At: now(), Log: l})
				if !assert.NoError(t, err) {
					return
				}
				assert.Equal(t, n, count, "turn count")
				if assert.Len(t, ids, 2) {
					assert.Greater(t, ids[1], ids[0], "ids in the order of the records")
					assert.Greater(t, ids[0], last, "ids grow with the session's turns")
					last = ids[1]
				}
			}
		})
	}
	wg.Wait()
	for _, tg := range targets {
		recs, err := st.ListRecords(t.Context(), tg.space, tg.session, 0, 0)
		require.NoError(t, err)
		require.Len(t, recs, 2*turns)
		for n := 1; n <= turns; n++ {
			in := fmt.Sprintf("%s · %d · naïve ☕", tg.session, n)
			assert.Equal(t, []string{in, "re: " + in}, contents(recs[2*n-2:2*n]), "turn %d in its place", n)
		}
		assert.Equal(t, turns, sessionByID(t, st, tg.space, tg.session).Meta.TurnCount)
		assert.Equal(t, turns, count(t, st, "SELECT count(*) FROM turns WHERE session_id = $1 AND state = 'completed'", tg.session))
	}
	groups, grouped := st.CommitGroups()
	t.Logf("%d commits in %d transactions (%d of them shared one)", len(targets)*turns, groups, grouped)
	assert.Less(t, groups, len(targets)*turns, "concurrent commits share transactions")
}

// In a group, a commit the database refuses fails alone, with the error it
// would have had alone, and the others commit.
func TestARefusedCommitFailsAloneInItsGroup(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "mixed")
	sp, root := newSpace(t, st, uid, "S")
	other, _ := newSpace(t, st, uid, "O")
	a := newChild(t, st, sp.ID, root, 1, "a")
	b := newChild(t, st, sp.ID, root, 2, "b")
	c := newChild(t, st, sp.ID, root, 3, "c")
	commitLogged(t, st, sp.ID, a.Meta.ID, "first", "taken")
	require.NoError(t, st.SetSlot(ctx, sp.ID, c.Meta.ID, session.SlotInsight, ptr("tip")))

	stale := session.WithLease(ctx, session.Lease{NodeID: uuid.NewString(), Epoch: 7})
	cases := []struct {
		name      string
		ctx       context.Context
		space, id string
		key       string
		want      error
	}{
		{"idempotency key already completed", ctx, sp.ID, a.Meta.ID, "taken", session.ErrConflict},
		{"good b", ctx, sp.ID, b.Meta.ID, "", nil},
		{"lease lost", stale, sp.ID, root.Meta.ID, "", session.ErrLeaseLost},
		{"good c, insight consumed", ctx, sp.ID, c.Meta.ID, "", nil},
		{"session of another space", ctx, other.ID, b.Meta.ID, "", nil},
	}
	groups0, grouped0 := st.CommitGroups()
	release := st.HoldCommits()
	errs := make([]chan error, len(cases))
	for i, tc := range cases {
		errs[i] = make(chan error, 1)
		go func() {
			c := session.TurnCommit{SpaceID: tc.space, SessionID: tc.id, At: now(),
				Records: []session.Record{userRec("q " + tc.name), assistantRec("a " + tc.name)},
				Log:     completedLog(tc.space, tc.id, "q "+tc.name, "a "+tc.name, tc.key)}
			if tc.name == "good c, insight consumed" {
				c.ConsumedInsight = ptr("tip")
			}
			_, _, err := st.CommitTurn(tc.ctx, c)
			errs[i] <- err
		}()
		// One at a time, so that the group's order is the cases' order.
		require.Eventually(t, func() bool { return st.PendingCommits() == i+1 }, 10*time.Second, time.Millisecond)
	}
	release()
	for i, tc := range cases {
		err := <-errs[i]
		switch {
		case tc.want != nil:
			assert.ErrorIs(t, err, tc.want, tc.name)
		case tc.space == other.ID:
			assert.Equal(t, "23503", pgCode(err), "%s: %v", tc.name, err)
		default:
			assert.NoError(t, err, tc.name)
		}
	}
	groups, grouped := st.CommitGroups()
	assert.Equal(t, 1, groups-groups0, "one group, refused, then one write each")
	assert.Equal(t, len(cases), grouped-grouped0)

	assert.Equal(t, 1, sessionByID(t, st, sp.ID, a.Meta.ID).Meta.TurnCount, "a: only its first turn")
	assert.Equal(t, 1, sessionByID(t, st, sp.ID, b.Meta.ID).Meta.TurnCount)
	got := sessionByID(t, st, sp.ID, c.Meta.ID)
	assert.Equal(t, 1, got.Meta.TurnCount)
	assert.Nil(t, got.Data.Insight, "the consumed insight is cleared")
	assert.Equal(t, 0, sessionByID(t, st, sp.ID, root.Meta.ID).Meta.TurnCount, "nothing under the lost lease")
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM records WHERE space_id = $1", other.ID))
	assert.Equal(t, 2, count(t, st, "SELECT count(*) FROM records WHERE session_id = $1", a.Meta.ID))
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM turns WHERE session_id = $1", a.Meta.ID))
	assert.Equal(t, 2, count(t, st, "SELECT count(*) FROM records WHERE session_id = $1", b.Meta.ID))
}

// A commit whose turn is cancelled while it waits for a flight is never
// written, and reports the cancellation.
func TestACommitCancelledWhileWaitingIsNotWritten(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "quitter")
	sp, root := newSpace(t, st, uid, "S")
	release := cancelWhileWaiting(t, st.HoldCommits, st.PendingCommits, func(ctx context.Context) error {
		_, _, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID, At: now(),
			Records: []session.Record{userRec("q"), assistantRec("a")}})
		return err
	})
	release()
	commit(t, st, sp.ID, root.Meta.ID, userRec("kept"), assistantRec("ok"))
	recs, err := st.ListRecords(t.Context(), sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"kept", "ok"}, contents(recs))
	assert.Equal(t, 1, sessionByID(t, st, sp.ID, root.Meta.ID).Meta.TurnCount)
}

// Two commits of one session in one group (turns of a session are serial,
// so only a caller outside the actor could do this) are written one after
// the other, each whole.
func TestTwoCommitsOfOneSessionInAGroupAreBothWritten(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "twice")
	sp, root := newSpace(t, st, uid, "S")
	release := st.HoldCommits()
	type res struct {
		turns int
		ids   []int64
		err   error
	}
	out := make(chan res, 2)
	for i := range 2 {
		go func() {
			n, ids, err := st.CommitTurn(t.Context(), session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID, At: now(),
				Records: []session.Record{userRec(fmt.Sprintf("q%d", i)), assistantRec(fmt.Sprintf("a%d", i))}})
			out <- res{n, ids, err}
		}()
		require.Eventually(t, func() bool { return st.PendingCommits() == i+1 }, 10*time.Second, time.Millisecond)
	}
	release()
	counts := map[int]bool{}
	for range 2 {
		r := <-out
		require.NoError(t, r.err)
		assert.Len(t, r.ids, 2)
		counts[r.turns] = true
	}
	assert.Equal(t, map[int]bool{1: true, 2: true}, counts)
	recs, err := st.ListRecords(t.Context(), sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"q0", "a0", "q1", "a1"}, contents(recs))
}

// A commit that no flight takes within its wait (the database is not
// finishing the writes before it) fails as unavailable and is not written.
func TestACommitThatWaitsTooLongFailsUnavailable(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "patient")
	sp, root := newSpace(t, st, uid, "S")
	st.SetCommitWait(100 * time.Millisecond)
	release := st.HoldCommits()
	start := time.Now()
	_, _, err := st.CommitTurn(t.Context(), session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID, At: now(),
		Records: []session.Record{userRec("q"), assistantRec("a")}})
	require.ErrorIs(t, err, pgstore.ErrUnavailable)
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.Zero(t, st.PendingCommits())
	release()
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM records WHERE session_id = $1", root.Meta.ID))
	assert.Equal(t, 0, sessionByID(t, st, sp.ID, root.Meta.ID).Meta.TurnCount)
}
