package session_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/session"
)

func TestConsolidatePromptPrecedence(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		sessionOwn  *string
		spacePrompt *string
		wantPrompt  string
	}{
		{name: "session's own", sessionOwn: ptr("SESSION PROMPT"), spacePrompt: ptr("SPACE PROMPT"), wantPrompt: "SESSION PROMPT"},
		{name: "space's", spacePrompt: ptr("SPACE PROMPT"), wantPrompt: "SPACE PROMPT"},
		{name: "blank session prompt falls back to the space's", sessionOwn: ptr("  \n"), spacePrompt: ptr("SPACE PROMPT"), wantPrompt: "SPACE PROMPT"},
		{name: "built-in default", wantPrompt: session.DefaultConsolidatePrompt},
		{name: "blank space prompt falls back to the default", spacePrompt: ptr(" "), wantPrompt: session.DefaultConsolidatePrompt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, session.SpaceInput{ConsolidatePrompt: tc.spacePrompt})
			child := h.fork(h.rootID, "Child", nil, nil)
			if tc.sessionOwn != nil {
				h.setSlot(child.Meta.ID, session.SlotConsolidatePrompt, *tc.sessionOwn)
			}
			h.commit(child.Meta.ID, user("hi"), assistant("hello"))
			h.mock.Enqueue(mockllm.Reply{Content: "memory"})
			sp, st := h.state(child.Meta.ID)
			_, err := h.eng.Consolidate(h.ctx, sp, st)
			require.NoError(t, err)
			rr := lastRequest(t, h.mock)
			require.Len(t, rr.Messages, 2)
			assert.Equal(t, msg{"system", tc.wantPrompt}, msg{rr.Messages[0].Role, rr.Messages[0].Content})
			assert.Equal(t, "user", rr.Messages[1].Role)
			assert.Empty(t, rr.Tools, "memory work offers no tools")
		})
	}
}

func TestConsolidateFoldsOnlyNewRecords(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.setSlot(h.rootID, session.SlotMemory, "Name: Ada")
	ids := h.commit(h.rootID, user("I like green tea"), assistant("Noted"))
	ids = append(ids, h.commit(h.rootID, user("open a thread"),
		toolCall("", call("call_1", session.CreateSessionToolName, `{"label":"Tea"}`)),
		toolResult("call_1", `{"sessionId":"t1"}`),
		assistant("Opened Tea"))...)

	h.mock.Enqueue(mockllm.Reply{Content: "<think>\nwhat matters?\n</think>\nName: Ada. Likes green tea."})
	sp, st := h.state(h.rootID)
	res, err := h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	assert.True(t, res.Changed)
	require.NotNil(t, res.Memory)
	assert.Equal(t, "Name: Ada. Likes green tea.", *res.Memory, "think block stripped")
	assert.Equal(t, int64(2), res.Version)

	in := lastRequest(t, h.mock).Messages[1].Content
	assert.Contains(t, in, "Current memory:\nName: Ada\n")
	assert.Contains(t, in, "user: I like green tea\nassistant: Noted\n")
	assert.Contains(t, in, "[assistant called stello_create_session]")
	assert.Contains(t, in, `[tool result] {"sessionId":"t1"}`)
	assert.Contains(t, in, "assistant: Opened Tea")

	ms := h.memoryState(h.rootID)
	require.NotNil(t, ms.Memory)
	assert.Equal(t, "Name: Ada. Likes green tea.", *ms.Memory)
	assert.Equal(t, int64(2), ms.Version)
	assert.Equal(t, ids[len(ids)-1], ms.ConsolidatedThrough)

	// Only what came after is sent the second time, with the new memory.
	later := h.commit(h.rootID, user("Actually I prefer coffee"), assistant("Updated"))
	h.mock.Enqueue(mockllm.Reply{Content: "Name: Ada. Prefers coffee."})
	sp, st = h.state(h.rootID)
	res, err = h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	require.NotNil(t, res.Memory)
	assert.Equal(t, "Name: Ada. Prefers coffee.", *res.Memory)
	in = lastRequest(t, h.mock).Messages[1].Content
	assert.Contains(t, in, "Current memory:\nName: Ada. Likes green tea.\n")
	assert.Contains(t, in, "user: Actually I prefer coffee\nassistant: Updated\n")
	assert.NotContains(t, in, "I like green tea")
	assert.NotContains(t, in, "Opened Tea")
	assert.Equal(t, later[1], h.memoryState(h.rootID).ConsolidatedThrough)

	// Nothing new: no model call, memory unchanged.
	calls := h.mock.Calls()
	sp, st = h.state(h.rootID)
	res, err = h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	assert.False(t, res.Changed)
	require.NotNil(t, res.Memory)
	assert.Equal(t, "Name: Ada. Prefers coffee.", *res.Memory)
	assert.Equal(t, calls, h.mock.Calls())
}

func TestConsolidateEmptyMemoryIsMarked(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.commit(h.rootID, user("hi"), assistant("hello"))
	h.mock.Enqueue(mockllm.Reply{Content: "Greeted."})
	sp, st := h.state(h.rootID)
	_, err := h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	assert.Contains(t, lastRequest(t, h.mock).Messages[1].Content, "Current memory:\n(empty)\n")
}

func TestConsolidateRedoesWhenMemoryChangesMeanwhile(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	ids := h.commit(h.rootID, user("I live in Oslo"), assistant("Nice"))
	// The user edits the memory while the model is consolidating.
	h.onRequest(func(n int) {
		if n == 1 {
			v := "Edited by the user"
			assert.NoError(t, h.store.SetSlot(h.ctx, h.space.ID, h.rootID, session.SlotMemory, &v))
		}
	})
	h.mock.Enqueue(mockllm.Reply{Content: "stale memory"}, mockllm.Reply{Content: "Edited by the user. Lives in Oslo."})

	sp, st := h.state(h.rootID)
	res, err := h.eng.Consolidate(h.ctx, sp, st)
	require.NoError(t, err)
	reqs := h.mock.Requests()
	require.Len(t, reqs, 2, "the consolidation is redone")
	redo := reqs[1].Messages[1].Content
	assert.Contains(t, redo, "Current memory:\nEdited by the user\n", "the redo starts from the concurrent write")
	assert.Contains(t, redo, "user: I live in Oslo", "the records are not lost")

	require.NotNil(t, res.Memory)
	assert.Equal(t, "Edited by the user. Lives in Oslo.", *res.Memory)
	ms := h.memoryState(h.rootID)
	require.NotNil(t, ms.Memory)
	assert.Equal(t, "Edited by the user. Lives in Oslo.", *ms.Memory)
	assert.Equal(t, int64(2), ms.Version, "one edit, one consolidation")
	assert.Equal(t, ids[1], ms.ConsolidatedThrough)
}

func TestConsolidateModelErrorWritesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.commit(h.rootID, user("hi"), assistant("hello"))
	h.mock.Enqueue(mockllm.Reply{Status: http.StatusInternalServerError})
	sp, st := h.state(h.rootID)
	_, err := h.eng.Consolidate(h.ctx, sp, st)
	require.Error(t, err)
	assert.ErrorIs(t, err, llm.ErrProvider)
	ms := h.memoryState(h.rootID)
	assert.Nil(t, ms.Memory)
	assert.Zero(t, ms.Version)
	assert.Zero(t, ms.ConsolidatedThrough)
}

// integrationTree is a root with children A and B (with memory), C (without
// memory), an archived D with memory, and a session X of another space of
// the same user.
type integrationTree struct {
	a, b, c, d, x session.State
}

func newIntegrationTree(h *harness) integrationTree {
	h.t.Helper()
	var tr integrationTree
	tr.a = h.fork(h.rootID, "Cats", nil, nil)
	tr.b = h.fork(h.rootID, "Dogs", nil, nil)
	tr.c = h.fork(tr.a.Meta.ID, "Empty", nil, nil)
	tr.d = h.fork(h.rootID, "Archived", nil, nil)
	h.setSlot(tr.a.Meta.ID, session.SlotMemory, "A knows cats")
	h.setSlot(tr.b.Meta.ID, session.SlotMemory, "B knows dogs")
	h.setSlot(tr.d.Meta.ID, session.SlotMemory, "D is archived")
	_, err := h.store.ArchiveSession(h.ctx, h.space.ID, tr.d.Meta.ID)
	require.NoError(h.t, err)

	other, oroot, err := h.store.CreateSpace(h.ctx, h.userID, session.SpaceInput{Label: "Other"})
	require.NoError(h.t, err)
	tr.x, err = h.createChild(h.ctx, other.ID, oroot.Meta.ID, "Foreign", nil, nil)
	require.NoError(h.t, err)
	v := "X is elsewhere"
	require.NoError(h.t, h.store.SetSlot(h.ctx, other.ID, tr.x.Meta.ID, session.SlotMemory, &v))
	return tr
}

func (h *harness) insight(spaceID, sessionID string) *string {
	h.t.Helper()
	_, states, err := h.store.LoadSpace(h.ctx, spaceID)
	require.NoError(h.t, err)
	for _, st := range states {
		if st.Meta.ID == sessionID {
			return st.Data.Insight
		}
	}
	h.t.Fatalf("session %s not found", sessionID)
	return nil
}

func TestIntegrateWritesSynthesisAndInsights(t *testing.T) {
	t.Parallel()
	body := func(tr integrationTree) string {
		return fmt.Sprintf(`{"synthesis": "Cats and dogs differ.", "insights": [
			{"sessionId": %q, "content": "Compare with dogs."},
			{"sessionId": %q, "content": "Compare with cats."},
			{"sessionId": %q, "content": "ghost"},
			{"sessionId": %q, "content": "foreign"},
			{"sessionId": %q, "content": "no memory"},
			{"sessionId": %q, "content": "archived"}]}`,
			tr.a.Meta.ID, tr.b.Meta.ID, uuid.NewString(), tr.x.Meta.ID, tr.c.Meta.ID, tr.d.Meta.ID)
	}
	cases := []struct {
		name string
		wrap func(string) string
	}{
		{"bare JSON", func(s string) string { return s }},
		{"surrounding prose", func(s string) string { return "Here is the result:\n" + s + "\nHope this helps!" }},
		{"json fence", func(s string) string { return "Sure.\n```json\n" + s + "\n```\n" }},
		{"think block", func(s string) string { return "<think>{\"synthesis\": \"draft\"}</think>" + s }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, session.SpaceInput{})
			tr := newIntegrationTree(h)
			h.setSlot(h.rootID, session.SlotMemory, "Previous synthesis text")
			h.mock.Enqueue(mockllm.Reply{Content: tc.wrap(body(tr))})

			sp, root := h.state(h.rootID)
			res, err := h.eng.Integrate(h.ctx, sp, root)
			require.NoError(t, err)
			assert.True(t, res.Written)
			assert.Equal(t, "Cats and dogs differ.", res.Synthesis)
			assert.ElementsMatch(t, []session.Insight{
				{SessionID: tr.a.Meta.ID, Content: "Compare with dogs."},
				{SessionID: tr.b.Meta.ID, Content: "Compare with cats."},
			}, res.Insights)
			assert.Equal(t, int64(2), res.RootVersion)

			// The request: default prompt, JSON mode, the children's memories.
			rr := lastRequest(t, h.mock)
			require.Len(t, rr.Messages, 2)
			assert.Equal(t, msg{"system", session.DefaultIntegratePrompt}, msg{rr.Messages[0].Role, rr.Messages[0].Content})
			assert.Equal(t, "json_object", rr.ResponseFormat)
			in := rr.Messages[1].Content
			assert.Contains(t, in, fmt.Sprintf("## Session %s (label: Cats)\nA knows cats\n", tr.a.Meta.ID))
			assert.Contains(t, in, fmt.Sprintf("## Session %s (label: Dogs)\nB knows dogs\n", tr.b.Meta.ID))
			assert.Contains(t, in, "## Previous synthesis\nPrevious synthesis text")
			for _, absent := range []string{tr.c.Meta.ID, tr.d.Meta.ID, tr.x.Meta.ID, h.rootID} {
				assert.NotContains(t, in, absent)
			}

			// What was written.
			ms := h.memoryState(h.rootID)
			require.NotNil(t, ms.Memory)
			assert.Equal(t, "Cats and dogs differ.", *ms.Memory)
			assert.Equal(t, int64(2), ms.Version)
			if ins := h.insight(h.space.ID, tr.a.Meta.ID); assert.NotNil(t, ins) {
				assert.Equal(t, "Compare with dogs.", *ins)
			}
			if ins := h.insight(h.space.ID, tr.b.Meta.ID); assert.NotNil(t, ins) {
				assert.Equal(t, "Compare with cats.", *ins)
			}
			assert.Nil(t, h.insight(h.space.ID, tr.c.Meta.ID))
			assert.Nil(t, h.insight(h.space.ID, tr.d.Meta.ID))
			assert.Nil(t, h.insight(tr.x.Meta.SpaceID, tr.x.Meta.ID), "another space's session is never written")
		})
	}
}

func TestIntegrateMalformedOutputWritesNothing(t *testing.T) {
	t.Parallel()
	cases := map[string]func(tr integrationTree) string{
		"no JSON": func(integrationTree) string { return "I could not decide." },
		"no synthesis": func(tr integrationTree) string {
			return fmt.Sprintf(`{"insights":[{"sessionId":%q,"content":"hi"}]}`, tr.a.Meta.ID)
		},
		"wrong types":     func(integrationTree) string { return `{"synthesis": 42, "insights": []}` },
		"broken in fence": func(integrationTree) string { return "```json\n{\"synthesis\": \"x\",\n```" },
		"empty answer":    func(integrationTree) string { return "" },
	}
	for name, out := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, session.SpaceInput{})
			tr := newIntegrationTree(h)
			h.mock.Enqueue(mockllm.Reply{Content: out(tr)})
			sp, root := h.state(h.rootID)
			_, err := h.eng.Integrate(h.ctx, sp, root)
			require.Error(t, err)
			assert.ErrorIs(t, err, llm.ErrProvider)
			assert.ErrorIs(t, err, session.ErrBadModelOutput)
			ms := h.memoryState(h.rootID)
			assert.Nil(t, ms.Memory)
			assert.Zero(t, ms.Version)
			assert.Nil(t, h.insight(h.space.ID, tr.a.Meta.ID))
			assert.Nil(t, h.insight(h.space.ID, tr.b.Meta.ID))
		})
	}
}

func TestIntegratePromptPrecedence(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		rootOwn     *string
		spacePrompt *string
		want        string
	}{
		{name: "root's own", rootOwn: ptr("ROOT PROMPT"), spacePrompt: ptr("SPACE PROMPT"), want: "ROOT PROMPT"},
		{name: "space's", spacePrompt: ptr("SPACE PROMPT"), want: "SPACE PROMPT"},
		{name: "blank root prompt", rootOwn: ptr(" "), spacePrompt: ptr("SPACE PROMPT"), want: "SPACE PROMPT"},
		{name: "built-in default", want: session.DefaultIntegratePrompt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, session.Options{}, session.SpaceInput{IntegratePrompt: tc.spacePrompt})
			child := h.fork(h.rootID, "Child", nil, nil)
			h.setSlot(child.Meta.ID, session.SlotMemory, "child memory")
			if tc.rootOwn != nil {
				h.setSlot(h.rootID, session.SlotIntegratePrompt, *tc.rootOwn)
			}
			// A child's own integrate prompt plays no part.
			h.setSlot(child.Meta.ID, session.SlotIntegratePrompt, "CHILD PROMPT")
			h.mock.Enqueue(mockllm.Reply{Content: `{"synthesis":"s","insights":[]}`})
			sp, root := h.state(h.rootID)
			_, err := h.eng.Integrate(h.ctx, sp, root)
			require.NoError(t, err)
			rr := lastRequest(t, h.mock)
			assert.Equal(t, msg{"system", tc.want}, msg{rr.Messages[0].Role, rr.Messages[0].Content})
		})
	}
}

func TestIntegrateWithoutChildMemoriesCallsNoModel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	h.fork(h.rootID, "Blank", nil, nil)
	h.setSlot(h.rootID, session.SlotMemory, "root memory")
	sp, root := h.state(h.rootID)
	res, err := h.eng.Integrate(h.ctx, sp, root)
	require.NoError(t, err)
	assert.False(t, res.Written)
	assert.Equal(t, "root memory", res.Synthesis)
	assert.Empty(t, res.Insights)
	assert.Zero(t, h.mock.Calls())
	ms := h.memoryState(h.rootID)
	require.NotNil(t, ms.Memory)
	assert.Equal(t, "root memory", *ms.Memory)
	assert.Equal(t, int64(1), ms.Version)
}

func TestIntegrateRedoesWhenRootMemoryChangesMeanwhile(t *testing.T) {
	t.Parallel()
	h := newHarness(t, session.Options{}, session.SpaceInput{})
	child := h.fork(h.rootID, "Child", nil, nil)
	h.setSlot(child.Meta.ID, session.SlotMemory, "child memory")
	h.onRequest(func(n int) {
		if n == 1 {
			v := "hand-written synthesis"
			assert.NoError(t, h.store.SetSlot(h.ctx, h.space.ID, h.rootID, session.SlotMemory, &v))
		}
	})
	h.mock.Enqueue(
		mockllm.Reply{Content: fmt.Sprintf(`{"synthesis":"first","insights":[{"sessionId":%q,"content":"stale"}]}`, child.Meta.ID)},
		mockllm.Reply{Content: fmt.Sprintf(`{"synthesis":"second","insights":[{"sessionId":%q,"content":"fresh"}]}`, child.Meta.ID)},
	)
	sp, root := h.state(h.rootID)
	res, err := h.eng.Integrate(h.ctx, sp, root)
	require.NoError(t, err)
	assert.Equal(t, "second", res.Synthesis)
	reqs := h.mock.Requests()
	require.Len(t, reqs, 2)
	assert.Contains(t, reqs[1].Messages[1].Content, "## Previous synthesis\nhand-written synthesis")
	ms := h.memoryState(h.rootID)
	require.NotNil(t, ms.Memory)
	assert.Equal(t, "second", *ms.Memory)
	assert.Equal(t, int64(2), ms.Version)
	if ins := h.insight(h.space.ID, child.Meta.ID); assert.NotNil(t, ins) {
		assert.Equal(t, "fresh", *ins, "the failed attempt wrote no insight")
	}
}
