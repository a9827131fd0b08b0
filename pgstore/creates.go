package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stellohq/stello/session"
)

// Space creations that arrive while others are being written are written
// together: one round trip and one transaction for all of them, three
// statements whatever their number. A commit's cost (the round trip, the
// WAL flush, waking the backend) is then shared, which is most of what a
// create costs the database.
const (
	// maxCreateFlights is how many groups may be in flight at once. One is
	// in flight whenever creates wait; a create that finds none goes out at
	// once, alone. The next flight starts only when a whole group waits:
	// more flights make smaller groups, and each costs a commit.
	maxCreateFlights = 4
	// maxCreateGroup bounds one group's size.
	maxCreateGroup = 128
)

// createQueue groups concurrent space creations. It starts no goroutine: a
// caller that finds a free flight writes its group itself, then hands the
// lead to the oldest caller still waiting, which writes the next group.
type createQueue struct {
	mu      sync.Mutex
	pending []*createReq
	flights int
	groups  int // groups written, for tests
	grouped int // creates written in a group of more than one, for tests
}

type createReq struct {
	ctx  context.Context
	sp   session.Space
	root session.State
	err  error
	done chan struct{} // closed once err is final
	lead chan struct{} // closed when this caller is to write the next group
}

func (r *createReq) finish(err error) {
	r.err = err
	close(r.done)
}

// create writes r, alone or in a group, and returns its outcome.
func (q *createQueue) create(r *createReq, write func(context.Context, []*createReq) error) error {
	q.mu.Lock()
	if q.flights == 0 || q.flights < maxCreateFlights && len(q.pending) >= maxCreateGroup-1 {
		q.flights++
		q.mu.Unlock()
		q.run(r, write)
		return r.err
	}
	q.pending = append(q.pending, r)
	q.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-r.lead:
		q.run(r, write)
		return r.err
	case <-r.ctx.Done():
	}
	q.mu.Lock()
	if i := slices.Index(q.pending, r); i >= 0 {
		q.pending = slices.Delete(q.pending, i, i+1)
		q.mu.Unlock()
		return fmt.Errorf("create space: %w", context.Cause(r.ctx))
	}
	q.mu.Unlock()
	// Already taken into a group (its write is bounded by the statement
	// timeout), or handed the lead: either way it is answered below.
	select {
	case <-r.done:
	case <-r.lead:
		q.run(r, write)
	}
	return r.err
}

// run writes own and the callers waiting with it, then passes the flight
// on to the oldest caller that arrived meanwhile, or gives it back.
func (q *createQueue) run(own *createReq, write func(context.Context, []*createReq) error) {
	q.mu.Lock()
	group := make([]*createReq, 0, 1+len(q.pending))
	group = append(group, own)
	n := min(len(q.pending), maxCreateGroup-1)
	group = append(group, q.pending[:n]...)
	q.pending = slices.Delete(q.pending, 0, n)
	q.mu.Unlock()

	live := group[:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.finish(fmt.Errorf("create space: %w", context.Cause(r.ctx)))
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
// it (a constraint, a value it rejects), nothing of it was stored, and each
// create is written again on its own, so that one bad create fails alone.
// A failure to reach the database fails them all at once instead.
func writeGroup(group []*createReq, write func(context.Context, []*createReq) error) {
	defer func() {
		// Whatever happens, every caller gets an answer.
		if p := recover(); p != nil {
			for _, r := range group {
				if !isClosed(r.done) {
					r.finish(fmt.Errorf("create space: panic: %v", p))
				}
			}
		}
	}()
	// The group's write must not end with the caller that leads it: the
	// others wait for it. The store's statement deadline bounds it.
	ctx := context.WithoutCancel(group[0].ctx)
	err := write(ctx, group)
	var pgErr *pgconn.PgError
	if err != nil && len(group) > 1 && errors.As(err, &pgErr) && !errors.Is(wrap(ctx, "", err), ErrUnavailable) {
		for _, r := range group {
			r.finish(wrap(r.ctx, "create space", write(ctx, []*createReq{r})))
		}
		return
	}
	for _, r := range group {
		r.finish(wrap(r.ctx, "create space", err))
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeCreates inserts the spaces of group, their root sessions and their
// data slots: three statements in one batch, one implicit transaction.
func (s *Store) writeCreates(ctx context.Context, group []*createReq) error {
	n := len(group)
	ids, users, labels := make([]string, n), make([]string, n), make([]string, n)
	prompts, cons, integ := make([]*string, n), make([]*string, n), make([]*string, n)
	configs, rootIDs := make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	for i, r := range group {
		sp := r.sp
		ids[i], users[i], labels[i] = sp.ID, sp.UserID, sp.Label
		prompts[i], cons[i], integ[i] = sp.SystemPrompt, sp.ConsolidatePrompt, sp.IntegratePrompt
		configs[i], rootIDs[i], at[i] = string(sp.Config), r.root.Meta.ID, sp.CreatedAt
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO spaces (id, user_id, label, system_prompt, consolidate_prompt, integrate_prompt, config, created_at, updated_at)
		SELECT t.id, t.user_id, t.label, t.sp, t.cp, t.ip, t.config, t.at, t.at
		FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::timestamptz[])
			AS t(id, user_id, label, sp, cp, ip, config, at)`,
		ids, users, labels, prompts, cons, integ, configs, at)
	// The root session: role main, active, depth and index 0, no turns.
	b.Queue(`INSERT INTO sessions (id, space_id, label, role, status, depth, idx, turn_count, created_at, updated_at, last_active_at)
		SELECT t.id, t.space_id, t.label, 'main', 'active', 0, 0, 0, t.at, t.at, t.at
		FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) AS t(id, space_id, label, at)`,
		rootIDs, ids, labels, at)
	b.Queue(`INSERT INTO session_data (session_id, space_id, system_prompt)
		SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])`, rootIDs, ids, prompts)
	return s.sendBatch(ctx, b)
}
