package space_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// spEnv is a Manager over a real database with the fake model.
type spEnv struct {
	ctx   context.Context
	store *pgstore.Store
	mgr   *space.Manager
	uid   string
}

func newSpEnv(t *testing.T, opts space.Options) *spEnv {
	t.Helper()
	st := testutil.Store(t)
	e := &spEnv{ctx: context.Background(), store: st}
	e.mgr = space.NewManager(opts, st, session.NewEngine(st, fake.New(fake.Config{}), nil, session.Options{}), nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.mgr.Close(ctx)
	})
	e.uid = e.user(t, "owner")
	return e
}

func (e *spEnv) user(t *testing.T, name string) string {
	t.Helper()
	u, _, err := e.store.CreateUser(e.ctx, name)
	require.NoError(t, err)
	return u.ID
}

// space creates a space and returns its id and root session id, without
// touching its actor.
func (e *spEnv) space(t *testing.T, in session.SpaceInput) (string, string) {
	t.Helper()
	sp, err := e.mgr.CreateSpace(e.ctx, e.uid, in)
	require.NoError(t, err)
	_, states, err := e.store.LoadSpace(e.ctx, sp.ID)
	require.NoError(t, err)
	require.Len(t, states, 1)
	return sp.ID, states[0].Meta.ID
}

func (e *spEnv) resident(spaceID string) bool {
	_, ok := e.mgr.System().Lookup(spaceID)
	return ok
}

// spConn is a fake connection that records how it was closed.
type spConn struct {
	mu     sync.Mutex
	closes []spClose
}

type spClose struct {
	code   int
	reason string
}

func (c *spConn) CloseWith(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closes = append(c.closes, spClose{code, reason})
}

func (c *spConn) closed() []spClose {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]spClose(nil), c.closes...)
}

// spSnapshot is everything readable of a space through the Manager, as
// JSON so that times compare by instant.
func spSnapshot(t *testing.T, e *spEnv, spaceID string) string {
	t.Helper()
	sp, err := e.mgr.GetSpace(e.ctx, e.uid, spaceID)
	require.NoError(t, err)
	tree, err := e.mgr.Tree(e.ctx, e.uid, spaceID)
	require.NoError(t, err)
	type sess struct {
		View     space.SessionView
		Records  []session.Record
		Slots    map[session.Slot]*string
		Children []string
	}
	out := struct {
		Space    session.Space
		Tree     *space.TreeNode
		Sessions map[string]sess
	}{Space: sp, Tree: tree, Sessions: map[string]sess{}}
	var walk func(n *space.TreeNode)
	walk = func(n *space.TreeNode) {
		id := n.Meta.ID
		v, err := e.mgr.Session(e.ctx, e.uid, spaceID, id)
		require.NoError(t, err)
		recs, err := e.mgr.Messages(e.ctx, e.uid, spaceID, id, 0, 0)
		require.NoError(t, err)
		s := sess{View: v, Records: recs, Slots: map[session.Slot]*string{}}
		for _, slot := range []session.Slot{session.SlotSystemPrompt, session.SlotMemory, session.SlotInsight,
			session.SlotConsolidatePrompt, session.SlotIntegratePrompt} {
			s.Slots[slot], err = e.mgr.Slot(e.ctx, e.uid, spaceID, id, slot)
			require.NoError(t, err)
		}
		for _, c := range n.Children {
			s.Children = append(s.Children, c.Meta.ID)
			walk(c)
		}
		out.Sessions[id] = s
	}
	walk(tree)
	b, err := json.Marshal(out)
	require.NoError(t, err)
	return string(b)
}

func TestManagerActorsStartLazily(t *testing.T) {
	t.Parallel()
	e := newSpEnv(t, space.Options{})
	s1, _ := e.space(t, session.SpaceInput{Label: "one"})
	s2, _ := e.space(t, session.SpaceInput{Label: "two"})
	list, err := e.mgr.ListSpaces(e.ctx, e.uid)
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, 0, e.mgr.Len(), "creating and listing spaces starts no actor")

	sp, err := e.mgr.GetSpace(e.ctx, e.uid, s1)
	require.NoError(t, err)
	assert.Equal(t, "one", sp.Label)
	assert.Equal(t, 1, e.mgr.Len())
	assert.True(t, e.resident(s1))
	assert.False(t, e.resident(s2))

	_, err = e.mgr.Tree(e.ctx, e.uid, s1)
	require.NoError(t, err)
	assert.Equal(t, 1, e.mgr.Len(), "the next request reuses the actor")
	assert.Equal(t, uint64(1), e.mgr.System().Stats().Started)

	_, err = e.mgr.GetSpace(e.ctx, e.uid, s2)
	require.NoError(t, err)
	assert.Equal(t, 2, e.mgr.Len())

	// An unknown space is not found, and its actor does not stay.
	_, err = e.mgr.GetSpace(e.ctx, e.uid, uuid.NewString())
	require.ErrorIs(t, err, session.ErrNotFound)
	require.Eventually(t, func() bool { return e.mgr.Len() == 2 }, 5*time.Second, 5*time.Millisecond)
	// A non-UUID id never reaches the actor system.
	_, err = e.mgr.GetSpace(e.ctx, e.uid, "nope")
	require.ErrorIs(t, err, session.ErrNotFound)
	_, err = e.mgr.Turn(e.ctx, e.uid, "nope", uuid.NewString(), "hi", nil)
	require.ErrorIs(t, err, session.ErrNotFound)
	assert.Equal(t, 2, e.mgr.Len())
	// Another user's space is forbidden.
	other := e.user(t, "other")
	_, err = e.mgr.GetSpace(e.ctx, other, s1)
	require.ErrorIs(t, err, session.ErrForbidden)
}

func TestManagerIdleEvictionKeepsEverything(t *testing.T) {
	t.Parallel()
	// A consolidation schedules a background integration; a short delay
	// lets it run (with the fake model it rewrites the same content) before
	// the actor may go idle.
	e := newSpEnv(t, space.Options{IdleTTL: 50 * time.Millisecond, IntegrateDelay: 5 * time.Millisecond})
	spID, root := e.space(t, session.SpaceInput{Label: "keep", SystemPrompt: ptr("root prompt"),
		ConsolidatePrompt: ptr("space consolidate"), IntegratePrompt: ptr("space integrate"),
		Config: json.RawMessage(`{"k":"v"}`)})
	ctx, uid := e.ctx, e.uid

	// Build a tree with data in every slot.
	a, err := e.mgr.Fork(ctx, uid, spID, root, session.ForkOptions{Label: "a", Scope: ptr("scope a")})
	require.NoError(t, err)
	b, err := e.mgr.Fork(ctx, uid, spID, root, session.ForkOptions{Label: "b", SystemPrompt: ptr("b prompt")})
	require.NoError(t, err)
	a1, err := e.mgr.Fork(ctx, uid, spID, a.ID, session.ForkOptions{Label: "a1", Prompt: ptr("opening")})
	require.NoError(t, err)
	for i, sid := range []string{root, a.ID, a.ID, b.ID, a1.ID} {
		_, err := e.mgr.Turn(ctx, uid, spID, sid, "input "+string(rune('A'+i)), nil)
		require.NoError(t, err)
	}
	_, err = e.mgr.SetSlot(ctx, uid, spID, a.ID, session.SlotConsolidatePrompt, "a consolidate")
	require.NoError(t, err)
	_, err = e.mgr.SetSlot(ctx, uid, spID, root, session.SlotIntegratePrompt, "root integrate")
	require.NoError(t, err)
	_, err = e.mgr.SetSlot(ctx, uid, spID, b.ID, session.SlotSystemPrompt, "")
	require.NoError(t, err)
	mem, err := e.mgr.Consolidate(ctx, uid, spID, a.ID)
	require.NoError(t, err)
	require.NotNil(t, mem)
	integ, err := e.mgr.Integrate(ctx, uid, spID)
	require.NoError(t, err)
	require.True(t, integ.Written)
	_, err = e.mgr.UpdateSpace(ctx, uid, spID, session.SpacePatch{Label: ptr("kept"), SystemPrompt: ptr("new root prompt"), SetSystemPrompt: true})
	require.NoError(t, err)
	_, err = e.mgr.Archive(ctx, uid, spID, b.ID)
	require.NoError(t, err)

	before := spSnapshot(t, e, spID)
	insight, err := e.mgr.Slot(ctx, uid, spID, a.ID, session.SlotInsight)
	require.NoError(t, err)
	require.NotNil(t, insight, "integration left an insight for a")
	started := e.mgr.System().Stats().Started

	require.Eventually(t, func() bool { return !e.resident(spID) }, 5*time.Second, 5*time.Millisecond, "the idle actor is evicted")
	assert.Equal(t, 0, e.mgr.Len())
	assert.GreaterOrEqual(t, e.mgr.System().Stats().Evictions, uint64(1))

	after := spSnapshot(t, e, spID)
	assert.JSONEq(t, before, after, "a reloaded actor sees exactly what the evicted one held")
	assert.Greater(t, e.mgr.System().Stats().Started, started, "the requests restarted the actor")

	// The reloaded actor carries on: turn counts continue, the pending
	// insight is consumed once, archived stays archived, new forks take the
	// next index.
	res, err := e.mgr.Turn(ctx, uid, spID, a.ID, "after reload", nil)
	require.NoError(t, err)
	assert.Equal(t, 3, res.TurnCount)
	got, err := e.mgr.Slot(ctx, uid, spID, a.ID, session.SlotInsight)
	require.NoError(t, err)
	assert.Nil(t, got)
	_, err = e.mgr.Turn(ctx, uid, spID, b.ID, "archived", nil)
	require.ErrorIs(t, err, session.ErrArchived)
	c, err := e.mgr.Fork(ctx, uid, spID, root, session.ForkOptions{Label: "c"})
	require.NoError(t, err)
	assert.Equal(t, 2, c.Index)
	tree, err := e.mgr.Tree(ctx, uid, spID)
	require.NoError(t, err)
	require.Len(t, tree.Children, 3)
	assert.Equal(t, []string{a.ID, b.ID, c.ID}, []string{tree.Children[0].Meta.ID, tree.Children[1].Meta.ID, tree.Children[2].Meta.ID})
	recs, err := e.mgr.Messages(ctx, uid, spID, a.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, recs, 6)
	assert.Equal(t, "after reload", recs[4].Content)
}

func TestManagerAttachedConnectionPreventsEviction(t *testing.T) {
	t.Parallel()
	e := newSpEnv(t, space.Options{IdleTTL: 50 * time.Millisecond})
	withConn, _ := e.space(t, session.SpaceInput{Label: "with"})
	without, _ := e.space(t, session.SpaceInput{Label: "without"})
	conn := &spConn{}
	require.NoError(t, e.mgr.Attach(e.ctx, e.uid, withConn, conn))
	_, err := e.mgr.GetSpace(e.ctx, e.uid, without)
	require.NoError(t, err)

	require.Eventually(t, func() bool { return !e.resident(without) }, 5*time.Second, 5*time.Millisecond)
	// Many TTLs later the space with a connection is still resident.
	require.Never(t, func() bool { return !e.resident(withConn) }, 400*time.Millisecond, 10*time.Millisecond)
	n, err := e.mgr.Conns(e.ctx, withConn)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Empty(t, conn.closed(), "eviction never closes a connection")

	e.mgr.Detach(withConn, conn)
	require.Eventually(t, func() bool { return !e.resident(withConn) }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 0, e.mgr.Len())
	assert.Empty(t, conn.closed())

	// Attaching to another user's space is refused.
	other := e.user(t, "other")
	require.ErrorIs(t, e.mgr.Attach(e.ctx, other, withConn, &spConn{}), session.ErrForbidden)
	n, err = e.mgr.Conns(e.ctx, withConn)
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestManagerDeleteSpaceClosesConnections(t *testing.T) {
	t.Parallel()
	e := newSpEnv(t, space.Options{})
	doomed, root := e.space(t, session.SpaceInput{Label: "doomed"})
	kept, _ := e.space(t, session.SpaceInput{Label: "kept"})
	c1, c2, c3 := &spConn{}, &spConn{}, &spConn{}
	require.NoError(t, e.mgr.Attach(e.ctx, e.uid, doomed, c1))
	require.NoError(t, e.mgr.Attach(e.ctx, e.uid, doomed, c2))
	require.NoError(t, e.mgr.Attach(e.ctx, e.uid, kept, c3))
	_, err := e.mgr.Turn(e.ctx, e.uid, doomed, root, "hello", nil)
	require.NoError(t, err)
	require.Equal(t, 2, e.mgr.Len())

	// Another user may not delete it; nothing is closed.
	other := e.user(t, "other")
	require.ErrorIs(t, e.mgr.DeleteSpace(e.ctx, other, doomed), session.ErrForbidden)
	assert.Empty(t, c1.closed())

	require.NoError(t, e.mgr.DeleteSpace(e.ctx, e.uid, doomed))
	for _, c := range []*spConn{c1, c2} {
		cl := c.closed()
		require.Len(t, cl, 1)
		assert.Equal(t, space.CloseDeleted, cl[0].code)
		assert.Equal(t, 4404, cl[0].code)
		assert.NotEmpty(t, cl[0].reason)
	}
	assert.Empty(t, c3.closed(), "other spaces' connections stay open")
	require.Eventually(t, func() bool { return !e.resident(doomed) }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, e.mgr.Len())

	_, err = e.mgr.GetSpace(e.ctx, e.uid, doomed)
	require.ErrorIs(t, err, session.ErrNotFound)
	_, err = e.mgr.Turn(e.ctx, e.uid, doomed, root, "again", nil)
	require.ErrorIs(t, err, session.ErrNotFound)
	require.ErrorIs(t, e.mgr.DeleteSpace(e.ctx, e.uid, doomed), session.ErrNotFound)
	_, _, err = e.store.LoadSpace(e.ctx, doomed)
	require.ErrorIs(t, err, session.ErrNotFound)
	require.Eventually(t, func() bool { return e.mgr.Len() == 1 }, 5*time.Second, 5*time.Millisecond)
	n, err := e.mgr.Conns(e.ctx, kept)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

// spHold blocks the space actor's goroutine and returns the function that
// releases it.
func spHold(t *testing.T, e *spEnv, spaceID, sessionID string) func() {
	t.Helper()
	release, err := space.HoldActor(e.mgr, spaceID)
	require.NoError(t, err)
	var once sync.Once
	r := func() { once.Do(release) }
	t.Cleanup(r)
	return r
}

// TestManagerMailboxFullIsBusy: with MailboxSize 1, while the actor is busy
// and one message waits, the next request is refused with session.ErrBusy
// at once rather than queued; the waiting one completes afterwards.
func TestManagerMailboxFullIsBusy(t *testing.T) {
	t.Parallel()
	e := newSpEnv(t, space.Options{MailboxSize: 1})
	spID, root := e.space(t, session.SpaceInput{Label: "busy"})
	_, err := e.mgr.GetSpace(e.ctx, e.uid, spID) // load the actor
	require.NoError(t, err)

	release := spHold(t, e, spID, root)
	waiting := make(chan error, 1)
	go func() {
		_, err := e.mgr.Tree(e.ctx, e.uid, spID)
		waiting <- err
	}()
	require.Eventually(t, func() bool { return e.mgr.System().Stats().Queued == 1 }, 5*time.Second, 2*time.Millisecond)
	busyBefore := e.mgr.System().Stats().Busy

	_, err = e.mgr.GetSpace(e.ctx, e.uid, spID)
	require.ErrorIs(t, err, session.ErrBusy)
	_, err = e.mgr.Turn(e.ctx, e.uid, spID, root, "hi", nil)
	require.ErrorIs(t, err, session.ErrBusy)
	_, err = e.mgr.SetSlot(e.ctx, e.uid, spID, root, session.SlotSystemPrompt, "refused")
	require.ErrorIs(t, err, session.ErrBusy)
	assert.Equal(t, busyBefore+3, e.mgr.System().Stats().Busy)
	select {
	case err := <-waiting:
		t.Fatalf("the queued request finished while the actor was held: %v", err)
	default:
	}

	release()
	require.NoError(t, <-waiting)
	got, err := e.mgr.Slot(e.ctx, e.uid, spID, root, session.SlotSystemPrompt)
	require.NoError(t, err)
	assert.Nil(t, got, "the refused write did not happen")
	recs, err := e.mgr.Messages(e.ctx, e.uid, spID, root, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, recs, "the refused turn did not run")
	res, err := e.mgr.Turn(e.ctx, e.uid, spID, root, "now", nil)
	require.NoError(t, err)
	assert.Equal(t, 1, res.TurnCount)
	assert.False(t, errors.Is(err, session.ErrBusy))
}

func ptr(s string) *string { return &s }
