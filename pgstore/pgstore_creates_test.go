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
	"github.com/stellohq/stello/session"
)

// Concurrent creates share transactions, and every one of them is stored
// whole: the space, its root session and its data slots.
func TestConcurrentCreatesAreAllStored(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "many")
	const clients, each = 32, 10
	var mu sync.Mutex
	made := map[string]session.State{}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				sp, root, err := st.CreateSpace(t.Context(), uid, session.SpaceInput{Label: fmt.Sprintf("s %d.%d", c, i),
					SystemPrompt: ptr(fmt.Sprintf("prompt %d.%d", c, i))})
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				made[sp.ID] = root
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Len(t, made, clients*each)
	assert.Equal(t, clients*each, count(t, st, "SELECT count(*) FROM spaces WHERE user_id = $1", uid))
	assert.Equal(t, clients*each, count(t, st, `SELECT count(*) FROM sessions s JOIN spaces p ON p.id = s.space_id
		WHERE p.user_id = $1 AND s.role = 'main' AND s.label = p.label AND s.parent_id IS NULL AND s.depth = 0`, uid))
	assert.Equal(t, clients*each, count(t, st, `SELECT count(*) FROM session_data d JOIN spaces p ON p.id = d.space_id
		WHERE p.user_id = $1 AND d.system_prompt = p.system_prompt`, uid))
	for id, root := range made {
		sp, sessions, err := st.LoadSpace(t.Context(), id)
		require.NoError(t, err)
		require.Len(t, sessions, 1)
		assert.Equal(t, root.Meta.ID, sessions[0].Meta.ID)
		assert.Equal(t, sp.Label, sessions[0].Meta.Label)
		assert.Equal(t, *sp.SystemPrompt, *sessions[0].Data.SystemPrompt)
		// The root is stored as CreateSpace returned it.
		got := sessions[0].Meta
		assert.Equal(t, root.Meta.Role, got.Role)
		assert.Equal(t, root.Meta.Status, got.Status)
		assert.Equal(t, root.Meta.Depth, got.Depth)
		assert.Equal(t, root.Meta.Index, got.Index)
		assert.Equal(t, root.Meta.TurnCount, got.TurnCount)
		assert.True(t, root.Meta.CreatedAt.Equal(got.CreatedAt), "created %v, stored %v", root.Meta.CreatedAt, got.CreatedAt)
		assert.True(t, root.Meta.LastActiveAt.Equal(got.LastActiveAt))
		break
	}
	groups, grouped := st.CreateGroups()
	t.Logf("%d creates in %d transactions (%d of them shared one)", clients*each, groups, grouped)
	assert.Less(t, groups, clients*each, "concurrent creates share transactions")
	assert.Positive(t, grouped)
}

// A create the database refuses fails on its own: the creates that waited
// with it are stored.
func TestABadCreateFailsAloneInItsGroup(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "group")
	release := st.HoldCreates()
	type outcome struct {
		label string
		err   error
	}
	out := make(chan outcome, 8)
	for i := range 8 {
		user := uid
		if i%3 == 1 {
			user = uuid.NewString() // no such user: the foreign key refuses it
		}
		label := fmt.Sprintf("g%d", i)
		go func() {
			_, _, err := st.CreateSpace(t.Context(), user, session.SpaceInput{Label: label})
			out <- outcome{label, err}
		}()
	}
	require.Eventually(t, func() bool { return st.PendingCreates() == 8 }, 10*time.Second, time.Millisecond)
	release()
	failed := map[string]bool{}
	for range 8 {
		o := <-out
		if o.err != nil {
			assert.ErrorContains(t, o.err, "create space")
			assert.ErrorContains(t, o.err, "foreign key")
			failed[o.label] = true
		}
	}
	assert.Equal(t, map[string]bool{"g1": true, "g4": true, "g7": true}, failed)
	assert.Equal(t, 5, count(t, st, "SELECT count(*) FROM spaces WHERE user_id = $1", uid))
	assert.Equal(t, 5, count(t, st, "SELECT count(*) FROM sessions s JOIN spaces p ON p.id = s.space_id WHERE p.user_id = $1", uid))
	groups, grouped := st.CreateGroups()
	assert.Equal(t, 1, groups, "the eight creates went out as one group")
	assert.Equal(t, 8, grouped)
}

// A create whose caller gives up while it waits for a flight returns at
// once and is never written.
func TestACreateCancelledWhileWaitingIsNotWritten(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "quitter")
	release := cancelWhileWaiting(t, st.HoldCreates, st.PendingCreates, func(ctx context.Context) error {
		_, _, err := st.CreateSpace(ctx, uid, session.SpaceInput{Label: "gone"})
		return err
	})
	assert.Zero(t, st.PendingCreates())
	release()
	// The flights work again, and the cancelled create is nowhere.
	_, _, err := st.CreateSpace(t.Context(), uid, session.SpaceInput{Label: "kept"})
	require.NoError(t, err)
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM spaces WHERE user_id = $1 AND label = 'gone'", uid))
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM spaces WHERE user_id = $1", uid))
}

// cancelWhileWaiting starts write while hold keeps its queue's flights,
// cancels write's context once it waits (pending counts the waiting
// writes), and requires it to return context.Canceled promptly. It returns
// hold's release.
func cancelWhileWaiting(t *testing.T, hold func() func(), pending func() int, write func(context.Context) error) (release func()) {
	t.Helper()
	release = hold()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- write(ctx) }()
	require.Eventually(t, func() bool { return pending() == 1 }, 10*time.Second, time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("a write cancelled while it waited kept waiting")
	}
	return release
}
