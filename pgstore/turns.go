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

// turnLogValues is the column list of a turn's row, and its values from
// the parameters $1 (the turn id) and $4 to $14 (state to finish time); the
// space and session ids are those of the session row the insert reads
// (s.space_id, s.id), as the table has no foreign key (migration 004).
const turnLogValues = `(id, space_id, session_id, state, input, idempotency_key, final_content,
		tool_round_count, tool_calls_executed, raw_response, error_code, error_message, created_at, finished_at)
	SELECT $1, s.space_id, s.id, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14`

// turnLogArgs returns the parameters of turnLogValues; $2 and $3 are the
// space and session ids.
func turnLogArgs(l session.TurnLog) []any {
	return []any{l.ID, l.SpaceID, l.SessionID, l.State, l.Input, nullable(l.IdempotencyKey), l.FinalContent,
		l.ToolRoundCount, l.ToolCallsExecuted, l.RawResponse, nullable(l.ErrorCode), nullable(l.ErrorMessage),
		l.CreatedAt, finishedAt(l)}
}

// finishedAt is a turn's finish time, now when it has none yet.
func finishedAt(l session.TurnLog) time.Time {
	if l.FinishedAt != nil {
		return *l.FinishedAt
	}
	return time.Now().UTC()
}

// turnLogColumnsOf gathers turn log rows as the column arrays of an
// unnest (see writeCommits for their order).
type turnLogColumnsOf struct {
	ids, sessions, states, inputs, raws []string
	keys, finals, codes, messages       []*string
	rounds, calls                       []int32
	created, finished                   []time.Time
}

func (c *turnLogColumnsOf) add(l session.TurnLog, sessionID string) {
	c.ids, c.sessions = append(c.ids, l.ID), append(c.sessions, sessionID)
	c.states, c.inputs, c.keys = append(c.states, l.State), append(c.inputs, l.Input), append(c.keys, nullable(l.IdempotencyKey))
	c.finals, c.rounds, c.calls = append(c.finals, l.FinalContent), append(c.rounds, int32(l.ToolRoundCount)), append(c.calls, int32(l.ToolCallsExecuted))
	c.raws, c.codes, c.messages = append(c.raws, l.RawResponse), append(c.codes, nullable(l.ErrorCode)), append(c.messages, nullable(l.ErrorMessage))
	c.created, c.finished = append(c.created, l.CreatedAt), append(c.finished, finishedAt(l))
}

func (c *turnLogColumnsOf) args() []any {
	return []any{c.ids, c.sessions, c.states, c.inputs, c.keys, c.finals, c.rounds, c.calls,
		c.raws, c.codes, c.messages, c.created, c.finished}
}

// LogTurn writes the row of a turn that failed or was cancelled (completed
// turns are logged by CommitTurn, in the turn's own transaction). The row
// is inserted from the session's row, locked until the insert commits: a
// session deleted before gets no row (ErrNotFound), one deleted after has
// its rows deleted with it. A turn already logged keeps its row, so a
// commit that reached the database although its caller saw an error stays
// completed.
func (s *Store) LogTurn(ctx context.Context, l session.TurnLog) error {
	var n int
	err := s.queryRowSpace(ctx, l.SpaceID, func(r pgx.Row) error { return r.Scan(&n) },
		`WITH s AS (SELECT space_id, id FROM sessions WHERE space_id = $2 AND id = $3 FOR KEY SHARE),
		logged AS (INSERT INTO turns `+turnLogValues+` FROM s
			ON CONFLICT (space_id, session_id, id) DO NOTHING)
		SELECT count(*) FROM s`, turnLogArgs(l)...)
	if err == nil && n == 0 {
		err = pgx.ErrNoRows
	}
	return wrap(ctx, "log turn", err)
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
