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
// data slots: three statements in one batch, one implicit transaction.
func (s *Store) writeCreates(ctx context.Context, group []*groupReq[*spaceCreate]) error {
	n := len(group)
	ids, users, labels := make([]string, n), make([]string, n), make([]string, n)
	prompts, cons, integ := make([]*string, n), make([]*string, n), make([]*string, n)
	configs, rootIDs := make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	for i, r := range group {
		sp := r.in.sp
		ids[i], users[i], labels[i] = sp.ID, sp.UserID, sp.Label
		prompts[i], cons[i], integ[i] = sp.SystemPrompt, sp.ConsolidatePrompt, sp.IntegratePrompt
		configs[i], rootIDs[i], at[i] = string(sp.Config), r.in.root.Meta.ID, sp.CreatedAt
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO spaces (id, user_id, label, system_prompt, consolidate_prompt, integrate_prompt, config, created_at, updated_at)
		SELECT t.id, t.user_id, t.label, t.sp, t.cp, t.ip, t.config, t.at, t.at
		FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::timestamptz[])
			AS t(id, user_id, label, sp, cp, ip, config, at)`,
		ids, users, labels, prompts, cons, integ, configs, at)
	// The root session: role main, active, depth and index 0, no turns.
	b.Queue(`INSERT INTO sessions (id, space_id, label, role, status, depth, idx, turn_count, created_at, updated_at, last_active_at)
		SELECT t.id, t.space_id, t.label, 'main', 'active', 0, 0, 0, t.at, t.at, t.at
		FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::timestamptz[]) AS t(id, space_id, label, at)`,
		rootIDs, ids, labels, at)
	b.Queue(`INSERT INTO session_data (session_id, space_id, system_prompt)
		SELECT * FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[])`, rootIDs, ids, prompts)
	return s.sendBatch(ctx, b)
}
