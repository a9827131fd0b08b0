package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/session"
)

// newCreates is the queue of space creations (see groupQueue). A group is
// three statements whatever its size.
func newCreates() groupQueue[*spaceCreate] {
	return groupQueue[*spaceCreate]{maxGroup: 128, maxFlights: 4, maxWait: 2 * DefaultStatementTimeout}
}

// spaceCreate is a space and its root session to insert.
type spaceCreate struct {
	sp   session.Space
	root session.State
}

// writeCreates inserts the spaces of group, their root sessions and their
// data slots: three statements in one batch, one implicit transaction. The
// root session's row is written from the root as CreateSpace built it, as
// queueSession writes a fork's (a root has no parent, source or scope).
func (s *Store) writeCreates(ctx context.Context, group []*groupReq[*spaceCreate]) error {
	n := len(group)
	ids, users, labels := make([]string, n), make([]string, n), make([]string, n)
	prompts, cons, integ := make([]*string, n), make([]*string, n), make([]*string, n)
	configs, at, upd := make([]string, n), make([]time.Time, n), make([]time.Time, n)
	var roots sessionColumns
	for i, r := range group {
		sp := r.in.sp
		ids[i], users[i], labels[i] = sp.ID, sp.UserID, sp.Label
		prompts[i], cons[i], integ[i] = sp.SystemPrompt, sp.ConsolidatePrompt, sp.IntegratePrompt
		configs[i], at[i], upd[i] = string(sp.Config), sp.CreatedAt, sp.UpdatedAt
		roots.add(r.in.root)
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO spaces (id, user_id, label, system_prompt, consolidate_prompt, integrate_prompt, config, created_at, updated_at)
		SELECT * FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
			$8::timestamptz[], $9::timestamptz[])`,
		ids, users, labels, prompts, cons, integ, configs, at, upd)
	b.Queue(`INSERT INTO sessions (id, space_id, label, role, status, depth, idx, turn_count, created_at, updated_at, last_active_at)
		SELECT * FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], $8::int[],
			$9::timestamptz[], $10::timestamptz[], $11::timestamptz[])`,
		roots.ids, roots.spaces, roots.labels, roots.roles, roots.statuses, roots.depths, roots.indexes, roots.turns,
		roots.created, roots.updated, roots.active)
	b.Queue(`INSERT INTO session_data (session_id, space_id, system_prompt, memory, insight, consolidate_prompt, integrate_prompt)
		SELECT * FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])`,
		roots.ids, roots.spaces, roots.prompts, roots.memories, roots.insights, roots.cons, roots.integ)
	return s.sendBatch(ctx, b)
}

// sessionColumns holds sessions without a parent as the columns of the
// statements that insert them.
type sessionColumns struct {
	ids, spaces, labels, roles, statuses     []string
	depths, indexes, turns                   []int32
	created, updated, active                 []time.Time
	prompts, memories, insights, cons, integ []*string
}

func (c *sessionColumns) add(st session.State) {
	m, d := st.Meta, st.Data
	c.ids, c.spaces, c.labels = append(c.ids, m.ID), append(c.spaces, m.SpaceID), append(c.labels, m.Label)
	c.roles, c.statuses = append(c.roles, m.Role), append(c.statuses, m.Status)
	c.depths, c.indexes, c.turns = append(c.depths, int32(m.Depth)), append(c.indexes, int32(m.Index)), append(c.turns, int32(m.TurnCount))
	c.created, c.updated, c.active = append(c.created, m.CreatedAt), append(c.updated, m.UpdatedAt), append(c.active, m.LastActiveAt)
	c.prompts, c.memories, c.insights = append(c.prompts, d.SystemPrompt), append(c.memories, d.Memory), append(c.insights, d.Insight)
	c.cons, c.integ = append(c.cons, d.ConsolidatePrompt), append(c.integ, d.IntegratePrompt)
}
