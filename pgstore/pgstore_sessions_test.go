package pgstore_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
)

func TestCreateSessionInheritAndPrompt(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	commit(t, st, sp.ID, root.Meta.ID, userRec("q1"), assistantRec("a1"))
	commit(t, st, sp.ID, root.Meta.ID,
		userRec("q2"),
		session.Record{Role: llm.RoleAssistant, ToolCalls: []llm.ToolCall{{ID: "c1", Name: "t", Input: json.RawMessage(`{"k":"v"}`)}}},
		session.Record{Role: llm.RoleTool, Content: "r", ToolCallID: "c1"},
		assistantRec("a2"))
	parentRecs, err := st.ListRecords(ctx, sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)

	tests := []struct {
		name    string
		inherit bool
		prompt  *string
		want    []string
	}{
		{"none", false, nil, nil},
		{"prompt only", false, ptr("welcome"), []string{"welcome"}},
		{"inherit", true, nil, []string{"q1", "a1", "q2", "", "r", "a2"}},
		{"inherit and prompt", true, ptr("carry on"), []string{"q1", "a1", "q2", "", "r", "a2", "carry on"}},
	}
	for i, tc := range tests {
		c := childState(sp.ID, root, i, tc.name)
		c.Data.Memory = ptr("starting memory")
		c.Meta.Scope = ptr("scope " + tc.name)
		require.NoError(t, st.CreateSession(ctx, c, tc.inherit, tc.prompt), tc.name)
		recs, err := st.ListRecords(ctx, sp.ID, c.Meta.ID, 0, 0)
		require.NoError(t, err)
		assert.Equal(t, len(tc.want), len(recs), tc.name)
		if len(tc.want) > 0 {
			assert.Equal(t, tc.want, contents(recs), tc.name)
		}
		if tc.inherit {
			for j, p := range parentRecs {
				assert.Equal(t, p.Role, recs[j].Role)
				assert.Equal(t, p.ToolCallID, recs[j].ToolCallID)
				assert.Equal(t, len(p.ToolCalls), len(recs[j].ToolCalls))
				assert.True(t, p.CreatedAt.Equal(recs[j].CreatedAt), "copies keep their time")
				assert.Greater(t, recs[j].ID, p.ID, "copies are new records")
			}
			require.Len(t, recs[3].ToolCalls, 1)
			assert.JSONEq(t, `{"k":"v"}`, string(recs[3].ToolCalls[0].Input))
		}
		if tc.prompt != nil {
			last := recs[len(recs)-1]
			assert.Equal(t, llm.RoleAssistant, last.Role, "the prompt is an assistant message")
			assert.True(t, last.CreatedAt.Equal(c.Meta.CreatedAt))
		}
		got := sessionByID(t, st, sp.ID, c.Meta.ID)
		assert.Equal(t, "scope "+tc.name, *got.Meta.Scope)
		assert.Equal(t, root.Meta.ID, *got.Meta.SourceSessionID)
		assert.Equal(t, "starting memory", *got.Data.Memory)
		assert.Equal(t, "prompt of S", *got.Data.SystemPrompt)
		assert.Equal(t, 0, got.Meta.TurnCount)
	}
	// The parent's records are unchanged.
	after, err := st.ListRecords(ctx, sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, parentRecs, after)
}

func TestCreateSessionParentInOtherSpaceFails(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a, aroot := newSpace(t, st, uid, "A")
	commit(t, st, a.ID, aroot.Meta.ID, userRec("secret"))
	b, _ := newSpace(t, st, uid, "B")

	// A session of space B whose parent is A's root.
	c := childState(b.ID, aroot, 0, "intruder")
	err := st.CreateSession(ctx, c, true, ptr("hi"))
	require.Error(t, err)
	assert.Equal(t, "23503", pgCode(err), "foreign key violation: %v", err)
	assert.Zero(t, count(t, st, "SELECT count(*) FROM sessions WHERE id = $1", c.Meta.ID))
	assert.Zero(t, count(t, st, "SELECT count(*) FROM records WHERE session_id = $1", c.Meta.ID), "no record copied")
	assert.Zero(t, count(t, st, "SELECT count(*) FROM records WHERE space_id = $1", b.ID))
}

func TestArchiveSession(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a, aroot := newSpace(t, st, uid, "A")
	b, _ := newSpace(t, st, uid, "B")
	c := newChild(t, st, a.ID, aroot, 0, "c")

	// Right session, wrong space: not found, nothing changed.
	_, err := st.ArchiveSession(ctx, b.ID, c.Meta.ID)
	assert.ErrorIs(t, err, session.ErrNotFound)
	assert.Equal(t, session.StatusActive, sessionByID(t, st, a.ID, c.Meta.ID).Meta.Status)

	_, err = st.ArchiveSession(ctx, a.ID, uuid.NewString())
	assert.ErrorIs(t, err, session.ErrNotFound)

	at, err := st.ArchiveSession(ctx, a.ID, c.Meta.ID)
	require.NoError(t, err)
	got := sessionByID(t, st, a.ID, c.Meta.ID)
	assert.Equal(t, session.StatusArchived, got.Meta.Status)
	assert.True(t, got.Meta.UpdatedAt.Equal(at), "updated_at is the archive time")
	assert.Equal(t, session.StatusActive, sessionByID(t, st, a.ID, aroot.Meta.ID).Meta.Status)
}

func TestSetSlot(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a, aroot := newSpace(t, st, uid, "A")
	b, _ := newSpace(t, st, uid, "B")
	c := newChild(t, st, a.ID, aroot, 0, "c")

	slots := []session.Slot{session.SlotSystemPrompt, session.SlotMemory, session.SlotInsight,
		session.SlotConsolidatePrompt, session.SlotIntegratePrompt}
	for _, slot := range slots {
		t.Run(string(slot), func(t *testing.T) {
			require.NoError(t, st.SetSlot(ctx, a.ID, c.Meta.ID, slot, ptr("v-"+string(slot))))
			before := sessionByID(t, st, a.ID, c.Meta.ID)
			assert.Equal(t, "v-"+string(slot), *before.Data.Get(slot))

			// Another space's id with the right session id: not found, nothing changed.
			err := st.SetSlot(ctx, b.ID, c.Meta.ID, slot, ptr("hijacked"))
			assert.ErrorIs(t, err, session.ErrNotFound)
			assert.Equal(t, before, sessionByID(t, st, a.ID, c.Meta.ID))

			err = st.SetSlot(ctx, a.ID, uuid.NewString(), slot, ptr("x"))
			assert.ErrorIs(t, err, session.ErrNotFound)
		})
	}

	// Clearing with nil.
	require.NoError(t, st.SetSlot(ctx, a.ID, c.Meta.ID, session.SlotInsight, nil))
	assert.Nil(t, sessionByID(t, st, a.ID, c.Meta.ID).Data.Insight)

	// Every memory write bumps the version.
	v := sessionByID(t, st, a.ID, c.Meta.ID).Data.MemoryVersion
	require.NoError(t, st.SetSlot(ctx, a.ID, c.Meta.ID, session.SlotMemory, ptr("m2")))
	assert.Equal(t, v+1, sessionByID(t, st, a.ID, c.Meta.ID).Data.MemoryVersion)
	require.NoError(t, st.SetSlot(ctx, a.ID, c.Meta.ID, session.SlotInsight, ptr("i")))
	assert.Equal(t, v+1, sessionByID(t, st, a.ID, c.Meta.ID).Data.MemoryVersion, "other slots leave it")

	assert.Error(t, st.SetSlot(ctx, a.ID, c.Meta.ID, session.Slot("memory = 'x', insight"), ptr("x")), "unknown slot")
}

func TestListRecordsPaging(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a, aroot := newSpace(t, st, uid, "A")
	b, broot := newSpace(t, st, uid, "B")
	commit(t, st, a.ID, aroot.Meta.ID, userRec("r1"), assistantRec("r2"))
	commit(t, st, b.ID, broot.Meta.ID, userRec("other"))
	commit(t, st, a.ID, aroot.Meta.ID, userRec("r3"), assistantRec("r4"))
	commit(t, st, a.ID, aroot.Meta.ID, userRec("r5"))

	tests := []struct {
		limit, offset int
		want          []string
	}{
		{0, 0, []string{"r1", "r2", "r3", "r4", "r5"}},
		{2, 0, []string{"r1", "r2"}},
		{2, 1, []string{"r2", "r3"}},
		{10, 3, []string{"r4", "r5"}},
		{0, 4, []string{"r5"}},
		{3, 5, nil},
	}
	for _, tc := range tests {
		recs, err := st.ListRecords(ctx, a.ID, aroot.Meta.ID, tc.limit, tc.offset)
		require.NoError(t, err)
		if tc.want == nil {
			assert.Empty(t, recs, "limit %d offset %d", tc.limit, tc.offset)
		} else {
			assert.Equal(t, tc.want, contents(recs), "limit %d offset %d", tc.limit, tc.offset)
		}
	}

	// Another space's id with this session id reads nothing.
	recs, err := st.ListRecords(ctx, b.ID, aroot.Meta.ID, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, recs)

	all, err := st.ListRecords(ctx, a.ID, aroot.Meta.ID, 0, 0)
	require.NoError(t, err)
	after, err := st.RecordsAfter(ctx, a.ID, aroot.Meta.ID, all[2].ID)
	require.NoError(t, err)
	assert.Equal(t, []string{"r4", "r5"}, contents(after))
	after, err = st.RecordsAfter(ctx, b.ID, aroot.Meta.ID, 0)
	require.NoError(t, err)
	assert.Empty(t, after)
}

func TestCommitTurnRoundTrip(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")

	at := now().Add(time.Hour)
	in := []session.Record{
		{Role: llm.RoleUser, Content: "make two children"},
		{Role: llm.RoleAssistant, Content: "", ToolCalls: []llm.ToolCall{
			{ID: "call_1", Name: "stello_create_session", Input: json.RawMessage(`{"label":"x","n":1,"nested":{"a":[true,null]}}`)},
			{ID: "call_2", Name: "other", Input: json.RawMessage(`{}`)},
		}},
		{Role: llm.RoleTool, Content: `{"sessionId":"s1"}`, ToolCallID: "call_1"},
		{Role: llm.RoleTool, Content: "ok ✓ ünïcode", ToolCallID: "call_2"},
		{Role: llm.RoleAssistant, Content: "done"},
	}
	turns, ids, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID, Records: in, At: at})
	require.NoError(t, err)
	assert.Equal(t, 1, turns)
	require.Len(t, ids, len(in))
	for i := 1; i < len(ids); i++ {
		assert.Greater(t, ids[i], ids[i-1], "ids follow the record order")
	}

	out, err := st.ListRecords(ctx, sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, out, len(in))
	for i := range in {
		assert.Equal(t, ids[i], out[i].ID)
		assert.Equal(t, in[i].Role, out[i].Role)
		assert.Equal(t, in[i].Content, out[i].Content)
		assert.Equal(t, in[i].ToolCallID, out[i].ToolCallID)
		assert.True(t, at.Equal(out[i].CreatedAt), "record %d created at the turn's time", i)
		require.Len(t, out[i].ToolCalls, len(in[i].ToolCalls))
		for j, tc := range in[i].ToolCalls {
			assert.Equal(t, tc.ID, out[i].ToolCalls[j].ID)
			assert.Equal(t, tc.Name, out[i].ToolCalls[j].Name)
			assert.JSONEq(t, string(tc.Input), string(out[i].ToolCalls[j].Input))
		}
	}
	assert.Equal(t, 2, count(t, st, "SELECT count(*) FROM records WHERE session_id = $1 AND tool_call_id IS NOT NULL", root.Meta.ID))
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM records WHERE session_id = $1 AND tool_calls IS NOT NULL", root.Meta.ID))

	got := sessionByID(t, st, sp.ID, root.Meta.ID)
	assert.Equal(t, 1, got.Meta.TurnCount)
	assert.True(t, at.Equal(got.Meta.LastActiveAt))
	assert.True(t, at.Equal(got.Meta.UpdatedAt))

	turns, _ = commit(t, st, sp.ID, root.Meta.ID, userRec("again"), assistantRec("yes"))
	assert.Equal(t, 2, turns)
	assert.Equal(t, 2, sessionByID(t, st, sp.ID, root.Meta.ID).Meta.TurnCount)
}

func TestCommitTurnConsumedInsight(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	c := newChild(t, st, sp.ID, root, 0, "c")
	insight := func() *string { return sessionByID(t, st, sp.ID, c.Meta.ID).Data.Insight }
	turn := func(consumed *string) {
		t.Helper()
		_, _, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: c.Meta.ID,
			Records: []session.Record{userRec("q"), assistantRec("a")}, ConsumedInsight: consumed, At: now()})
		require.NoError(t, err)
	}

	// The consumed insight, unchanged meanwhile, is cleared.
	require.NoError(t, st.SetSlot(ctx, sp.ID, c.Meta.ID, session.SlotInsight, ptr("advice 1")))
	turn(ptr("advice 1"))
	assert.Nil(t, insight())

	// Integration replaced it while the turn ran: the new one stays.
	require.NoError(t, st.SetSlot(ctx, sp.ID, c.Meta.ID, session.SlotInsight, ptr("advice 2")))
	turn(ptr("advice 1"))
	require.NotNil(t, insight())
	assert.Equal(t, "advice 2", *insight())

	// A turn that consumed nothing leaves it.
	turn(nil)
	assert.Equal(t, "advice 2", *insight())
	assert.Equal(t, 3, sessionByID(t, st, sp.ID, c.Meta.ID).Meta.TurnCount)
}

// assertUnchanged checks the session still has the given number of records
// and turns, and its insight.
func assertUnchanged(t *testing.T, st *pgstore.Store, spaceID, sessionID string, records, turns int, insight string) {
	t.Helper()
	recs, err := st.ListRecords(t.Context(), spaceID, sessionID, 0, 0)
	require.NoError(t, err)
	assert.Len(t, recs, records)
	got := sessionByID(t, st, spaceID, sessionID)
	assert.Equal(t, turns, got.Meta.TurnCount)
	require.NotNil(t, got.Data.Insight)
	assert.Equal(t, insight, *got.Data.Insight)
}

func TestCommitTurnAtomic(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	other, _ := newSpace(t, st, uid, "Other")
	commit(t, st, sp.ID, root.Meta.ID, userRec("first"), assistantRec("reply"))
	require.NoError(t, st.SetSlot(t.Context(), sp.ID, root.Meta.ID, session.SlotInsight, ptr("tip")))

	good := []session.Record{userRec("q"), assistantRec("a")}
	tests := []struct {
		name    string
		spaceID string
		records []session.Record
		ctx     func() context.Context
		code    string
	}{
		{"bogus role", sp.ID, []session.Record{userRec("q"), {Role: "bogus", Content: "x"}, assistantRec("a")}, t.Context, "23514"},
		{"cancelled context", sp.ID, good, func() context.Context {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx
		}, ""},
		{"session of another space", other.ID, good, t.Context, "23503"},
	}
	for _, tc := range tests {
		_, ids, err := st.CommitTurn(tc.ctx(), session.TurnCommit{SpaceID: tc.spaceID, SessionID: root.Meta.ID,
			Records: tc.records, ConsumedInsight: ptr("tip"), At: now()})
		require.Error(t, err, tc.name)
		assert.Nil(t, ids, tc.name)
		if tc.code != "" {
			assert.Equal(t, tc.code, pgCode(err), "%s: %v", tc.name, err)
		} else {
			assert.ErrorIs(t, err, context.Canceled, tc.name)
		}
		assertUnchanged(t, st, sp.ID, root.Meta.ID, 2, 1, "tip")
	}
	assert.Zero(t, count(t, st, "SELECT count(*) FROM records WHERE space_id = $1", other.ID))
}

// A turn whose context is cancelled while its commit is half done on the
// server must report what happened: an error only if nothing was persisted,
// success only if all of it was.
func TestCommitTurnCancelledMidCommit(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "S")
	commit(t, st, sp.ID, root.Meta.ID, userRec("first"), assistantRec("reply"))
	require.NoError(t, st.SetSlot(t.Context(), sp.ID, root.Meta.ID, session.SlotInsight, ptr("tip")))

	// Hold the session row so that the turn's UPDATE waits after its INSERT
	// (NO KEY UPDATE lets the records' foreign key check through).
	lock, err := st.Pool().Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = lock.Rollback(context.Background()) }()
	_, err = lock.Exec(t.Context(), "SELECT 1 FROM sessions WHERE id = $1 FOR NO KEY UPDATE", root.Meta.ID)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		turns int
		ids   []int64
		err   error
	}
	done := make(chan result, 1)
	go func() {
		turns, ids, err := st.CommitTurn(ctx, session.TurnCommit{SpaceID: sp.ID, SessionID: root.Meta.ID,
			Records: []session.Record{userRec("q"), assistantRec("a")}, ConsumedInsight: ptr("tip"), At: now()})
		done <- result{turns, ids, err}
	}()
	// Wait until the turn is blocked on the lock, its records inserted.
	require.Eventually(t, func() bool {
		return count(t, st, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE 'WITH s AS (UPDATE sessions s SET turn_count%'`) == 1
	}, 20*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, lock.Rollback(t.Context()))
	var res result
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("CommitTurn did not return")
	}
	// Whatever a backend left running on a dropped connection has finished
	// before we look.
	require.Eventually(t, func() bool {
		return count(t, st, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND query LIKE 'WITH s AS (UPDATE sessions s SET turn_count%' AND state <> 'idle'`) == 0
	}, 20*time.Second, 5*time.Millisecond)

	recs, err := st.ListRecords(t.Context(), sp.ID, root.Meta.ID, 0, 0)
	require.NoError(t, err)
	got := sessionByID(t, st, sp.ID, root.Meta.ID)
	if res.err != nil {
		t.Logf("CommitTurn failed: %v", res.err)
		assert.Len(t, recs, 2, "an error means nothing was persisted")
		assert.Equal(t, 1, got.Meta.TurnCount)
		assert.Equal(t, "tip", *got.Data.Insight)
	} else {
		t.Logf("CommitTurn committed")
		require.Len(t, recs, 4, "success means the turn was persisted")
		assert.Equal(t, res.ids, []int64{recs[2].ID, recs[3].ID})
		assert.Equal(t, 2, res.turns)
		assert.Equal(t, 2, got.Meta.TurnCount)
		assert.Nil(t, got.Data.Insight)
	}

	// The session still takes turns, counted right.
	turns, _ := commit(t, st, sp.ID, root.Meta.ID, userRec("q"), assistantRec("a"))
	assert.Equal(t, got.Meta.TurnCount+1, turns)
}
