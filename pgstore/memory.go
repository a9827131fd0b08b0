package pgstore

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/session"
)

// MemoryState reads what memory work needs of a session.
func (s *Store) MemoryState(ctx context.Context, spaceID, sessionID string) (session.MemoryState, error) {
	var m session.MemoryState
	err := s.pool.QueryRow(ctx, `SELECT memory, memory_version, consolidated_through, summary, summary_through
		FROM session_data WHERE space_id = $1 AND session_id = $2`, spaceID, sessionID).
		Scan(&m.Memory, &m.Version, &m.ConsolidatedThrough, &m.Summary, &m.SummaryThrough)
	return m, wrap(ctx, "read memory", err)
}

// WriteConsolidation stores a consolidated memory covering records up to
// through, only if the memory is still at version expect. It reports whether
// it wrote, and the new version.
func (s *Store) WriteConsolidation(ctx context.Context, spaceID, sessionID, memory string, expect, through int64) (int64, bool, error) {
	var v int64
	err := s.queryRowSpace(ctx, spaceID, func(r pgx.Row) error { return r.Scan(&v) },
		`UPDATE session_data SET memory = $3, memory_version = memory_version + 1,
		consolidated_through = GREATEST(consolidated_through, $5)
		WHERE space_id = $1 AND session_id = $2 AND memory_version = $4 RETURNING memory_version`,
		spaceID, sessionID, memory, expect, through)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, wrap(ctx, "write memory", err)
	}
	return v, true, nil
}

// WriteIntegration writes the synthesis into the root session's memory (only
// if it is still at version expect) and each insight into its session, in
// one transaction. Insights for sessions not in the space are ignored. It
// reports whether it wrote, the root's new memory version, and the sessions
// that received an insight.
func (s *Store) WriteIntegration(ctx context.Context, spaceID, rootID, synthesis string, expect int64, insights []session.Insight) (int64, []string, bool, error) {
	var v int64
	var written []string
	ok := true
	err := s.spaceTx(ctx, spaceID, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE session_data SET memory = $3, memory_version = memory_version + 1
			WHERE space_id = $1 AND session_id = $2 AND memory_version = $4 RETURNING memory_version`,
			spaceID, rootID, synthesis, expect).Scan(&v)
		if err == pgx.ErrNoRows {
			ok = false
			return nil
		}
		if err != nil {
			return err
		}
		for _, in := range insights {
			tag, err := tx.Exec(ctx, `UPDATE session_data SET insight = $3 WHERE space_id = $1 AND session_id = $2`,
				spaceID, in.SessionID, in.Content)
			if err != nil {
				return err
			}
			if tag.RowsAffected() > 0 {
				written = append(written, in.SessionID)
			}
		}
		return nil
	})
	if err != nil {
		return 0, nil, false, wrap(ctx, "write integration", err)
	}
	return v, written, ok, nil
}

// ChildMemories returns every active non-root session of the space with its
// label and memory, in tree order.
func (s *Store) ChildMemories(ctx context.Context, spaceID string) ([]session.ChildMemory, error) {
	rows, err := s.pool.Query(ctx, `SELECT s.id::text, s.label, d.memory FROM sessions s
		JOIN session_data d ON d.session_id = s.id AND d.space_id = s.space_id
		WHERE s.space_id = $1 AND s.role <> 'main' AND s.status = 'active'
		ORDER BY s.depth, s.idx, s.created_at`, spaceID)
	if err != nil {
		return nil, wrap(ctx, "read child memories", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (session.ChildMemory, error) {
		var c session.ChildMemory
		err := r.Scan(&c.ID, &c.Label, &c.Memory)
		return c, err
	})
	return out, wrap(ctx, "read child memories", err)
}

// SaveSummary caches the summary of a session's records up to through,
// unless a summary covering more is already stored.
func (s *Store) SaveSummary(ctx context.Context, spaceID, sessionID, summary string, through int64) error {
	_, err := s.execSpace(ctx, spaceID, `UPDATE session_data SET summary = $3, summary_through = $4
		WHERE space_id = $1 AND session_id = $2 AND summary_through < $4`, spaceID, sessionID, summary, through)
	return wrap(ctx, "save summary", err)
}
