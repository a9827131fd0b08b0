package pgstore_test

import (
	"encoding/json"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/session"
)

func TestCreateSpaceCreatesRootSession(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")

	sp, root, err := st.CreateSpace(ctx, uid, session.SpaceInput{Label: "Research", SystemPrompt: ptr("be brief"),
		ConsolidatePrompt: ptr("cons"), Config: json.RawMessage(`{"x":1}`)})
	require.NoError(t, err)
	require.NoError(t, uuid.Validate(sp.ID))
	assert.Equal(t, uid, sp.UserID)
	assert.Equal(t, session.RoleMain, root.Meta.Role)
	assert.Equal(t, "Research", root.Meta.Label)

	got, sessions, err := st.LoadSpace(ctx, sp.ID)
	require.NoError(t, err)
	assert.Equal(t, "Research", got.Label)
	assert.Equal(t, "be brief", *got.SystemPrompt)
	assert.Equal(t, "cons", *got.ConsolidatePrompt)
	assert.Nil(t, got.IntegratePrompt)
	assert.JSONEq(t, `{"x":1}`, string(got.Config))
	assert.True(t, got.CreatedAt.Equal(sp.CreatedAt))

	require.Len(t, sessions, 1)
	r := sessions[0]
	assert.Equal(t, root.Meta.ID, r.Meta.ID)
	assert.Equal(t, sp.ID, r.Meta.SpaceID)
	assert.Equal(t, session.RoleMain, r.Meta.Role)
	assert.Equal(t, session.StatusActive, r.Meta.Status)
	assert.Equal(t, "Research", r.Meta.Label, "root label = space label")
	assert.Nil(t, r.Meta.ParentID)
	assert.Equal(t, 0, r.Meta.Depth)
	assert.Equal(t, 0, r.Meta.TurnCount)
	require.NotNil(t, r.Data.SystemPrompt)
	assert.Equal(t, "be brief", *r.Data.SystemPrompt, "root system prompt in session_data")
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM session_data WHERE space_id = $1 AND system_prompt = 'be brief'", sp.ID))

	// Without config the config is an empty object.
	sp2, _, err := st.CreateSpace(ctx, uid, session.SpaceInput{Label: "Plain"})
	require.NoError(t, err)
	got2, sessions2, err := st.LoadSpace(ctx, sp2.ID)
	require.NoError(t, err)
	assert.JSONEq(t, `{}`, string(got2.Config))
	assert.Nil(t, got2.SystemPrompt)
	require.Len(t, sessions2, 1)
	assert.Nil(t, sessions2[0].Data.SystemPrompt)
}

// A space whose root session cannot be written is not created either.
func TestCreateSpaceAtomic(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	_, err := st.Pool().Exec(ctx, `CREATE FUNCTION fail_session() RETURNS trigger LANGUAGE plpgsql AS
		$$ BEGIN RAISE EXCEPTION 'no sessions today'; END $$;
		CREATE TRIGGER fail_session BEFORE INSERT ON session_data FOR EACH ROW EXECUTE FUNCTION fail_session()`)
	require.NoError(t, err)

	_, _, err = st.CreateSpace(ctx, uid, session.SpaceInput{Label: "Doomed"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no sessions today")
	assert.Zero(t, count(t, st, "SELECT count(*) FROM spaces"))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM sessions"))

	// For a user that does not exist, nothing is created.
	_, err = st.Pool().Exec(ctx, "DROP TRIGGER fail_session ON session_data")
	require.NoError(t, err)
	_, _, err = st.CreateSpace(ctx, uuid.NewString(), session.SpaceInput{Label: "Orphan"})
	require.Error(t, err)
	assert.Zero(t, count(t, st, "SELECT count(*) FROM spaces"))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM sessions"))
}

func TestListSpacesPerUserOldestFirst(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	alice, _ := newUser(t, st, "alice")
	bob, _ := newUser(t, st, "bob")
	var want []string
	for _, label := range []string{"one", "two", "three"} {
		sp, _ := newSpace(t, st, alice, label)
		want = append(want, sp.ID)
		newSpace(t, st, bob, "bob-"+label) // interleaved
	}

	got, err := st.ListSpaces(ctx, alice)
	require.NoError(t, err)
	var ids, labels []string
	for _, sp := range got {
		ids = append(ids, sp.ID)
		labels = append(labels, sp.Label)
		assert.Equal(t, alice, sp.UserID, "never another user's space")
	}
	assert.Equal(t, want, ids)
	assert.Equal(t, []string{"one", "two", "three"}, labels)

	bobs, err := st.ListSpaces(ctx, bob)
	require.NoError(t, err)
	require.Len(t, bobs, 3)
	for _, sp := range bobs {
		assert.Equal(t, bob, sp.UserID)
	}

	none, err := st.ListSpaces(ctx, uuid.NewString())
	require.NoError(t, err)
	assert.Empty(t, none)
}

func TestLoadSpaceTree(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "Tree")
	c1 := newChild(t, st, sp.ID, root, 1, "c1")
	c0 := newChild(t, st, sp.ID, root, 0, "c0")
	g := newChild(t, st, sp.ID, c1, 0, "grandchild")
	require.NoError(t, st.SetSlot(ctx, sp.ID, g.Meta.ID, session.SlotMemory, ptr("g memory")))
	// Another space's sessions never show.
	other, oroot := newSpace(t, st, uid, "Other")
	newChild(t, st, other.ID, oroot, 0, "foreign")

	_, sessions, err := st.LoadSpace(ctx, sp.ID)
	require.NoError(t, err)
	var labels []string
	for _, s := range sessions {
		labels = append(labels, s.Meta.Label)
		assert.Equal(t, sp.ID, s.Meta.SpaceID)
	}
	assert.Equal(t, []string{"Tree", "c0", "c1", "grandchild"}, labels, "ordered by depth, then index")
	gs := sessions[3]
	require.NotNil(t, gs.Meta.ParentID)
	assert.Equal(t, c1.Meta.ID, *gs.Meta.ParentID)
	assert.Equal(t, 2, gs.Meta.Depth)
	assert.Equal(t, "g memory", *gs.Data.Memory)
	assert.Equal(t, int64(1), gs.Data.MemoryVersion)
	assert.Equal(t, c0.Meta.ID, sessions[1].Meta.ID)
	assert.Equal(t, "prompt of Tree", *sessions[1].Data.SystemPrompt, "children carry the parent's prompt")

	_, _, err = st.LoadSpace(ctx, uuid.NewString())
	assert.ErrorIs(t, err, session.ErrNotFound)
}

func TestUpdateSpace(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root, err := st.CreateSpace(ctx, uid, session.SpaceInput{Label: "L", SystemPrompt: ptr("old"),
		IntegratePrompt: ptr("integ"), Config: json.RawMessage(`{"a":1}`)})
	require.NoError(t, err)
	child := newChild(t, st, sp.ID, root, 0, "child")

	rootPrompt := func() *string {
		return sessionByID(t, st, sp.ID, root.Meta.ID).Data.SystemPrompt
	}

	// The system prompt follows to the root session, and only there.
	got, err := st.UpdateSpace(ctx, sp.ID, session.SpacePatch{SystemPrompt: ptr("new"), SetSystemPrompt: true})
	require.NoError(t, err)
	assert.Equal(t, "new", *got.SystemPrompt)
	assert.Equal(t, "L", got.Label, "unpatched fields stay")
	assert.Equal(t, "integ", *got.IntegratePrompt)
	assert.JSONEq(t, `{"a":1}`, string(got.Config))
	assert.Equal(t, "new", *rootPrompt())
	assert.Equal(t, "old", *sessionByID(t, st, sp.ID, child.Meta.ID).Data.SystemPrompt,
		"a child's own system prompt is not the space's")

	// Label and config; the prompts stay.
	got, err = st.UpdateSpace(ctx, sp.ID, session.SpacePatch{Label: ptr("L2"), Config: json.RawMessage(`{"b":[1,2]}`)})
	require.NoError(t, err)
	assert.Equal(t, "L2", got.Label)
	assert.JSONEq(t, `{"b":[1,2]}`, string(got.Config), "config is replaced")
	assert.Equal(t, "new", *got.SystemPrompt)
	assert.Equal(t, "new", *rootPrompt())
	assert.False(t, got.UpdatedAt.Before(sp.UpdatedAt))

	// A Set flag with nil clears.
	got, err = st.UpdateSpace(ctx, sp.ID, session.SpacePatch{SetSystemPrompt: true, SetIntegratePrompt: true})
	require.NoError(t, err)
	assert.Nil(t, got.SystemPrompt)
	assert.Nil(t, got.IntegratePrompt)
	assert.Nil(t, rootPrompt())

	reloaded, _, err := st.LoadSpace(ctx, sp.ID)
	require.NoError(t, err)
	assert.Equal(t, "L2", reloaded.Label)
	assert.Nil(t, reloaded.SystemPrompt)
	assert.JSONEq(t, `{"b":[1,2]}`, string(reloaded.Config))

	_, err = st.UpdateSpace(ctx, uuid.NewString(), session.SpacePatch{Label: ptr("x")})
	assert.ErrorIs(t, err, session.ErrNotFound)
}

func TestDeleteSpaceCascades(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")

	fill := func(label string) (string, string) {
		sp, root := newSpace(t, st, uid, label)
		commit(t, st, sp.ID, root.Meta.ID, userRec("hi"), assistantRec("hello"))
		c := childState(sp.ID, root, 0, "child")
		require.NoError(t, st.CreateSession(ctx, c, true, ptr("go on")))
		g := newChild(t, st, sp.ID, c, 0, "grandchild")
		commit(t, st, sp.ID, g.Meta.ID, userRec("deep"))
		require.NoError(t, st.SetSpaceValue(ctx, sp.ID, "k", json.RawMessage(`true`)))
		return sp.ID, root.Meta.ID
	}
	doomed, _ := fill("doomed")
	kept, keptRoot := fill("kept")

	tables := []string{"sessions", "session_data", "records", "space_kv"}
	rows := func(spaceID string) map[string]int {
		m := map[string]int{}
		for _, tbl := range tables {
			m[tbl] = count(t, st, "SELECT count(*) FROM "+tbl+" WHERE space_id = $1", spaceID)
		}
		return m
	}
	before := rows(doomed)
	assert.Equal(t, map[string]int{"sessions": 3, "session_data": 3, "records": 6, "space_kv": 1}, before)
	keptBefore := rows(kept)

	require.NoError(t, st.DeleteSpace(ctx, doomed))
	assert.Equal(t, map[string]int{"sessions": 0, "session_data": 0, "records": 0, "space_kv": 0}, rows(doomed))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM spaces WHERE id = $1", doomed))
	assert.Equal(t, keptBefore, rows(kept), "another space is untouched")

	_, _, err := st.LoadSpace(ctx, doomed)
	assert.ErrorIs(t, err, session.ErrNotFound)
	recs, err := st.ListRecords(ctx, kept, keptRoot, 0, 0)
	require.NoError(t, err)
	assert.Len(t, recs, 2)

	assert.ErrorIs(t, st.DeleteSpace(ctx, doomed), session.ErrNotFound, "deleting twice")
	assert.ErrorIs(t, st.DeleteSpace(ctx, uuid.NewString()), session.ErrNotFound)
}
