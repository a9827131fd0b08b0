package space_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// panicTool is a tool whose call panics.
type panicTool struct{}

func (panicTool) Definition() llm.Tool {
	return llm.Tool{Name: "boom", Description: "panics", Parameters: json.RawMessage(`{"type":"object"}`)}
}

func (panicTool) Call(context.Context, session.ToolEnv, json.RawMessage) (string, error) {
	panic("tool exploded")
}

// panicClient is a model client that panics on every call.
type panicClient struct{}

func (panicClient) Complete(context.Context, llm.Request) (*llm.Response, error) {
	panic("sdk exploded")
}

func (panicClient) Stream(context.Context, llm.Request, func(llm.Delta) error) (*llm.Response, error) {
	panic("sdk exploded")
}

func (panicClient) Name() string { return "panic/model" }

type hEnv struct {
	ctx     context.Context
	store   *pgstore.Store
	mgr     *space.Manager
	g       *guard.Guard
	userID  string
	spaceID string
	rootID  string
}

func newHEnv(t *testing.T, client llm.Client, tools ...session.Tool) *hEnv {
	t.Helper()
	st := testutil.Store(t)
	g := guard.New(nil)
	eng := session.NewEngine(st, client, nil, session.Options{MaxContextTokens: 1000})
	for _, tool := range tools {
		eng.Tools().Register(tool)
	}
	mgr := space.NewManager(space.Options{Guard: g}, st, eng, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = mgr.Close(ctx)
	})
	e := &hEnv{ctx: context.Background(), store: st, mgr: mgr, g: g}
	u, _, err := st.CreateUser(e.ctx, "h")
	require.NoError(t, err)
	e.userID = u.ID
	sp, err := mgr.CreateSpace(e.ctx, u.ID, session.SpaceInput{Label: "H"})
	require.NoError(t, err)
	e.spaceID = sp.ID
	tree, err := mgr.Tree(e.ctx, u.ID, sp.ID)
	require.NoError(t, err)
	e.rootID = tree.Meta.ID
	return e
}

func (e *hEnv) turn(input string) (session.TurnResult, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	return e.mgr.Turn(ctx, e.userID, e.spaceID, e.rootID, input, nil)
}

func TestToolPanicAnswersInternalAndTheSpaceGoesOn(t *testing.T) {
	t.Parallel()
	mock := mockllm.New(mockllm.Config{})
	client := testutil.ModelClient(t, mock)
	e := newHEnv(t, client, panicTool{})
	mock.Enqueue(mockllm.Reply{ToolCalls: []mockllm.ToolCall{{Name: "boom", Arguments: `{}`}}})

	_, err := e.turn("call the tool")
	require.ErrorIs(t, err, guard.ErrPanic)
	assert.Equal(t, 1, e.g.Count("task"))

	// Nothing of the failed turn is stored, and the session takes the next
	// turn normally.
	mock.Enqueue(mockllm.Reply{Content: "fine"})
	res, err := e.turn("again")
	require.NoError(t, err)
	assert.Equal(t, 1, res.TurnCount)
	require.NotNil(t, res.FinalContent)
	assert.Equal(t, "fine", *res.FinalContent)
}

func TestModelClientPanicAnswersInternal(t *testing.T) {
	t.Parallel()
	e := newHEnv(t, panicClient{})
	for i := 0; i < 2; i++ {
		_, err := e.turn("hello")
		require.ErrorIs(t, err, guard.ErrPanic)
	}
	assert.Equal(t, 2, e.g.Count("task"))
	v, err := e.mgr.Session(e.ctx, e.userID, e.spaceID, e.rootID)
	require.NoError(t, err)
	assert.Zero(t, v.TurnCount)
}

func TestActorPanicRestartsTheSpaceFromTheDatabase(t *testing.T) {
	t.Parallel()
	e := newHEnv(t, panicClient{})
	_, err := e.mgr.SetSlot(e.ctx, e.userID, e.spaceID, e.rootID, session.SlotSystemPrompt, "kept")
	require.NoError(t, err)
	// The actor's memory is corrupted, then a message panics on it.
	err = space.PanicActor(e.mgr, e.spaceID)
	require.ErrorIs(t, err, guard.ErrPanic)
	assert.Equal(t, 1, e.g.Count("actor"))
	require.Eventually(t, func() bool { return e.mgr.Len() == 0 }, 5*time.Second, time.Millisecond, "the actor stopped")
	v, err := e.mgr.Slot(e.ctx, e.userID, e.spaceID, e.rootID, session.SlotSystemPrompt)
	require.NoError(t, err, "the next request starts a fresh actor")
	require.NotNil(t, v)
	assert.Equal(t, "kept", *v)
}

// gatedModel answers once released.
type gatedModel struct {
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedModel) Complete(ctx context.Context, _ llm.Request) (*llm.Response, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.gate:
		return &llm.Response{Content: "late"}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gatedModel) Stream(ctx context.Context, req llm.Request, _ func(llm.Delta) error) (*llm.Response, error) {
	return g.Complete(ctx, req)
}

func (g *gatedModel) Name() string { return "gated/model" }

func TestDeleteAnswersRunningAndQueuedTurnsAtOnce(t *testing.T) {
	t.Parallel()
	model := &gatedModel{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	t.Cleanup(func() { close(model.gate) })
	e := newHEnv(t, model)
	before := runtime.NumGoroutine()

	type out struct{ err error }
	outs := make(chan out, 4)
	for i := 0; i < 4; i++ {
		go func() {
			_, err := e.turn("hello")
			outs <- out{err}
		}()
		if i == 0 {
			<-model.entered // the first one runs, the others queue behind it
		}
	}
	require.Eventually(t, func() bool {
		n := 0
		// Three queued turns: the fourth Submit has landed once the
		// actor answers a read after it.
		_, err := e.mgr.Tree(e.ctx, e.userID, e.spaceID)
		if err == nil {
			n = 1
		}
		return n == 1
	}, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, e.mgr.DeleteSpace(e.ctx, e.userID, e.spaceID))

	deadline := time.After(5 * time.Second)
	for i := 0; i < 4; i++ {
		select {
		case o := <-outs:
			require.Error(t, o.err)
			assert.ErrorIs(t, o.err, session.ErrNotFound, "every waiting turn is told the space is gone")
		case <-deadline:
			t.Fatalf("only %d of 4 turns were answered after the delete", i)
		}
	}
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= before+2 }, 5*time.Second, 10*time.Millisecond,
		"the waiters' goroutines are gone")
}

func TestShutdownAnswersQueuedTurnsUnavailable(t *testing.T) {
	t.Parallel()
	model := &gatedModel{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	t.Cleanup(func() { close(model.gate) })
	e := newHEnv(t, model)
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func() {
			_, err := e.turn("hello")
			errs <- err
		}()
		if i == 0 {
			<-model.entered
		}
	}
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, e.mgr.Close(ctx))
	for i := 0; i < 3; i++ {
		select {
		case err := <-errs:
			require.ErrorIs(t, err, space.ErrUnavailable)
		case <-time.After(5 * time.Second):
			t.Fatal("a turn was not answered at shutdown")
		}
	}
}

func TestReadsAnswerWhileAWriteWaitsOnARowLock(t *testing.T) {
	t.Parallel()
	e := newHEnv(t, panicClient{})
	pool := e.store.Pool()
	tx, err := pool.Begin(e.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(e.ctx, "SELECT 1 FROM session_data WHERE session_id = $1 FOR UPDATE", e.rootID)
	require.NoError(t, err)

	// The write's caller gives up at once; the write itself goes on.
	wctx, cancel := context.WithTimeout(e.ctx, 100*time.Millisecond)
	defer cancel()
	_, err = e.mgr.SetSlot(wctx, e.userID, e.spaceID, e.rootID, session.SlotSystemPrompt, "written")
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// Reads of the space do not wait behind the blocked write.
	for i := 0; i < 5; i++ {
		rctx, rcancel := context.WithTimeout(e.ctx, time.Second)
		_, err := e.mgr.Tree(rctx, e.userID, e.spaceID)
		rcancel()
		require.NoError(t, err)
	}
	require.NoError(t, tx.Rollback(e.ctx))

	// Once committed, memory and database agree.
	require.Eventually(t, func() bool {
		v, err := e.mgr.Slot(e.ctx, e.userID, e.spaceID, e.rootID, session.SlotSystemPrompt)
		return err == nil && v != nil && *v == "written"
	}, 10*time.Second, 5*time.Millisecond)
	var stored string
	require.NoError(t, pool.QueryRow(e.ctx, "SELECT system_prompt FROM session_data WHERE session_id = $1", e.rootID).Scan(&stored))
	assert.Equal(t, "written", stored)
}

func TestInputValidation(t *testing.T) {
	t.Parallel()
	e := newHEnv(t, panicClient{})
	for name, tc := range map[string]struct{ input, field, msg string }{
		"nul":       {"a\x00b", "input", "NUL"},
		"bad utf-8": {"a\xffb", "input", "UTF-8"},
		"too large": {strings.Repeat("word ", 2000), "input", "over the context budget of 1000 tokens"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.turn(tc.input)
			var fe *session.FieldError
			require.True(t, errors.As(err, &fe), "got %v", err)
			assert.Equal(t, tc.field, fe.Field)
			assert.Contains(t, fe.Error(), tc.msg)
		})
	}
	assert.Zero(t, e.g.Count("task"), "nothing reached the model")
	_, err := e.mgr.Fork(e.ctx, e.userID, e.spaceID, e.rootID, session.ForkOptions{Label: "x\x00"})
	var fe *session.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "label", fe.Field)
	_, err = e.mgr.CreateSpace(e.ctx, e.userID, session.SpaceInput{Label: "ok", SystemPrompt: ptr("p\x00")})
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "systemPrompt", fe.Field)
}
