package actor

import (
	"context"
	"errors"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/puzpuzpuz/xsync/v3"

	"github.com/stellohq/stello/internal/guard"
)

// Options configure a System.
type Options struct {
	// IdleTTL is how long an idle actor stays resident; 0 disables eviction.
	IdleTTL time.Duration
	// MailboxSize bounds each mailbox (default 256).
	MailboxSize int
	// Guard logs and counts panics of behaviors and tasks (may be nil).
	Guard *guard.Guard
}

// massEviction is how many evictions between two sweeps make the runtime
// return memory to the OS.
const massEviction = 1000

// Factory makes the behavior of a new actor.
type Factory func(a *Actor) Behavior

// System is the registry and supervisor of actors, the "agent pool".
type System struct {
	opts    Options
	factory Factory
	actors  *xsync.MapOf[string, *Actor]
	done    *xsync.MapOf[*Actor, chan struct{}]

	ctx    context.Context
	cancel context.CancelFunc
	closed atomic.Bool
	tasks  sync.WaitGroup
	loop   sync.WaitGroup
	pool   *workers

	queued    atomic.Int64
	busy      atomic.Uint64
	evictions atomic.Uint64
	dropped   atomic.Uint64
	started   atomic.Uint64
}

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("actor system closed")

// NewSystem starts a system; Close stops it.
func NewSystem(opts Options, factory Factory) *System {
	if opts.MailboxSize <= 0 {
		opts.MailboxSize = 256
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &System{opts: opts, factory: factory, actors: xsync.NewMapOf[string, *Actor](),
		done: xsync.NewMapOf[*Actor, chan struct{}](), ctx: ctx, cancel: cancel}
	s.pool = newWorkers(ctx, opts.Guard)
	if opts.IdleTTL > 0 {
		s.loop.Add(1)
		go s.evictLoop()
	}
	return s
}

// Get returns the actor with the id, creating it if needed.
func (s *System) Get(id string) (*Actor, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	a, _ := s.actors.LoadOrCompute(id, func() *Actor {
		a := &Actor{id: id, sys: s}
		a.lastActive.Store(time.Now().UnixNano())
		s.done.Store(a, make(chan struct{}))
		a.beh = s.factory(a)
		s.started.Add(1)
		return a
	})
	return a, nil
}

// Lookup returns the actor with the id if it is resident.
func (s *System) Lookup(id string) (*Actor, bool) { return s.actors.Load(id) }

// Send delivers msg to the actor with the id, creating it if needed.
func (s *System) Send(id string, msg any) error {
	for i := 0; i < 100; i++ {
		a, err := s.Get(id)
		if err != nil {
			return err
		}
		err = a.Send(msg)
		if !errors.Is(err, ErrStopped) {
			return err
		}
		// The actor stopped between Get and Send; a new one takes over.
		s.remove(a)
	}
	return ErrStopped
}

// Evict asks the actor to stop as soon as it is idle. It reports whether the
// actor was resident.
func (s *System) Evict(id string) bool {
	a, ok := s.actors.Load(id)
	if !ok {
		return false
	}
	return a.send(stopMsg{onlyIfIdle: true, err: ErrStopped}, true) == nil
}

// Stop stops the actor now, whatever it holds; queued messages are rejected
// with err.
func (s *System) Stop(id string, err error) {
	if a, ok := s.actors.Load(id); ok {
		_ = a.send(stopMsg{err: err}, true)
	}
}

// StopAll stops every resident actor now, as Stop does.
func (s *System) StopAll(err error) {
	s.actors.Range(func(_ string, a *Actor) bool {
		_ = a.send(stopMsg{err: err}, true)
		return true
	})
}

// MailboxSize is the capacity of each mailbox.
func (s *System) MailboxSize() int { return s.opts.MailboxSize }

// Len returns the number of resident actors.
func (s *System) Len() int { return s.actors.Size() }

// Stats are counters for metrics.
type Stats struct {
	Active    int
	Queued    int64
	Busy      uint64
	Evictions uint64
	Started   uint64
	Dropped   uint64
}

// Stats returns current counters.
func (s *System) Stats() Stats {
	return Stats{Active: s.actors.Size(), Queued: s.queued.Load(), Busy: s.busy.Load(),
		Evictions: s.evictions.Load(), Started: s.started.Load(), Dropped: s.dropped.Load()}
}

func (s *System) remove(a *Actor) {
	s.actors.Compute(a.id, func(old *Actor, loaded bool) (*Actor, bool) {
		if loaded && old == a {
			return nil, true
		}
		return old, !loaded
	})
}

func (s *System) doneCh(a *Actor) chan struct{} {
	ch, _ := s.done.LoadAndDelete(a)
	if ch == nil {
		ch = make(chan struct{})
	}
	return ch
}

func (s *System) evictLoop() {
	defer s.loop.Done()
	every := s.opts.IdleTTL / 4
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	if every > 30*time.Second {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastSweep, lastFreed, waveStart uint64
	var lastFree time.Time
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			// After a mass eviction nothing may allocate for a long time, so
			// no GC would run and the freed actors would stay in the heap
			// and in the process's RSS: collect and return them, every 2s
			// during a long wave of evictions and once when it ends.
			ev := s.evictions.Load()
			if ev == lastSweep { // no eviction since the last sweep: a wave ended
				if ev-waveStart >= massEviction && ev > lastFreed {
					lastFreed, lastFree = ev, time.Now()
					go debug.FreeOSMemory()
				}
				waveStart = ev
			} else if ev-lastFreed >= massEviction && time.Since(lastFree) > 2*time.Second {
				lastFreed, lastFree = ev, time.Now()
				go debug.FreeOSMemory()
			}
			lastSweep = ev
			s.sweep()
		}
	}
}

// sweep asks every actor idle for longer than the TTL to stop. A panic is
// caught here so that eviction goes on.
func (s *System) sweep() {
	defer func() {
		if v := recover(); v != nil {
			_ = s.opts.Guard.Caught("actor.evict", v)
		}
	}()
	cutoff := time.Now().Add(-s.opts.IdleTTL).UnixNano()
	s.actors.Range(func(id string, a *Actor) bool {
		if a.lastActive.Load() < cutoff && a.tasks.Load() == 0 {
			if a.send(stopMsg{onlyIfIdle: true, err: ErrStopped}, true) == nil {
				a.lastActive.Store(time.Now().UnixNano())
			}
		}
		return true
	})
}

// Close stops every actor (rejecting queued messages with ErrClosed),
// cancels running tasks and waits for them, or until ctx ends.
func (s *System) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	var waits []chan struct{}
	s.actors.Range(func(id string, a *Actor) bool {
		if ch, ok := s.done.Load(a); ok {
			waits = append(waits, ch)
		}
		_ = a.send(stopMsg{err: ErrClosed}, true)
		return true
	})
	s.cancel()
	finished := make(chan struct{})
	go func() {
		for _, ch := range waits {
			<-ch
		}
		s.tasks.Wait()
		s.loop.Wait()
		s.pool.wait()
		close(finished)
	}()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Tell delivers msg to a resident actor ignoring the mailbox capacity; it
// reports false when the actor is not resident.
func (s *System) Tell(id string, msg any) bool {
	a, ok := s.actors.Load(id)
	if !ok {
		return false
	}
	return a.Tell(msg) == nil
}

// Context is cancelled when the system closes.
func (s *System) Context() context.Context { return s.ctx }
