package pgstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/session"
)

const turnLogColumns = `id::text, space_id::text, session_id::text, state, input, coalesce(idempotency_key, ''), final_content,
	tool_round_count, tool_calls_executed, raw_response, coalesce(error_code, ''), coalesce(error_message, ''),
	created_at, finished_at`

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// queueTurnLog queues the insert of a turn's row.
func queueTurnLog(b *pgx.Batch, l session.TurnLog) {
	fin := time.Now().UTC()
	if l.FinishedAt != nil {
		fin = *l.FinishedAt
	}
	b.Queue(`INSERT INTO turns (id, space_id, session_id, state, input, idempotency_key, final_content,
		tool_round_count, tool_calls_executed, raw_response, error_code, error_message, created_at, finished_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (space_id, session_id, id) DO NOTHING`,
		l.ID, l.SpaceID, l.SessionID, l.State, l.Input, nullable(l.IdempotencyKey), l.FinalContent,
		l.ToolRoundCount, l.ToolCallsExecuted, l.RawResponse, nullable(l.ErrorCode), nullable(l.ErrorMessage),
		l.CreatedAt, fin)
}

// LogTurn writes the row of a turn that failed or was cancelled (completed
// turns are logged by CommitTurn, in the turn's own transaction).
func (s *Store) LogTurn(ctx context.Context, l session.TurnLog) error {
	b := &pgx.Batch{}
	queueFence(ctx, b, l.SpaceID)
	queueTurnLog(b, l)
	return wrap(ctx, "log turn", s.pool.SendBatch(ctx, b).Close())
}

func scanTurnLog(row pgx.Row) (session.TurnLog, error) {
	var l session.TurnLog
	var fin time.Time
	err := row.Scan(&l.ID, &l.SpaceID, &l.SessionID, &l.State, &l.Input, &l.IdempotencyKey, &l.FinalContent,
		&l.ToolRoundCount, &l.ToolCallsExecuted, &l.RawResponse, &l.ErrorCode, &l.ErrorMessage, &l.CreatedAt, &fin)
	if err != nil {
		return session.TurnLog{}, err
	}
	fin = fin.UTC()
	l.CreatedAt = l.CreatedAt.UTC()
	l.FinishedAt = &fin
	return l, nil
}

// TurnLog returns a finished turn of a session; ErrNotFound when the turn
// is not logged under that space and session.
func (s *Store) TurnLog(ctx context.Context, spaceID, sessionID, turnID string) (session.TurnLog, error) {
	l, err := scanTurnLog(s.pool.QueryRow(ctx, `SELECT `+turnLogColumns+` FROM turns
		WHERE id = $1 AND space_id = $2 AND session_id = $3`, turnID, spaceID, sessionID))
	return l, wrap(ctx, "turn log", err)
}

// CompletedTurnByKey returns the completed turn of a session with the
// idempotency key, if any.
func (s *Store) CompletedTurnByKey(ctx context.Context, spaceID, sessionID, key string) (session.TurnLog, bool, error) {
	l, err := scanTurnLog(s.pool.QueryRow(ctx, `SELECT `+turnLogColumns+` FROM turns
		WHERE space_id = $1 AND session_id = $2 AND idempotency_key = $3 AND state = 'completed'
		  AND finished_at > now() - interval '24 hours'`, spaceID, sessionID, key))
	if errors.Is(err, pgx.ErrNoRows) {
		return session.TurnLog{}, false, nil
	}
	if err != nil {
		return session.TurnLog{}, false, wrap(ctx, "turn by idempotency key", err)
	}
	return l, true, nil
}

// DeleteExpiredTurnLogs deletes failed and cancelled turns that finished
// before the cutoff, and reports how many.
func (s *Store) DeleteExpiredTurnLogs(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM turns WHERE state <> 'completed' AND finished_at < $1`, before)
	if err != nil {
		return 0, wrap(ctx, "delete expired turns", err)
	}
	return tag.RowsAffected(), nil
}
