package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Writes of one kind that arrive while another of their kind is being
// written are written together: one round trip and one transaction for
// the whole group. A commit's fixed cost (the round trip, the WAL flush,
// waking the backend) is then shared, which for a small write is most of
// what it costs the database. Each write keeps its own all-or-nothing: a
// group commits whole or not at all, and a group the database refuses is
// written again one write at a time, so that a bad write fails alone.
//
// A queue starts no goroutine. A caller that finds no group in flight
// writes its own at once, alone; callers arriving meanwhile wait, and when
// the flight ends its leader hands the lead to the oldest of them, which
// writes all that waited as the next group. Another flight starts only
// when a whole group waits: more flights make smaller groups, and each
// costs a commit.
type groupQueue[T any] struct {
	// maxGroup bounds a group's size; maxFlights the groups in flight.
	maxGroup, maxFlights int
	// maxWait bounds the wait for a flight: a write still waiting then
	// (the database is not answering the flights before it) fails with
	// ErrUnavailable and is not written.
	maxWait time.Duration

	mu      sync.Mutex
	pending []*groupReq[T]
	flights int
	groups  int // groups written, for tests
	grouped int // writes that went out in a group of more than one, for tests
}

// groupReq is one write waiting in a queue.
type groupReq[T any] struct {
	ctx  context.Context
	in   T
	err  error
	done chan struct{} // closed once err is final
	lead chan struct{} // closed when this caller is to write the next group
}

func (r *groupReq[T]) finish(err error) {
	r.err = err
	close(r.done)
}

// writeFunc writes a group in one transaction, storing each write's own
// results in its in. ctx bounds the transaction; what belongs to one write
// (its lease, see queueFence) comes from that write's own ctx.
type writeFunc[T any] func(ctx context.Context, group []*groupReq[T]) error

// do writes in, alone or in a group, and returns the write's error as the
// database or ctx gave it. A write whose ctx ends while it waits, or that
// waits longer than maxWait, is not written; once taken into a group it is
// written whatever happens to ctx (its wait is bounded by the store's
// deadlines).
func (q *groupQueue[T]) do(ctx context.Context, in T, write writeFunc[T]) error {
	r := &groupReq[T]{ctx: ctx, in: in, done: make(chan struct{}), lead: make(chan struct{})}
	q.mu.Lock()
	if q.flights == 0 || q.flights < q.maxFlights && len(q.pending) >= q.maxGroup-1 {
		q.flights++
		q.mu.Unlock()
		q.run(r, write)
		return r.err
	}
	q.pending = append(q.pending, r)
	maxWait := q.maxWait
	q.mu.Unlock()
	wait := time.NewTimer(maxWait)
	defer wait.Stop()
	var cause error
	select {
	case <-r.done:
		return r.err
	case <-r.lead:
		q.run(r, write)
		return r.err
	case <-ctx.Done():
		cause = context.Cause(ctx)
	case <-wait.C:
		cause = fmt.Errorf("%w: no write of the database's finished within %s", ErrUnavailable, maxWait)
	}
	q.mu.Lock()
	if i := slices.Index(q.pending, r); i >= 0 {
		q.pending = slices.Delete(q.pending, i, i+1)
		q.mu.Unlock()
		return cause
	}
	q.mu.Unlock()
	// Taken into a group, or handed the lead: answered either way.
	select {
	case <-r.done:
	case <-r.lead:
		q.run(r, write)
	}
	return r.err
}

// run writes own and the writes waiting with it, then passes the flight on
// to the oldest write that arrived meanwhile, or gives it back.
func (q *groupQueue[T]) run(own *groupReq[T], write writeFunc[T]) {
	q.mu.Lock()
	n := min(len(q.pending), q.maxGroup-1)
	group := make([]*groupReq[T], 0, 1+n)
	group = append(group, own)
	group = append(group, q.pending[:n]...)
	q.pending = slices.Delete(q.pending, 0, n)
	q.mu.Unlock()

	live := group[:0]
	for _, r := range group {
		if r.ctx.Err() != nil {
			r.finish(context.Cause(r.ctx))
			continue
		}
		live = append(live, r)
	}
	if len(live) > 0 {
		writeGroup(live, write)
	}

	q.mu.Lock()
	if len(live) > 0 {
		q.groups++
	}
	if len(live) > 1 {
		q.grouped += len(live)
	}
	if len(q.pending) > 0 {
		next := q.pending[0]
		q.pending = q.pending[1:]
		close(next.lead)
	} else {
		q.flights--
	}
	q.mu.Unlock()
}

// writeGroup writes the group in one transaction. If the database refuses
// it (a constraint, a value it rejects, a lost lease), nothing of it was
// stored, and each write is written again on its own. A failure to reach
// the database fails them all at once instead.
func writeGroup[T any](group []*groupReq[T], write writeFunc[T]) {
	defer func() {
		// Whatever happens, every caller gets an answer.
		if p := recover(); p != nil {
			for _, r := range group {
				select {
				case <-r.done:
				default:
					r.finish(fmt.Errorf("panic: %v", p))
				}
			}
		}
	}()
	// The group's write must not end with the caller that leads it: the
	// others wait for it too.
	ctx := context.WithoutCancel(group[0].ctx)
	err := write(ctx, group)
	var pgErr *pgconn.PgError
	refused := errors.As(err, &pgErr) && !errors.Is(wrap(ctx, "", err), ErrUnavailable)
	if len(group) > 1 && (refused || errors.Is(err, errSplit)) {
		for _, r := range group {
			r.finish(write(context.WithoutCancel(r.ctx), []*groupReq[T]{r}))
		}
		return
	}
	for _, r := range group {
		r.finish(err)
	}
}
