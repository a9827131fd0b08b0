package pgstore_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/session"
)

func TestWriteConsolidation(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	c := newChild(t, st, sp.ID, root, 0, "c")

	m, err := st.MemoryState(ctx, sp.ID, c.Meta.ID)
	require.NoError(t, err)
	assert.Equal(t, session.MemoryState{}, m, "a new session has no memory")

	v, ok, err := st.WriteConsolidation(ctx, sp.ID, c.Meta.ID, "mem 1", 0, 10)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(1), v)
	m, err = st.MemoryState(ctx, sp.ID, c.Meta.ID)
	require.NoError(t, err)
	assert.Equal(t, "mem 1", *m.Memory)
	assert.Equal(t, int64(1), m.Version)
	assert.Equal(t, int64(10), m.ConsolidatedThrough)

	// Stale version: nothing written.
	v, ok, err = st.WriteConsolidation(ctx, sp.ID, c.Meta.ID, "stale", 0, 20)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Zero(t, v)
	m, err = st.MemoryState(ctx, sp.ID, c.Meta.ID)
	require.NoError(t, err)
	assert.Equal(t, "mem 1", *m.Memory)
	assert.Equal(t, int64(1), m.Version)
	assert.Equal(t, int64(10), m.ConsolidatedThrough)

	// A write covering less never moves consolidated_through back.
	v, ok, err = st.WriteConsolidation(ctx, sp.ID, c.Meta.ID, "mem 2", 1, 5)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(2), v)
	m, err = st.MemoryState(ctx, sp.ID, c.Meta.ID)
	require.NoError(t, err)
	assert.Equal(t, "mem 2", *m.Memory)
	assert.Equal(t, int64(10), m.ConsolidatedThrough)

	// A user write of the memory slot makes a pending consolidation stale.
	require.NoError(t, st.SetSlot(ctx, sp.ID, c.Meta.ID, session.SlotMemory, ptr("by hand")))
	_, ok, err = st.WriteConsolidation(ctx, sp.ID, c.Meta.ID, "late", 2, 30)
	require.NoError(t, err)
	assert.False(t, ok)
	m, err = st.MemoryState(ctx, sp.ID, c.Meta.ID)
	require.NoError(t, err)
	assert.Equal(t, "by hand", *m.Memory)

	// Another space's id: nothing written.
	other, _ := newSpace(t, st, uid, "Other")
	_, ok, err = st.WriteConsolidation(ctx, other.ID, c.Meta.ID, "hijack", 3, 40)
	require.NoError(t, err)
	assert.False(t, ok)
	_, err = st.MemoryState(ctx, other.ID, c.Meta.ID)
	assert.ErrorIs(t, err, session.ErrNotFound)
	m, err = st.MemoryState(ctx, sp.ID, c.Meta.ID)
	require.NoError(t, err)
	assert.Equal(t, "by hand", *m.Memory)
}

func TestWriteIntegration(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	c1 := newChild(t, st, sp.ID, root, 0, "c1")
	c2 := newChild(t, st, sp.ID, root, 1, "c2")
	other, oroot := newSpace(t, st, uid, "Other")
	foreign := newChild(t, st, other.ID, oroot, 0, "foreign")

	insights := []session.Insight{
		{SessionID: c1.Meta.ID, Content: "tip 1"},
		{SessionID: foreign.Meta.ID, Content: "leak"},
		{SessionID: uuid.NewString(), Content: "nobody"},
		{SessionID: c2.Meta.ID, Content: "tip 2"},
	}
	v, written, ok, err := st.WriteIntegration(ctx, sp.ID, root.Meta.ID, "synthesis 1", 0, insights)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(1), v)
	assert.Equal(t, []string{c1.Meta.ID, c2.Meta.ID}, written)

	rootState := sessionByID(t, st, sp.ID, root.Meta.ID)
	assert.Equal(t, "synthesis 1", *rootState.Data.Memory)
	assert.Equal(t, int64(1), rootState.Data.MemoryVersion)
	assert.Equal(t, "tip 1", *sessionByID(t, st, sp.ID, c1.Meta.ID).Data.Insight)
	assert.Equal(t, "tip 2", *sessionByID(t, st, sp.ID, c2.Meta.ID).Data.Insight)
	assert.Nil(t, sessionByID(t, st, other.ID, foreign.Meta.ID).Data.Insight, "another space's session gets nothing")

	// Stale root version: nothing written, insights included.
	v, written, ok, err = st.WriteIntegration(ctx, sp.ID, root.Meta.ID, "synthesis stale", 0,
		[]session.Insight{{SessionID: c1.Meta.ID, Content: "stale tip"}})
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Zero(t, v)
	assert.Empty(t, written)
	rootState = sessionByID(t, st, sp.ID, root.Meta.ID)
	assert.Equal(t, "synthesis 1", *rootState.Data.Memory)
	assert.Equal(t, int64(1), rootState.Data.MemoryVersion)
	assert.Equal(t, "tip 1", *sessionByID(t, st, sp.ID, c1.Meta.ID).Data.Insight)

	// A root of another space cannot be written through this space.
	_, _, ok, err = st.WriteIntegration(ctx, sp.ID, oroot.Meta.ID, "cross", 0, nil)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.Nil(t, sessionByID(t, st, other.ID, oroot.Meta.ID).Data.Memory)

	// With the current version it writes again.
	v, written, ok, err = st.WriteIntegration(ctx, sp.ID, root.Meta.ID, "synthesis 2", 1, nil)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(2), v)
	assert.Empty(t, written)
	assert.Equal(t, "synthesis 2", *sessionByID(t, st, sp.ID, root.Meta.ID).Data.Memory)
}

func TestChildMemories(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	require.NoError(t, st.SetSlot(ctx, sp.ID, root.Meta.ID, session.SlotMemory, ptr("root memory")))
	c1 := newChild(t, st, sp.ID, root, 1, "c1")
	c0 := newChild(t, st, sp.ID, root, 0, "c0")
	gone := newChild(t, st, sp.ID, root, 2, "archived")
	g := newChild(t, st, sp.ID, c1, 0, "g")
	require.NoError(t, st.SetSlot(ctx, sp.ID, c1.Meta.ID, session.SlotMemory, ptr("m1")))
	require.NoError(t, st.SetSlot(ctx, sp.ID, g.Meta.ID, session.SlotMemory, ptr("mg")))
	require.NoError(t, st.SetSlot(ctx, sp.ID, gone.Meta.ID, session.SlotMemory, ptr("old")))
	_, err := st.ArchiveSession(ctx, sp.ID, gone.Meta.ID)
	require.NoError(t, err)
	other, oroot := newSpace(t, st, uid, "Other")
	newChild(t, st, other.ID, oroot, 0, "foreign")

	got, err := st.ChildMemories(ctx, sp.ID)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, session.ChildMemory{ID: c0.Meta.ID, Label: "c0"}, got[0])
	assert.Equal(t, session.ChildMemory{ID: c1.Meta.ID, Label: "c1", Memory: ptr("m1")}, got[1])
	assert.Equal(t, session.ChildMemory{ID: g.Meta.ID, Label: "g", Memory: ptr("mg")}, got[2])

	none, err := st.ChildMemories(ctx, uuid.NewString())
	require.NoError(t, err)
	assert.Empty(t, none)
}

func TestSaveSummaryKeepsLongerCoverage(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	summary := func() (string, int64) {
		m, err := st.MemoryState(ctx, sp.ID, root.Meta.ID)
		require.NoError(t, err)
		if m.Summary == nil {
			return "", m.SummaryThrough
		}
		return *m.Summary, m.SummaryThrough
	}

	require.NoError(t, st.SaveSummary(ctx, sp.ID, root.Meta.ID, "up to 10", 10))
	s, n := summary()
	assert.Equal(t, "up to 10", s)
	assert.Equal(t, int64(10), n)

	require.NoError(t, st.SaveSummary(ctx, sp.ID, root.Meta.ID, "up to 5", 5))
	s, n = summary()
	assert.Equal(t, "up to 10", s, "a shorter summary does not replace a longer one")
	assert.Equal(t, int64(10), n)

	require.NoError(t, st.SaveSummary(ctx, sp.ID, root.Meta.ID, "also 10", 10))
	s, _ = summary()
	assert.Equal(t, "up to 10", s)

	require.NoError(t, st.SaveSummary(ctx, sp.ID, root.Meta.ID, "up to 20", 20))
	s, n = summary()
	assert.Equal(t, "up to 20", s)
	assert.Equal(t, int64(20), n)

	// Another space's id writes nothing.
	other, _ := newSpace(t, st, uid, "Other")
	require.NoError(t, st.SaveSummary(ctx, other.ID, root.Meta.ID, "hijack", 99))
	s, n = summary()
	assert.Equal(t, "up to 20", s)
	assert.Equal(t, int64(20), n)
}
