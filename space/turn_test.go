package space_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// tqModel wraps mockllm to observe concurrency: it counts requests in
// flight and, when gated, holds every request until released.
type tqModel struct {
	mock     *mockllm.Server
	inflight atomic.Int32
	maxIn    atomic.Int32
	entered  atomic.Int32
	gate     chan struct{} // nil: not gated
	once     sync.Once
}

func (m *tqModel) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := m.inflight.Add(1)
	defer m.inflight.Add(-1)
	for {
		old := m.maxIn.Load()
		if n <= old || m.maxIn.CompareAndSwap(old, n) {
			break
		}
	}
	m.entered.Add(1)
	if m.gate != nil {
		select {
		case <-m.gate:
		case <-r.Context().Done():
			return
		}
	}
	m.mock.ServeHTTP(w, r)
}

// release lets every held and future request through.
func (m *tqModel) release() {
	if m.gate != nil {
		m.once.Do(func() { close(m.gate) })
	}
}

// tqEnv is a Manager over a real database and the real OpenAI client
// talking to a mock model, with one space owned by userID.
type tqEnv struct {
	ctx     context.Context
	store   *pgstore.Store
	model   *tqModel
	mgr     *space.Manager
	reg     *prometheus.Registry
	userID  string
	spaceID string
	rootID  string
}

func newTQEnv(t *testing.T, opts space.Options, gated bool) *tqEnv {
	t.Helper()
	e := &tqEnv{ctx: context.Background(), store: testutil.Store(t), model: &tqModel{mock: mockllm.New(mockllm.Config{})}}
	if gated {
		e.model.gate = make(chan struct{})
	}
	client := testutil.ModelClient(t, e.model)
	e.mgr = space.NewManager(opts, e.store, session.NewEngine(e.store, client, nil, session.Options{}), nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.mgr.Close(ctx)
	})
	t.Cleanup(e.model.release) // runs first: nothing stays held
	e.reg = prometheus.NewRegistry()
	e.reg.MustRegister(e.mgr.Collectors()...)

	u, _, err := e.store.CreateUser(e.ctx, "tq")
	require.NoError(t, err)
	e.userID = u.ID
	sp, err := e.mgr.CreateSpace(e.ctx, u.ID, session.SpaceInput{Label: "Turns"})
	require.NoError(t, err)
	e.spaceID = sp.ID
	tree, err := e.mgr.Tree(e.ctx, u.ID, sp.ID)
	require.NoError(t, err)
	e.rootID = tree.Meta.ID
	return e
}

func (e *tqEnv) turn(sessionID, input string) (session.TurnResult, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	return e.mgr.Turn(ctx, e.userID, e.spaceID, sessionID, input, nil)
}

type tqResult struct {
	res session.TurnResult
	err error
}

// goTurn starts a turn and returns the channel of its outcome.
func (e *tqEnv) goTurn(sessionID, input string) <-chan tqResult {
	ch := make(chan tqResult, 1)
	go func() {
		res, err := e.turn(sessionID, input)
		ch <- tqResult{res, err}
	}()
	return ch
}

func (e *tqEnv) fork(t *testing.T, label string) string {
	t.Helper()
	v, err := e.mgr.Fork(e.ctx, e.userID, e.spaceID, e.rootID, session.ForkOptions{Label: label})
	require.NoError(t, err)
	return v.ID
}

func (e *tqEnv) records(t *testing.T, sessionID string) []session.Record {
	t.Helper()
	recs, err := e.store.ListRecords(e.ctx, e.spaceID, sessionID, 0, 0)
	require.NoError(t, err)
	return recs
}

// slot reads a data slot through the actor. It may run inside
// require.Eventually, hence assert rather than require.
func (e *tqEnv) slot(t *testing.T, sessionID string, s session.Slot) *string {
	t.Helper()
	v, err := e.mgr.Slot(e.ctx, e.userID, e.spaceID, sessionID, s)
	assert.NoError(t, err)
	return v
}

// counter reads a counter of the manager's collectors by name and label
// (assert, not require: it runs inside require.Eventually).
func (e *tqEnv) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	assert.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func recv(t *testing.T, ch <-chan tqResult) tqResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("turn did not finish")
		return tqResult{}
	}
}

// holdActor blocks the space actor's goroutine and returns the function
// that releases it. While it is held, messages pile up in the actor's
// mailbox in the order they were sent.
func (e *tqEnv) holdActor(t *testing.T) func() {
	t.Helper()
	release, err := space.HoldActor(e.mgr, e.spaceID)
	require.NoError(t, err)
	return release
}

func TestManagerTurnsOnOneSessionRunSeriallyInArrivalOrder(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, false)
	for i := 1; i <= 3; i++ {
		e.model.mock.Enqueue(mockllm.Reply{Content: fmt.Sprintf("reply %d", i), Delay: 50 * time.Millisecond})
	}

	// Queue three turns in a known order while the actor is held, so they
	// arrive together.
	unhold := e.holdActor(t)
	var chans []<-chan tqResult
	for i := 1; i <= 3; i++ {
		chans = append(chans, e.goTurn(e.rootID, fmt.Sprintf("input %d", i)))
		want := int64(i)
		require.Eventually(t, func() bool { return e.mgr.System().Stats().Queued == want }, 10*time.Second, time.Millisecond)
	}
	unhold()

	for i, ch := range chans {
		r := recv(t, ch)
		require.NoError(t, r.err)
		assert.Equal(t, i+1, r.res.TurnCount, "turn %d commits as the session's turn %d", i+1, i+1)
		require.NotNil(t, r.res.FinalContent)
		assert.Equal(t, fmt.Sprintf("reply %d", i+1), *r.res.FinalContent)
	}
	assert.Equal(t, int32(1), e.model.maxIn.Load(), "never two model calls at once on one session")

	// Each call saw every previous turn committed, in order.
	reqs := e.model.mock.Requests()
	require.Len(t, reqs, 3)
	for k, rr := range reqs {
		var want []string
		for j := 1; j <= k; j++ {
			want = append(want, "user:"+fmt.Sprintf("input %d", j), "assistant:"+fmt.Sprintf("reply %d", j))
		}
		want = append(want, "user:"+fmt.Sprintf("input %d", k+1))
		var got []string
		for _, m := range rr.Messages {
			got = append(got, m.Role+":"+m.Content)
		}
		assert.Equal(t, want, got, "request %d", k+1)
	}
	assert.Len(t, e.records(t, e.rootID), 6)
}

func TestManagerTurnsOnDifferentSessionsOverlap(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, true)
	child := e.fork(t, "Child")

	a := e.goTurn(e.rootID, "root question")
	b := e.goTurn(child, "child question")
	require.Eventually(t, func() bool { return e.model.inflight.Load() == 2 }, 10*time.Second, time.Millisecond,
		"both sessions' model calls are in flight at once")
	e.model.release()

	for _, ch := range []<-chan tqResult{a, b} {
		r := recv(t, ch)
		require.NoError(t, r.err)
		assert.Equal(t, 1, r.res.TurnCount)
	}
	assert.GreaterOrEqual(t, e.model.maxIn.Load(), int32(2))
	assert.Len(t, e.records(t, e.rootID), 2)
	assert.Len(t, e.records(t, child), 2)
}

func TestManagerReadsAnswerWhileATurnWaitsForTheModel(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, true)
	child := e.fork(t, "Child")
	ch := e.goTurn(e.rootID, "slow question")
	require.Eventually(t, func() bool { return e.model.entered.Load() == 1 }, 10*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	tree, err := e.mgr.Tree(ctx, e.userID, e.spaceID)
	require.NoError(t, err)
	assert.Equal(t, e.rootID, tree.Meta.ID)
	require.Len(t, tree.Children, 1)
	assert.Equal(t, child, tree.Children[0].Meta.ID)
	v, err := e.mgr.Session(ctx, e.userID, e.spaceID, e.rootID)
	require.NoError(t, err)
	assert.Equal(t, 0, v.TurnCount, "the running turn is not committed yet")
	sp, err := e.mgr.GetSpace(ctx, e.userID, e.spaceID)
	require.NoError(t, err)
	assert.Equal(t, "Turns", sp.Label)
	// A write to another session is not held up either.
	_, err = e.mgr.SetSlot(ctx, e.userID, e.spaceID, child, session.SlotMemory, "m")
	require.NoError(t, err)
	select {
	case r := <-ch:
		t.Fatalf("the turn finished while its model call was held: %+v", r)
	default:
	}

	e.model.release()
	r := recv(t, ch)
	require.NoError(t, r.err)
	v, err = e.mgr.Session(ctx, e.userID, e.spaceID, e.rootID)
	require.NoError(t, err)
	assert.Equal(t, 1, v.TurnCount)
}

func TestManagerTurnQueueFullIsBusy(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{SessionQueue: 1}, true)
	first := e.goTurn(e.rootID, "one")
	require.Eventually(t, func() bool { return e.model.entered.Load() == 1 }, 10*time.Second, time.Millisecond)

	// Of two more turns, one waits in the queue and the other is refused.
	b := e.goTurn(e.rootID, "two")
	c := e.goTurn(e.rootID, "three")
	var busy tqResult
	var waiting <-chan tqResult
	select {
	case busy = <-b:
		waiting = c
	case busy = <-c:
		waiting = b
	case <-time.After(30 * time.Second):
		t.Fatal("no turn was refused")
	}
	require.Error(t, busy.err)
	assert.ErrorIs(t, busy.err, session.ErrBusy)
	assert.Equal(t, int32(1), e.model.entered.Load(), "the refused turn never reached the model")

	e.model.release()
	r := recv(t, first)
	require.NoError(t, r.err)
	assert.Equal(t, 1, r.res.TurnCount)
	r = recv(t, waiting)
	require.NoError(t, r.err)
	assert.Equal(t, 2, r.res.TurnCount)
	assert.Len(t, e.records(t, e.rootID), 4)
}

func TestManagerTurnTimeoutPersistsNothingAndTheSessionRecovers(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{TurnTimeout: time.Second}, false)
	e.model.mock.Enqueue(
		mockllm.Reply{Content: "first answer"},
		mockllm.Reply{Content: "too late", Delay: time.Minute},
		mockllm.Reply{Content: "on time"},
	)

	_, err := e.turn(e.rootID, "first")
	require.NoError(t, err)

	_, err = e.turn(e.rootID, "slow")
	require.Error(t, err)
	assert.ErrorIs(t, err, llm.ErrTimeout)
	assert.Len(t, e.records(t, e.rootID), 2, "nothing of the timed-out turn is persisted")
	v, err := e.mgr.Session(e.ctx, e.userID, e.spaceID, e.rootID)
	require.NoError(t, err)
	assert.Equal(t, 1, v.TurnCount)

	res, err := e.turn(e.rootID, "fast")
	require.NoError(t, err)
	assert.Equal(t, 2, res.TurnCount)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "on time", *res.FinalContent)
	recs := e.records(t, e.rootID)
	require.Len(t, recs, 4)
	assert.Equal(t, "fast", recs[2].Content)
	assert.Equal(t, "on time", recs[3].Content)
	// The timed-out input is not in the next turn's context either.
	reqs := e.model.mock.Requests()
	require.Len(t, reqs, 3)
	var got []string
	for _, m := range reqs[2].Messages {
		got = append(got, m.Role+":"+m.Content)
	}
	assert.Equal(t, []string{"user:first", "assistant:first answer", "user:fast"}, got)
}

func TestManagerTurnOnArchivedSessionIsRefused(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, false)
	child := e.fork(t, "Old")
	_, err := e.mgr.Archive(e.ctx, e.userID, e.spaceID, child)
	require.NoError(t, err)

	_, err = e.turn(child, "hello?")
	require.Error(t, err)
	assert.ErrorIs(t, err, session.ErrArchived)
	assert.Zero(t, e.model.mock.Calls())
	assert.Empty(t, e.records(t, child))
}

func TestManagerConsolidatesAndIntegratesInTheBackground(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{ConsolidateEvery: 2, IntegrateDelay: 20 * time.Millisecond}, false)
	child := e.fork(t, "Child")

	// Unscripted: the mock generates text, and JSON for JSON-mode requests.
	_, err := e.turn(child, "first question")
	require.NoError(t, err)
	_, err = e.turn(child, "second question")
	require.NoError(t, err)

	require.Eventually(t, func() bool { return e.slot(t, child, session.SlotMemory) != nil }, 10*time.Second, 5*time.Millisecond,
		"the child's memory is consolidated after two turns")
	wantInsight := "Mock insight for session " + child + "."
	require.Eventually(t, func() bool {
		ins := e.slot(t, child, session.SlotInsight)
		return ins != nil && *ins == wantInsight
	}, 10*time.Second, 5*time.Millisecond, "integration writes an insight into the child")
	root := e.slot(t, e.rootID, session.SlotMemory)
	require.NotNil(t, root)
	assert.True(t, strings.HasPrefix(*root, "Mock synthesis of 1 session(s): "), *root)

	// The database agrees with the actor.
	_, states, err := e.store.LoadSpace(e.ctx, e.spaceID)
	require.NoError(t, err)
	for _, st := range states {
		switch st.Meta.ID {
		case e.rootID:
			require.NotNil(t, st.Data.Memory)
			assert.Equal(t, *root, *st.Data.Memory)
		case child:
			require.NotNil(t, st.Data.Memory)
			require.NotNil(t, st.Data.Insight)
			assert.Equal(t, wantInsight, *st.Data.Insight)
		}
	}

	// One consolidation and one integration ran.
	var cons, integ int
	for _, rr := range e.model.mock.Requests() {
		switch {
		case rr.ResponseFormat == "json_object":
			integ++
			assert.Equal(t, session.DefaultIntegratePrompt, rr.Messages[0].Content)
		case len(rr.Messages) > 0 && rr.Messages[0].Content == session.DefaultConsolidatePrompt:
			cons++
			assert.Contains(t, rr.Messages[1].Content, "user: first question")
			assert.Contains(t, rr.Messages[1].Content, "user: second question")
		}
	}
	assert.Equal(t, 1, cons)
	assert.Equal(t, 1, integ)

	// The next turn on the child sees its memory and the insight, once.
	res, err := e.turn(child, "third question")
	require.NoError(t, err)
	require.NotNil(t, res.ConsumedInsight)
	assert.Equal(t, wantInsight, *res.ConsumedInsight)
	reqs := e.model.mock.Requests()
	var sent []string
	for _, m := range reqs[len(reqs)-1].Messages {
		sent = append(sent, m.Content)
	}
	assert.Contains(t, strings.Join(sent, "\n"), wantInsight)
	assert.Nil(t, e.slot(t, child, session.SlotInsight), "the insight is consumed")
}

// Not parallel: the consolidation counter is process-wide, and parallel
// tests only start once every sequential test has finished.
func TestManagerConsolidationFailureDoesNotFailTheTurn(t *testing.T) {
	e := newTQEnv(t, space.Options{ConsolidateEvery: 1}, false)
	before := e.counter(t, "stello_consolidations_total", "result", "error")
	okBefore := e.counter(t, "stello_consolidations_total", "result", "ok")
	e.model.mock.Enqueue(mockllm.Reply{Content: "answer"}, mockllm.Reply{Status: http.StatusInternalServerError, ErrorMessage: "down"})

	res, err := e.turn(e.rootID, "question")
	require.NoError(t, err)
	assert.Equal(t, 1, res.TurnCount)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "answer", *res.FinalContent)

	require.Eventually(t, func() bool {
		return e.counter(t, "stello_consolidations_total", "result", "error") >= before+1
	}, 10*time.Second, 5*time.Millisecond, "the failed consolidation is counted")
	assert.Equal(t, before+1, e.counter(t, "stello_consolidations_total", "result", "error"))
	assert.Equal(t, okBefore, e.counter(t, "stello_consolidations_total", "result", "ok"))
	assert.Equal(t, 2, e.model.mock.Calls())
	assert.Nil(t, e.slot(t, e.rootID, session.SlotMemory))
	assert.Len(t, e.records(t, e.rootID), 2, "the turn itself is persisted")

	// The session keeps working.
	e.model.mock.Enqueue(mockllm.Reply{Content: "again"}, mockllm.Reply{Content: "memory now"})
	res, err = e.turn(e.rootID, "another")
	require.NoError(t, err)
	assert.Equal(t, 2, res.TurnCount)
	require.Eventually(t, func() bool {
		m := e.slot(t, e.rootID, session.SlotMemory)
		return m != nil && *m == "memory now"
	}, 10*time.Second, 5*time.Millisecond)
}

func TestManagerTurnHistorySurvivesEviction(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, false)
	for i := 1; i <= 3; i++ {
		e.model.mock.Enqueue(mockllm.Reply{Content: fmt.Sprintf("reply %d", i)})
	}
	_, err := e.turn(e.rootID, "input 1")
	require.NoError(t, err)
	_, err = e.turn(e.rootID, "input 2")
	require.NoError(t, err)

	// A reloaded actor rebuilds the history from the database.
	require.Eventually(t, func() bool {
		e.mgr.Evict(e.spaceID)
		return e.mgr.Len() == 0
	}, 10*time.Second, 5*time.Millisecond)
	res, err := e.turn(e.rootID, "input 3")
	require.NoError(t, err)
	assert.Equal(t, 3, res.TurnCount)

	reqs := e.model.mock.Requests()
	require.Len(t, reqs, 3)
	var got []string
	for _, m := range reqs[2].Messages {
		got = append(got, m.Role+":"+m.Content)
	}
	assert.Equal(t, []string{"user:input 1", "assistant:reply 1", "user:input 2", "assistant:reply 2", "user:input 3"}, got)
}

func TestManagerTurnCompletesWhenTheCallerGivesUp(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, true)
	e.model.mock.Enqueue(mockllm.Reply{Content: "answer nobody waited for"})
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() {
		_, err := e.mgr.Turn(ctx, e.userID, e.spaceID, e.rootID, "question", nil)
		done <- err
	}()
	require.Eventually(t, func() bool { return e.model.entered.Load() == 1 }, 10*time.Second, time.Millisecond)
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(30 * time.Second):
		t.Fatal("Turn did not return when its context ended")
	}

	e.model.release()
	require.Eventually(t, func() bool {
		v, err := e.mgr.Session(e.ctx, e.userID, e.spaceID, e.rootID)
		return err == nil && v.TurnCount == 1
	}, 10*time.Second, 5*time.Millisecond, "the turn still commits")
	recs := e.records(t, e.rootID)
	require.Len(t, recs, 2)
	assert.Equal(t, "answer nobody waited for", recs[1].Content)
}

func TestManagerQueuedTurnFailsWhenItsSessionIsArchived(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, true)
	child := e.fork(t, "Doomed")
	first := e.goTurn(child, "one")
	require.Eventually(t, func() bool { return e.model.entered.Load() == 1 }, 10*time.Second, time.Millisecond)

	// The second turn is queued before the archive arrives.
	unhold := e.holdActor(t)
	second := e.goTurn(child, "two")
	require.Eventually(t, func() bool { return e.mgr.System().Stats().Queued == 1 }, 10*time.Second, time.Millisecond)
	archived := make(chan error, 1)
	go func() {
		_, err := e.mgr.Archive(e.ctx, e.userID, e.spaceID, child)
		archived <- err
	}()
	require.Eventually(t, func() bool { return e.mgr.System().Stats().Queued == 2 }, 10*time.Second, time.Millisecond)
	unhold()
	require.NoError(t, <-archived)

	e.model.release()
	r := recv(t, first)
	require.NoError(t, r.err, "the running turn completes")
	assert.Equal(t, 1, r.res.TurnCount)
	r = recv(t, second)
	require.Error(t, r.err)
	assert.ErrorIs(t, r.err, session.ErrArchived)
	assert.Equal(t, int32(1), e.model.entered.Load(), "the queued turn never reached the model")
	assert.Len(t, e.records(t, child), 2)
}
