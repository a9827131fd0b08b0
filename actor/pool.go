package actor

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stellohq/stello/internal/guard"
)

// workerIdle is how long a worker goroutine waits for its next function
// before it exits; at most maxIdleWorkers wait at once.
const (
	workerIdle     = 10 * time.Second
	maxIdleWorkers = 256
)

// workers runs functions on goroutines that are kept for the next one
// instead of exiting. A turn's task goes deep (the provider SDK, net/http,
// pgx): on a fresh goroutine its stack is grown and copied several times per
// turn, which a kept goroutine has already done. There is no bound: a
// function never waits for a worker, it gets a new goroutine when none is
// idle; idle workers exit after workerIdle or when ctx ends, and a worker
// finding maxIdleWorkers already idle exits at once.
type workers struct {
	ctx     context.Context
	guard   *guard.Guard // catches what f did not recover (may be nil)
	idle    chan func()  // unbuffered: a send succeeds only into an idle worker
	waiting atomic.Int32
	wg      sync.WaitGroup
}

func newWorkers(ctx context.Context, g *guard.Guard) *workers {
	return &workers{ctx: ctx, guard: g, idle: make(chan func())}
}

// run runs f on an idle worker, or on a new one. f should recover its own
// panics (to answer whoever waits on it); one that escapes is caught,
// logged and counted, and the worker goes on.
func (w *workers) run(f func()) {
	select {
	case w.idle <- f:
	default:
		w.wg.Add(1)
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	defer w.wg.Done()
	var t *time.Timer
	for {
		w.call(f)
		f = nil // nothing of the last function stays reachable while idle
		if w.waiting.Add(1) > maxIdleWorkers {
			w.waiting.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(workerIdle)
		} else {
			t.Reset(workerIdle)
		}
		select {
		case f = <-w.idle:
			w.waiting.Add(-1)
		case <-t.C:
			w.waiting.Add(-1)
			return
		case <-w.ctx.Done():
			w.waiting.Add(-1)
			t.Stop()
			return
		}
	}
}

// call runs f, catching a panic at the worker's boundary.
func (w *workers) call(f func()) {
	defer func() {
		if v := recover(); v != nil {
			_ = w.guard.Caught("actor.worker", v)
		}
	}()
	f()
}

// wait waits until every worker has exited (after ctx ended).
func (w *workers) wait() { w.wg.Wait() }
