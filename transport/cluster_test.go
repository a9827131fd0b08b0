package transport_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/transport"
)

// pair is two processes (stacks) over one database.
type pair struct {
	a, b   *testutil.Stack
	ca, cb *client.Client
	store  *pgstore.Store
	key    string
}

func newPair(t *testing.T, o testutil.StackOptions) *pair {
	t.Helper()
	st := testutil.Store(t)
	o.Store = st
	a := testutil.NewStack(t, o)
	b := testutil.NewStack(t, o)
	_, key := a.User(t, "alice")
	return &pair{a: a, b: b, ca: client.New(a.URL, key), cb: client.New(b.URL, key), store: st, key: key}
}

// owner returns the node id that holds the space's lease.
func (p *pair) owner(t *testing.T, spaceID string) string {
	t.Helper()
	var node string
	err := p.store.Pool().QueryRow(t.Context(), "SELECT node_id::text FROM space_leases WHERE space_id = $1", spaceID).Scan(&node)
	if err != nil {
		return ""
	}
	return node
}

func forwardedTotal(t *testing.T, c *client.Client) float64 {
	t.Helper()
	m, err := c.Metrics(t.Context())
	require.NoError(t, err)
	var total float64
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, `stello_forwarded_requests_total{outcome="sent"}`) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			require.NoError(t, err)
			total += v
		}
	}
	return total
}

// TestClusterForwardsRESTSSEAndWebSocketToTheOwner: a space active on one
// process is served through the other exactly as through its owner; the
// other process never activates it.
func TestClusterForwardsRESTSSEAndWebSocketToTheOwner(t *testing.T) {
	t.Parallel()
	p := newPair(t, testutil.StackOptions{})
	ctx := t.Context()
	sp, err := p.ca.CreateSpace(ctx, client.SpaceInput{Label: "shared"})
	require.NoError(t, err)
	tree, err := p.ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	root := tree.ID
	require.Equal(t, p.a.Member.NodeID(), p.owner(t, sp.ID), "the first process to serve the space owns it")

	// REST writes and reads through B.
	child, err := p.cb.Fork(ctx, sp.ID, root, client.ForkOptions{Label: "via b"})
	require.NoError(t, err)
	res, err := p.cb.Turn(ctx, sp.ID, root, "hello")
	require.NoError(t, err)
	assert.Contains(t, res.Text(), "hello")
	_, err = p.cb.SetSlot(ctx, sp.ID, child.ID, client.SlotSystemPrompt, "be terse")
	require.NoError(t, err)

	// Read back through A at once.
	tree, err = p.ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	require.Len(t, tree.Children, 1)
	assert.Equal(t, "via b", tree.Children[0].Label)
	prompt, err := p.ca.Slot(ctx, sp.ID, child.ID, client.SlotSystemPrompt)
	require.NoError(t, err)
	assert.Equal(t, "be terse", *prompt)
	msgs, err := p.ca.Messages(ctx, sp.ID, root, 0, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, 2)

	// SSE through B, event by event.
	s, err := p.cb.TurnStream(ctx, sp.ID, root, "streamed")
	require.NoError(t, err)
	var text strings.Builder
	var types []client.EventType
	for ev, err := range s.Events() {
		require.NoError(t, err)
		types = append(types, ev.Type)
		text.WriteString(ev.Chunk)
	}
	assert.Equal(t, client.EventStart, types[0])
	assert.Equal(t, client.EventEnd, types[len(types)-1])
	assert.Contains(t, text.String(), "streamed")
	require.NotNil(t, s.Result())
	got, err := p.ca.GetTurn(ctx, sp.ID, root, s.TurnID())
	require.NoError(t, err)
	assert.Equal(t, "completed", string(got.State))

	// WebSocket through B: the socket is proxied to A.
	conn, err := p.cb.Dial(ctx, sp.ID)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Enter(ctx, root)
	require.NoError(t, err)
	require.NoError(t, conn.Subscribe(ctx))
	var streamed strings.Builder
	for ev, err := range conn.Stream(ctx, "over ws") {
		require.NoError(t, err)
		streamed.WriteString(ev.Chunk)
	}
	assert.Contains(t, streamed.String(), "over ws")
	// A fork made through A reaches the socket held through B.
	_, err = p.ca.Fork(ctx, sp.ID, root, client.ForkOptions{Label: "seen live"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for {
			select {
			case m := <-conn.Events():
				if m.Type == client.MsgSpaceEvent && m.Session != nil && m.Session.Label == "seen live" {
					return true
				}
			default:
				return false
			}
		}
	}, 10*time.Second, 10*time.Millisecond)

	assert.Equal(t, 0, p.b.Spaces.Len(), "B never activated the space")
	assert.Greater(t, forwardedTotal(t, p.cb), 0.0)
	assert.Equal(t, p.a.Member.NodeID(), p.owner(t, sp.ID))

	// Deleting through B closes the socket with 4404.
	require.NoError(t, p.cb.DeleteSpace(ctx, sp.ID))
	select {
	case <-conn.Done():
		require.NotNil(t, conn.CloseError())
		assert.Equal(t, 4404, conn.CloseError().Code)
	case <-time.After(10 * time.Second):
		t.Fatal("the proxied socket was not closed")
	}
	_, err = p.cb.Tree(ctx, sp.ID)
	require.ErrorIs(t, err, client.ErrNotFound)
}

// TestClusterConcurrentForksAndTurnsThroughBothProcesses: sibling indexes
// stay unique and one session's turns run one at a time, whichever
// process each request reaches.
func TestClusterConcurrentForksAndTurnsThroughBothProcesses(t *testing.T) {
	t.Parallel()
	p := newPair(t, testutil.StackOptions{LLM: fake.New(fake.Config{ChunkDelay: time.Millisecond})})
	ctx := t.Context()
	sp, err := p.ca.CreateSpace(ctx, client.SpaceInput{Label: "race"})
	require.NoError(t, err)
	tree, err := p.cb.Tree(ctx, sp.ID) // B owns it this time
	require.NoError(t, err)
	root := tree.ID
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for i := 0; i < n; i++ {
		c := p.ca
		if i%2 == 1 {
			c = p.cb
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := c.Fork(ctx, sp.ID, root, client.ForkOptions{Label: "f"})
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := c.Turn(ctx, sp.ID, root, "turn")
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	tree, err = p.ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	require.Len(t, tree.Children, n)
	seen := map[int]bool{}
	for _, c := range tree.Children {
		meta, err := p.cb.Session(ctx, sp.ID, c.ID)
		require.NoError(t, err)
		assert.False(t, seen[meta.Index], "index %d given twice", meta.Index)
		seen[meta.Index] = true
	}
	assert.Equal(t, n, tree.TurnCount)
	msgs, err := p.cb.Messages(ctx, sp.ID, root, 0, 0)
	require.NoError(t, err)
	require.Len(t, msgs, 2*n)
	for i, m := range msgs {
		want := "user"
		if i%2 == 1 {
			want = "assistant"
		}
		assert.Equal(t, want, string(m.Role), "record %d: turns interleaved", i)
	}
}

// TestClusterGracefulStopHandsSpacesOver: after its owner stops, a space is
// served by the other process on the very next request.
func TestClusterGracefulStopHandsSpacesOver(t *testing.T) {
	t.Parallel()
	p := newPair(t, testutil.StackOptions{})
	ctx := t.Context()
	sp, err := p.ca.CreateSpace(ctx, client.SpaceInput{Label: "moving"})
	require.NoError(t, err)
	_, err = p.ca.Turn(ctx, sp.ID, mustRoot(t, p.ca, sp.ID), "before")
	require.NoError(t, err)
	require.Equal(t, p.a.Member.NodeID(), p.owner(t, sp.ID))

	p.a.Stop()
	root := mustRoot(t, p.cb, sp.ID)
	_, err = p.cb.Turn(ctx, sp.ID, root, "after")
	require.NoError(t, err)
	assert.Equal(t, p.b.Member.NodeID(), p.owner(t, sp.ID))
	msgs, err := p.cb.Messages(ctx, sp.ID, root, 0, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, 4, "nothing committed by the stopped owner is lost")
}

// TestClusterEvictionHandsTheLeaseBack: an idle space evicted by its owner
// is free again, and the other process takes it on its next request
// instead of forwarding.
func TestClusterEvictionHandsTheLeaseBack(t *testing.T) {
	t.Parallel()
	p := newPair(t, testutil.StackOptions{})
	ctx := t.Context()
	sp, err := p.ca.CreateSpace(ctx, client.SpaceInput{Label: "idle"})
	require.NoError(t, err)
	root := mustRoot(t, p.ca, sp.ID)
	_, err = p.cb.Session(ctx, sp.ID, root) // B learns that A owns it
	require.NoError(t, err)
	require.True(t, p.a.Spaces.Evict(sp.ID))
	require.Eventually(t, func() bool { return p.owner(t, sp.ID) == "" }, 10*time.Second, 10*time.Millisecond,
		"the evicted space's lease is handed back")
	// B hears of the hand-back and stops routing the space to A: its
	// next look-up takes the free lease (until then it still routes to A,
	// which would take the space again itself; both are correct).
	require.Eventually(t, func() bool {
		rt, err := p.b.Spaces.Route(ctx, sp.ID, false)
		require.NoError(t, err)
		return rt.Local
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, p.b.Member.NodeID(), p.owner(t, sp.ID))
	_, err = p.cb.Session(ctx, sp.ID, root)
	require.NoError(t, err)
	assert.Equal(t, 1, p.b.Spaces.Len())
	assert.Equal(t, 0, p.a.Spaces.Len())
}

// TestClusterFencedOwnerCannotCommitAfterTakeover: an owner presumed dead
// (its heartbeat went stale while it ran a turn) loses the space to the
// other process; the turn it was running fails with UNAVAILABLE and
// nothing of it is stored; requests through it reach the new owner.
func TestClusterFencedOwnerCannotCommitAfterTakeover(t *testing.T) {
	t.Parallel()
	e := newTurnsEnvPair(t)
	ctx := t.Context()
	running := make(chan error, 1)
	go func() {
		_, err := e.ca.Turn(context.Background(), e.spaceID, e.root, "doomed")
		running <- err
	}()
	e.gate.wait(t, 1) // the turn is in the model call on A

	// A looks dead to the database; B takes the space over.
	_, err := e.store.Pool().Exec(ctx, "UPDATE nodes SET heartbeat_at = now() - lease_ttl - interval '1 second' WHERE id = $1",
		e.a.Member.NodeID())
	require.NoError(t, err)
	_, err = e.store.Pool().Exec(ctx, "UPDATE space_leases SET node_id = $2, epoch = nextval('space_lease_epoch') WHERE space_id = $1",
		e.spaceID, e.b.Member.NodeID())
	require.NoError(t, err)

	e.gate.openAll()
	select {
	case err := <-running:
		require.ErrorIs(t, err, client.ErrUnavailable, "the fenced turn fails")
	case <-time.After(20 * time.Second):
		t.Fatal("the turn did not end")
	}
	var records int
	require.NoError(t, e.store.Pool().QueryRow(ctx, "SELECT count(*) FROM records WHERE space_id = $1", e.spaceID).Scan(&records))
	assert.Equal(t, 0, records, "nothing of the fenced turn is stored")

	// Through A, the request now reaches B, which owns the space.
	res, err := e.ca.Turn(ctx, e.spaceID, e.root, "after the takeover")
	require.NoError(t, err)
	assert.Contains(t, res.Text(), "Mock reply to: after the takeover")
	msgs, err := e.cb.Messages(ctx, e.spaceID, e.root, 0, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, 2)
}

// TestClusterForwardedRequestIsNeverForwardedAgain: a process that gets a
// forwarded request for a space it does not own answers it as
// misdirected instead of forwarding it on.
func TestClusterForwardedRequestIsNeverForwardedAgain(t *testing.T) {
	t.Parallel()
	p := newPair(t, testutil.StackOptions{})
	ctx := t.Context()
	sp, err := p.ca.CreateSpace(ctx, client.SpaceInput{Label: "hop"})
	require.NoError(t, err)
	mustRoot(t, p.ca, sp.ID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.b.URL+"/spaces/"+sp.ID+"/sessions", nil)
	require.NoError(t, err)
	req.Header.Set("X-API-Key", p.key)
	req.Header.Set(transport.HopHeader, "some-other-process")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Equal(t, "1", res.Header.Get("Stello-Misdirected"))
	assert.Equal(t, 0, p.b.Spaces.Len())
}

func mustRoot(t *testing.T, c *client.Client, spaceID string) string {
	t.Helper()
	tree, err := c.Tree(t.Context(), spaceID)
	require.NoError(t, err)
	return tree.ID
}

// pairTurns is a pair whose model (the OpenAI-compatible mock, through the
// real client) holds every request at a gate, with a space active on A.
type pairTurns struct {
	*pair
	gate          *turnGate
	spaceID, root string
}

func newTurnsEnvPair(t *testing.T) *pairTurns {
	t.Helper()
	g := newTurnGate()
	t.Cleanup(g.openAll)
	_, cl := mockModel(t, g.wrap)
	p := newPair(t, testutil.StackOptions{LLM: cl})
	sp, err := p.ca.CreateSpace(t.Context(), client.SpaceInput{Label: "fenced"})
	require.NoError(t, err)
	root := mustRoot(t, p.ca, sp.ID)
	require.Equal(t, p.a.Member.NodeID(), p.owner(t, sp.ID))
	return &pairTurns{pair: p, gate: g, spaceID: sp.ID, root: root}
}
