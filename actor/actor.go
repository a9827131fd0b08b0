// Package actor is a small actor runtime: a registry of actors keyed by id,
// each with a bounded mailbox processed one message at a time, created
// lazily, evicted after an idle TTL, and able to run slow work as tasks that
// report back by message. An actor's goroutine runs only while its mailbox
// has messages, so a resident idle actor costs a struct, not a stack.
package actor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by Send.
var (
	// ErrBusy means the mailbox is full; the caller should retry later.
	ErrBusy = errors.New("actor mailbox full")
	// ErrStopped means the actor has stopped; System.Send retries on a
	// fresh actor, so callers of System only see it during shutdown.
	ErrStopped = errors.New("actor stopped")
)

// Behavior is the state and logic of one actor. Its methods are called on
// the actor's goroutine, one at a time, so it needs no locks.
type Behavior interface {
	// Receive handles one message.
	Receive(msg any)
	// Idle reports whether the actor holds nothing that would be lost by
	// stopping it: no connection, no queued or running work.
	Idle() bool
	// Stopped is called once after the actor stopped, with the reason.
	// Messages still in the mailbox are handed to Reject; Stopped must
	// answer whatever else waits on the behavior (queued work).
	Stopped(err error)
	// Reject answers a message that will never be received because the
	// actor stopped. For a task's result it runs on the task's goroutine,
	// after the actor stopped, so it must touch only the message.
	Reject(msg any, err error)
}

// Actor is one mailbox plus its behavior.
type Actor struct {
	id  string
	sys *System

	mu      sync.Mutex
	queue   []any
	head    int
	running bool
	stopped bool
	stopErr error

	beh        Behavior
	lastActive atomic.Int64 // unix nanos of the last processed message

	ctx    context.Context // cancelled when the actor stops; made on first use
	cancel context.CancelFunc
	tasks  atomic.Int32
}

// ID returns the actor's id.
func (a *Actor) ID() string { return a.id }

// Context is cancelled when the actor stops; tasks derive from it. Call it
// only from the actor's own goroutine (Receive).
func (a *Actor) Context() context.Context {
	if a.ctx == nil {
		a.ctx, a.cancel = context.WithCancel(a.sys.ctx)
	}
	return a.ctx
}

// Send puts msg in the mailbox without blocking.
func (a *Actor) Send(msg any) error { return a.send(msg, false) }

// send enqueues; internal messages (task results) ignore the capacity so a
// finished task is never lost.
func (a *Actor) send(msg any, internal bool) error {
	a.mu.Lock()
	if a.stopped {
		err := a.stopErr
		a.mu.Unlock()
		if err == nil || errors.Is(err, ErrStopped) {
			return ErrStopped
		}
		return fmt.Errorf("%w: %w", ErrStopped, err)
	}
	if !internal && len(a.queue)-a.head >= a.sys.opts.MailboxSize {
		a.mu.Unlock()
		a.sys.busy.Add(1)
		return ErrBusy
	}
	a.queue = append(a.queue, msg)
	a.sys.queued.Add(1)
	start := !a.running
	if start {
		a.running = true
	}
	a.mu.Unlock()
	if start {
		// On a kept worker: a behavior's Receive may go deep (encoding a
		// message for a connection), which on a fresh goroutine grows and
		// copies its stack on every burst.
		a.sys.pool.run(a.run)
	}
	return nil
}

// run drains the mailbox and parks (exits) when it is empty.
func (a *Actor) run() {
	for {
		a.mu.Lock()
		if a.head == len(a.queue) || a.stopped {
			a.queue = a.queue[:0]
			a.head = 0
			if cap(a.queue) > 64 {
				a.queue = nil // let a burst's buffer go
			}
			a.running = false
			a.mu.Unlock()
			return
		}
		msg := a.queue[a.head]
		a.queue[a.head] = nil
		a.head++
		a.mu.Unlock()
		a.sys.queued.Add(-1)

		a.lastActive.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case stopMsg:
			idle := false // a behavior that panics saying is not idle
			if m.onlyIfIdle {
				a.safely(func() { idle = a.beh.Idle() })
			}
			if m.onlyIfIdle && (!idle || a.tasks.Load() > 0 || a.pending() > 0) {
				continue
			}
			if m.onlyIfIdle {
				a.sys.evictions.Add(1)
			}
			a.stop(m.err)
			return
		default:
			if err := a.receive(msg); err != nil {
				// The behavior's state may be half-updated: answer the
				// message's caller, stop, and let the next message start a
				// fresh actor that reloads from the database.
				a.safely(func() { a.beh.Reject(msg, err) })
				a.stop(err)
				return
			}
		}
	}
}

// safely runs fn, catching (logging, counting) a panic: the actor must
// finish stopping whatever its behaviour does.
func (a *Actor) safely(fn func()) {
	defer func() {
		if v := recover(); v != nil {
			_ = a.sys.opts.Guard.Caught("actor.stop", v)
		}
	}()
	fn()
}

// receive hands msg to the behavior, turning a panic into an error.
func (a *Actor) receive(msg any) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = a.sys.opts.Guard.Caught("actor", v)
		}
	}()
	a.beh.Receive(msg)
	return nil
}

func (a *Actor) pending() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.queue) - a.head
}

// stop runs on the actor goroutine: it closes the mailbox, rejects what is
// left, unregisters the actor and tells the behavior.
func (a *Actor) stop(err error) {
	a.mu.Lock()
	a.stopped = true
	a.stopErr = err
	left := append([]any(nil), a.queue[a.head:]...)
	a.queue = nil
	a.head = 0
	a.running = false
	a.mu.Unlock()
	a.sys.queued.Add(-int64(len(left)))
	a.sys.remove(a)
	if a.cancel != nil {
		a.cancel()
	}
	a.safely(func() {
		for _, m := range left {
			if _, ok := m.(stopMsg); ok {
				continue
			}
			a.beh.Reject(m, err)
		}
	})
	a.safely(func() { a.beh.Stopped(err) })
	close(a.sys.doneCh(a))
}

// StopSelf stops the actor from inside Receive: the current message is the
// last one received; anything queued after it is rejected with err.
func (a *Actor) StopSelf(err error) {
	a.stop(err)
}

type stopMsg struct {
	onlyIfIdle bool
	err        error
}

// Go runs fn as a task on a goroutine of its own (a kept worker when one
// is idle) with the actor's context; call it from Receive. The message fn
// returns (if not nil) is delivered to the actor's mailbox even when it is
// full. If fn panics, the message made by onPanic from the recovered error
// is delivered instead, so whoever waits on the task is answered. The
// actor is not idle while a task runs.
func (a *Actor) Go(fn func(ctx context.Context) any, onPanic func(err error) any) {
	a.tasks.Add(1)
	a.sys.tasks.Add(1)
	ctx := a.Context()
	a.sys.pool.run(func() {
		defer a.sys.tasks.Done()
		msg := a.runTask(ctx, fn, onPanic)
		a.tasks.Add(-1)
		if msg != nil {
			if err := a.send(msg, true); err != nil {
				// The actor stopped while the task ran: whoever waits for
				// the result still gets an answer.
				a.sys.dropped.Add(1)
				a.safely(func() { a.beh.Reject(msg, err) })
			}
		}
	})
}

func (a *Actor) runTask(ctx context.Context, fn func(ctx context.Context) any, onPanic func(err error) any) (msg any) {
	defer func() {
		if v := recover(); v != nil {
			err := a.sys.opts.Guard.Caught("task", v)
			msg = nil
			if onPanic != nil {
				msg = onPanic(err)
			}
		}
	}()
	return fn(ctx)
}

// Stopping reports whether the actor has stopped (for a behavior that
// stopped itself in the middle of Receive).
func (a *Actor) Stopping() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopped
}

// Tasks returns the number of running tasks.
func (a *Actor) Tasks() int { return int(a.tasks.Load()) }

// Tell delivers msg ignoring the mailbox capacity. It is for bookkeeping
// messages that must not be refused (a connection going away, a timer).
func (a *Actor) Tell(msg any) error { return a.send(msg, true) }
