package actor

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/guard"
)

// counter is a behavior that records what it receives.
type counter struct {
	a        *Actor
	mu       sync.Mutex
	got      []any
	idle     atomic.Bool
	stopped  atomic.Bool
	rejected atomic.Int32
}

func (c *counter) Receive(msg any) {
	if ch, ok := msg.(chan struct{}); ok {
		<-ch
		return
	}
	if fn, ok := msg.(func(*Actor)); ok {
		fn(c.a)
		return
	}
	c.mu.Lock()
	c.got = append(c.got, msg)
	c.mu.Unlock()
}
func (c *counter) Idle() bool            { return c.idle.Load() }
func (c *counter) Stopped(error)         { c.stopped.Store(true) }
func (c *counter) Reject(_ any, _ error) { c.rejected.Add(1) }

func (c *counter) messages() []any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]any(nil), c.got...)
}

type registry struct {
	mu sync.Mutex
	m  map[string]*counter
	n  atomic.Int32
}

func (r *registry) factory(a *Actor) Behavior {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := &counter{a: a}
	c.idle.Store(true)
	r.m[a.ID()] = c
	r.n.Add(1)
	return c
}

func (r *registry) get(id string) *counter {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[id]
}

func newSys(t *testing.T, o Options) (*System, *registry) {
	r := &registry{m: map[string]*counter{}}
	s := NewSystem(o, r.factory)
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s, r
}

func TestMessagesInOrderAndLazyCreation(t *testing.T) {
	s, r := newSys(t, Options{MailboxSize: 1000})
	assert.Equal(t, 0, s.Len(), "no actor before the first message")
	for i := 0; i < 500; i++ {
		require.NoError(t, s.Send("a", i))
	}
	assert.Equal(t, 1, s.Len())
	require.Eventually(t, func() bool { return len(r.get("a").messages()) == 500 }, 5*time.Second, time.Millisecond)
	for i, m := range r.get("a").messages() {
		assert.Equal(t, i, m)
	}
}

func TestFullMailboxIsBusy(t *testing.T) {
	s, _ := newSys(t, Options{MailboxSize: 2})
	block := make(chan struct{})
	require.NoError(t, s.Send("a", block)) // taken by the goroutine, blocks it
	require.Eventually(t, func() bool { return s.Stats().Queued == 0 }, time.Second, time.Millisecond)
	require.NoError(t, s.Send("a", 1))
	require.NoError(t, s.Send("a", 2))
	assert.ErrorIs(t, s.Send("a", 3), ErrBusy)
	a, _ := s.Lookup("a")
	assert.NoError(t, a.Tell(4), "Tell ignores the capacity")
	close(block)
	assert.Equal(t, uint64(1), s.Stats().Busy)
}

func TestIdleActorHasNoGoroutine(t *testing.T) {
	s, r := newSys(t, Options{MailboxSize: 10})
	before := runtime.NumGoroutine()
	for i := 0; i < 1000; i++ {
		require.NoError(t, s.Send(string(rune('a'+i%26))+string(rune(i)), i))
	}
	require.Eventually(t, func() bool { return int(r.n.Load()) == 1000 && s.Stats().Queued == 0 }, 5*time.Second, time.Millisecond)
	// What stays is at most the system's idle workers (bounded whatever
	// the number of actors), never a goroutine per resident actor.
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= before+maxIdleWorkers+5 }, 5*time.Second, 5*time.Millisecond,
		"resident idle actors must not keep goroutines")
	assert.Equal(t, 1000, s.Len())
}

func TestIdleEvictionAndRestart(t *testing.T) {
	s, r := newSys(t, Options{IdleTTL: 30 * time.Millisecond})
	require.NoError(t, s.Send("a", 1))
	first := func() *counter { return r.get("a") }()
	require.Eventually(t, func() bool { return s.Len() == 0 }, 2*time.Second, 5*time.Millisecond)
	assert.True(t, first.stopped.Load())
	assert.Equal(t, uint64(1), s.Stats().Evictions)
	require.NoError(t, s.Send("a", 2))
	require.Eventually(t, func() bool { return r.n.Load() == 2 }, time.Second, time.Millisecond, "a new actor takes over")
}

func TestBusyActorIsNotEvicted(t *testing.T) {
	s, r := newSys(t, Options{IdleTTL: 20 * time.Millisecond})
	require.NoError(t, s.Send("a", 1))
	require.Eventually(t, func() bool { return r.get("a") != nil }, time.Second, time.Millisecond)
	r.get("a").idle.Store(false)
	time.Sleep(150 * time.Millisecond)
	assert.Equal(t, 1, s.Len(), "an actor that is not idle stays")
	r.get("a").idle.Store(true)
	require.Eventually(t, func() bool { return s.Len() == 0 }, 2*time.Second, 5*time.Millisecond)
}

func TestTaskReportsBackAndBlocksEviction(t *testing.T) {
	s, r := newSys(t, Options{IdleTTL: 20 * time.Millisecond})
	release := make(chan struct{})
	require.NoError(t, s.Send("a", func(a *Actor) {
		a.Go(func(ctx context.Context) any {
			<-release
			return "done"
		}, nil)
	}))
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, 1, s.Len(), "an actor with a running task is not evicted")
	close(release)
	require.Eventually(t, func() bool {
		m := r.get("a").messages()
		return len(m) == 1 && m[0] == "done"
	}, time.Second, time.Millisecond)
}

func TestStopSelfRejectsQueued(t *testing.T) {
	s, r := newSys(t, Options{MailboxSize: 10})
	block := make(chan struct{})
	require.NoError(t, s.Send("a", block))
	require.NoError(t, s.Send("a", func(a *Actor) { a.StopSelf(errors.New("gone")) }))
	require.NoError(t, s.Send("a", 1))
	require.NoError(t, s.Send("a", 2))
	close(block)
	require.Eventually(t, func() bool { return r.get("a").stopped.Load() }, time.Second, time.Millisecond)
	assert.Equal(t, int32(2), r.get("a").rejected.Load())
	assert.Equal(t, 0, s.Len())
	require.NoError(t, s.Send("a", 3), "sending again starts a fresh actor")
}

func TestCloseStopsEverything(t *testing.T) {
	r := &registry{m: map[string]*counter{}}
	s := NewSystem(Options{}, r.factory)
	cancelled := make(chan struct{})
	require.NoError(t, s.Send("a", func(a *Actor) {
		a.Go(func(ctx context.Context) any {
			<-ctx.Done()
			close(cancelled)
			return nil
		}, nil)
	}))
	require.Eventually(t, func() bool { return r.get("a") != nil }, time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Close(ctx))
	<-cancelled
	assert.ErrorIs(t, s.Send("b", 1), ErrClosed)
}

func TestPanicInReceiveStopsTheActorAndAnswers(t *testing.T) {
	g := guard.New(nil)
	s, r := newSys(t, Options{MailboxSize: 10, Guard: g})
	block := make(chan struct{})
	require.NoError(t, s.Send("a", block))
	require.NoError(t, s.Send("a", func(*Actor) { panic("boom") }))
	require.NoError(t, s.Send("a", 1))
	first := r.get("a")
	close(block)
	require.Eventually(t, func() bool { return first.stopped.Load() }, time.Second, time.Millisecond)
	// The panicking message and the one queued behind it were answered.
	assert.Equal(t, int32(2), first.rejected.Load())
	assert.Equal(t, 1, g.Count("actor"))
	assert.Equal(t, 0, s.Len(), "the actor is gone")
	require.NoError(t, s.Send("a", 2), "the next message starts a fresh actor")
	require.Eventually(t, func() bool {
		c := r.get("a")
		return c != first && len(c.messages()) == 1
	}, time.Second, time.Millisecond)
}

func TestPanicInTaskIsDeliveredAsMessage(t *testing.T) {
	g := guard.New(nil)
	s, r := newSys(t, Options{Guard: g})
	require.NoError(t, s.Send("a", func(a *Actor) {
		a.Go(func(ctx context.Context) any { panic("task boom") },
			func(err error) any { return err })
	}))
	require.Eventually(t, func() bool { return len(r.get("a").messages()) == 1 }, time.Second, time.Millisecond)
	err, _ := r.get("a").messages()[0].(error)
	require.ErrorIs(t, err, guard.ErrPanic)
	assert.NotContains(t, errors.Unwrap(err).Error(), "task boom", "the answer does not carry the panic value")
	assert.Equal(t, 1, g.Count("task"))
	assert.Equal(t, 1, s.Len(), "a task panic does not stop the actor")
}
