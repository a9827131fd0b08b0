package pgstore_test

import (
	"context"
	"encoding/json"
	"sync"
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

func newNode(t *testing.T, st *pgstore.Store, url string, ttl time.Duration) string {
	t.Helper()
	id := uuid.NewString()
	require.NoError(t, st.RegisterNode(t.Context(), id, url, ttl))
	return id
}

// kill makes a node's heartbeat older than its TTL: the node is dead.
func kill(t *testing.T, st *pgstore.Store, nodeID string) {
	t.Helper()
	_, err := st.Pool().Exec(t.Context(), "UPDATE nodes SET heartbeat_at = now() - lease_ttl - interval '1 second' WHERE id = $1", nodeID)
	require.NoError(t, err)
}

func TestAcquireSpaceLease(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, _ := newSpace(t, st, uid, "s")
	a := newNode(t, st, "http://a", 10*time.Second)
	b := newNode(t, st, "http://b", 10*time.Second)

	la, owner, err := st.AcquireSpace(ctx, sp.ID, a)
	require.NoError(t, err)
	require.Nil(t, owner, "a free space is taken")
	assert.Equal(t, a, la.NodeID)

	_, owner, err = st.AcquireSpace(ctx, sp.ID, b)
	require.NoError(t, err)
	require.NotNil(t, owner, "a live owner keeps its space")
	assert.Equal(t, session.Owner{NodeID: a, URL: "http://a"}, *owner)

	la2, owner, err := st.AcquireSpace(ctx, sp.ID, a)
	require.NoError(t, err)
	require.Nil(t, owner)
	assert.Greater(t, la2.Epoch, la.Epoch, "a new activation by the same owner gets a new epoch")

	kill(t, st, a)
	lb, owner, err := st.AcquireSpace(ctx, sp.ID, b)
	require.NoError(t, err)
	require.Nil(t, owner, "a dead owner's space is taken over")
	assert.Greater(t, lb.Epoch, la2.Epoch)

	_, _, err = st.AcquireSpace(ctx, uuid.NewString(), b)
	require.ErrorIs(t, err, session.ErrNotFound, "no lease for a space that does not exist")

	// A dead process takes nothing, even a free space.
	sp2, _ := newSpace(t, st, uid, "s2")
	_, _, err = st.AcquireSpace(ctx, sp2.ID, a)
	require.ErrorIs(t, err, pgstore.ErrNotAlive)
	require.ErrorIs(t, err, pgstore.ErrUnavailable)
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM space_leases WHERE space_id = $1", sp2.ID))
}

// TestLeaseTTLIsTheOwnersOwn: liveness is judged by each process's own
// TTL, whatever the TTL of the process asking.
func TestLeaseTTLIsTheOwnersOwn(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, _ := newSpace(t, st, uid, "s")
	short := newNode(t, st, "http://short", time.Second)
	long := newNode(t, st, "http://long", time.Hour)
	_, owner, err := st.AcquireSpace(ctx, sp.ID, short)
	require.NoError(t, err)
	require.Nil(t, owner)
	_, err = st.Pool().Exec(ctx, "UPDATE nodes SET heartbeat_at = now() - interval '2 seconds' WHERE id = $1", short)
	require.NoError(t, err)
	_, owner, err = st.AcquireSpace(ctx, sp.ID, long)
	require.NoError(t, err)
	assert.Nil(t, owner, "the short-TTL owner is dead after 2s, although the asker's TTL is an hour")
}

func TestReleaseSpacesAnnouncesAndKeepsTakenOverLeases(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a := newNode(t, st, "http://a", 10*time.Second)
	b := newNode(t, st, "http://b", 10*time.Second)
	sp1, _ := newSpace(t, st, uid, "1")
	sp2, _ := newSpace(t, st, uid, "2")
	l1, _, err := st.AcquireSpace(ctx, sp1.ID, a)
	require.NoError(t, err)
	l2, _, err := st.AcquireSpace(ctx, sp2.ID, a)
	require.NoError(t, err)

	notices := make(chan string, 4)
	lctx, cancel := context.WithCancel(ctx)
	listening := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.Listen(lctx, pgstore.LeaseChannel, func(p string) { notices <- p }, func() { once.Do(func() { close(listening) }) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	<-listening

	// sp2 was taken over meanwhile (a was presumed dead, then came back):
	// a's release must not free b's lease.
	kill(t, st, a)
	_, owner, err := st.AcquireSpace(ctx, sp2.ID, b)
	require.NoError(t, err)
	require.Nil(t, owner)
	require.NoError(t, st.ReleaseSpaces(ctx, a, []string{sp1.ID, sp2.ID}, []int64{l1.Epoch, l2.Epoch}))
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM space_leases WHERE space_id = $1", sp1.ID))
	assert.Equal(t, 1, count(t, st, "SELECT count(*) FROM space_leases WHERE space_id = $1 AND node_id = $2", sp2.ID, b))

	select {
	case p := <-notices:
		node, spaces, ok := pgstore.ParseLeaseNotice(p)
		require.True(t, ok, p)
		assert.Equal(t, a, node)
		assert.Equal(t, []string{sp1.ID}, spaces)
	case <-time.After(10 * time.Second):
		t.Fatal("no release notice")
	}

	require.NoError(t, st.DeregisterNode(ctx, b))
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM space_leases WHERE node_id = $1", b), "leaving hands every lease back")
	select {
	case p := <-notices:
		node, spaces, ok := pgstore.ParseLeaseNotice(p)
		require.True(t, ok, p)
		assert.Equal(t, b, node)
		assert.Empty(t, spaces)
	case <-time.After(10 * time.Second):
		t.Fatal("no leave notice")
	}
}

// TestEveryWriteIsFenced: once another process took the lease over, every
// write made under the old lease fails with ErrLeaseLost and stores
// nothing; the same writes under the new lease commit.
func TestEveryWriteIsFenced(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, root := newSpace(t, st, uid, "s")
	a := newNode(t, st, "http://a", 10*time.Second)
	b := newNode(t, st, "http://b", 10*time.Second)
	la, _, err := st.AcquireSpace(ctx, sp.ID, a)
	require.NoError(t, err)
	kill(t, st, a)
	lb, owner, err := st.AcquireSpace(ctx, sp.ID, b)
	require.NoError(t, err)
	require.Nil(t, owner)

	child := childState(sp.ID, root, 0, "child")
	snapshot := func() string {
		var s string
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT concat_ws('|',
			(SELECT count(*) FROM sessions WHERE space_id = $1),
			(SELECT count(*) FROM records WHERE space_id = $1),
			(SELECT count(*) FROM turns WHERE space_id = $1),
			(SELECT string_agg(concat_ws(',', status, turn_count), ';' ORDER BY id) FROM sessions WHERE space_id = $1),
			(SELECT string_agg(concat_ws(',', system_prompt, memory, memory_version, insight, summary), ';' ORDER BY session_id) FROM session_data WHERE space_id = $1),
			(SELECT concat_ws(',', label, config) FROM spaces WHERE id = $1),
			(SELECT count(*) FROM space_kv WHERE space_id = $1))`, sp.ID).Scan(&s))
		return s
	}
	at := now()
	rootID := root.Meta.ID
	turn := session.TurnCommit{SpaceID: sp.ID, SessionID: rootID, At: at,
		Records: []session.Record{{Role: llm.RoleUser, Content: "hi"}, {Role: llm.RoleAssistant, Content: "hello"}},
		Log:     &session.TurnLog{ID: uuid.NewString(), SpaceID: sp.ID, SessionID: rootID, State: session.TurnCompleted, Input: "hi", CreatedAt: at}}
	writes := map[string]func(ctx context.Context) error{
		"commit turn": func(ctx context.Context) error { _, _, err := st.CommitTurn(ctx, turn); return err },
		"fork":        func(ctx context.Context) error { return st.CreateSession(ctx, child, true, ptr("go")) },
		"set slot": func(ctx context.Context) error {
			return st.SetSlot(ctx, sp.ID, rootID, session.SlotSystemPrompt, ptr("new"))
		},
		"update space": func(ctx context.Context) error {
			_, err := st.UpdateSpace(ctx, sp.ID, session.SpacePatch{Label: ptr("renamed"), Config: json.RawMessage(`{"a":1}`)})
			return err
		},
		"consolidation": func(ctx context.Context) error {
			_, _, err := st.WriteConsolidation(ctx, sp.ID, rootID, "mem", 0, 1)
			return err
		},
		"integration": func(ctx context.Context) error {
			_, _, _, err := st.WriteIntegration(ctx, sp.ID, rootID, "synth", 0, nil)
			return err
		},
		"summary":  func(ctx context.Context) error { return st.SaveSummary(ctx, sp.ID, rootID, "sum", 5) },
		"space kv": func(ctx context.Context) error { return st.SetSpaceValue(ctx, sp.ID, "k", json.RawMessage(`1`)) },
		"turn log": func(ctx context.Context) error {
			fin := at
			return st.LogTurn(ctx, session.TurnLog{ID: uuid.NewString(), SpaceID: sp.ID, SessionID: rootID, State: session.TurnFailed,
				Input: "x", ErrorCode: "LLM_ERROR", CreatedAt: at, FinishedAt: &fin})
		},
		"archive": func(ctx context.Context) error { _, err := st.ArchiveSession(ctx, sp.ID, rootID); return err },
		"delete":  func(ctx context.Context) error { return st.DeleteSpace(ctx, sp.ID) },
	}
	before := snapshot()
	stale := session.WithLease(ctx, la)
	for name, w := range writes {
		err := w(stale)
		require.ErrorIs(t, err, session.ErrLeaseLost, name)
		require.Equal(t, before, snapshot(), "%s under a lost lease stored something", name)
	}
	// The same writes commit under the current lease (delete last).
	current := session.WithLease(ctx, lb)
	for _, name := range []string{"commit turn", "fork", "set slot", "update space", "consolidation", "integration", "summary", "space kv", "turn log", "archive"} {
		if name == "archive" {
			_, err := st.ArchiveSession(current, sp.ID, child.Meta.ID)
			require.NoError(t, err, name)
			continue
		}
		require.NoError(t, writes[name](current), name)
	}
	assert.NotEqual(t, before, snapshot())
	require.NoError(t, writes["delete"](current))
	assert.Equal(t, 0, count(t, st, "SELECT count(*) FROM spaces WHERE id = $1", sp.ID))
}

// TestTakeoverWaitsForAWriteInFlight: a takeover cannot slip between the
// fence check and the commit of a write: it waits for the write's
// transaction, and the new owner's load then sees the write.
func TestTakeoverWaitsForAWriteInFlight(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	sp, _ := newSpace(t, st, uid, "s")
	a := newNode(t, st, "http://a", 10*time.Second)
	b := newNode(t, st, "http://b", 10*time.Second)
	la, _, err := st.AcquireSpace(ctx, sp.ID, a)
	require.NoError(t, err)

	// A's write holds the lease row (the fence's share lock) in an open
	// transaction.
	tx, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT stello_fence($1, $2, $3)", sp.ID, la.NodeID, la.Epoch)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "UPDATE spaces SET label = 'written by a' WHERE id = $1", sp.ID)
	require.NoError(t, err)

	kill(t, st, a)
	took := make(chan error, 1)
	go func() {
		_, owner, err := st.AcquireSpace(ctx, sp.ID, b)
		if err == nil && owner != nil {
			err = assert.AnError
		}
		took <- err
	}()
	select {
	case err := <-took:
		t.Fatalf("the takeover did not wait for the write in flight: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-took)
	got, _, err := st.LoadSpace(ctx, sp.ID)
	require.NoError(t, err)
	assert.Equal(t, "written by a", got.Label, "the new owner sees the old owner's committed write")
}

func TestNodesCountsLeases(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	uid, _ := newUser(t, st, "alice")
	a := newNode(t, st, "http://a", 10*time.Second)
	b := newNode(t, st, "http://b", 3*time.Second)
	for i := 0; i < 3; i++ {
		sp, _ := newSpace(t, st, uid, "s")
		_, _, err := st.AcquireSpace(ctx, sp.ID, a)
		require.NoError(t, err)
	}
	kill(t, st, b)
	nodes, err := st.Nodes(ctx)
	require.NoError(t, err)
	require.Len(t, nodes, 2)
	byID := map[string]pgstore.Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	assert.True(t, byID[a].Alive)
	assert.Equal(t, 3, byID[a].Spaces)
	assert.Equal(t, "http://a", byID[a].AdvertiseURL)
	assert.Equal(t, 10*time.Second, byID[a].LeaseTTL)
	assert.False(t, byID[b].Alive)
	assert.Greater(t, byID[b].HeartbeatAge, 3*time.Second)

	n, err := st.PruneNodes(ctx, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, int64(1), n)
	ok, err := st.Heartbeat(ctx, b)
	require.NoError(t, err)
	assert.False(t, ok, "a pruned node must register again")
}

func TestParseLeaseNotice(t *testing.T) {
	for _, c := range []struct {
		in     string
		node   string
		spaces []string
		ok     bool
	}{
		{"node n1", "n1", nil, true},
		{"spaces n1 s1,s2", "n1", []string{"s1", "s2"}, true},
		{"spaces n1", "", nil, false},
		{"node ", "", nil, false},
		{"bogus", "", nil, false},
		{"", "", nil, false},
	} {
		node, spaces, ok := pgstore.ParseLeaseNotice(c.in)
		assert.Equal(t, c.ok, ok, c.in)
		assert.Equal(t, c.node, node, c.in)
		assert.Equal(t, c.spaces, spaces, c.in)
	}
}
