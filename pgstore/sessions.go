package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/session"
)

const sessionCols = `s.id::text, s.space_id::text, s.parent_id::text, s.source_session_id::text, s.label, s.role, s.status, s.scope,
	s.depth, s.idx, s.turn_count, s.created_at, s.updated_at, s.last_active_at`

// queueSession queues the inserts of a session and its data slots.
func queueSession(b *pgx.Batch, st session.State) {
	m := st.Meta
	b.Queue(`INSERT INTO sessions (id, space_id, parent_id, source_session_id, label, role, status, scope, depth, idx, turn_count, created_at, updated_at, last_active_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
		m.ID, m.SpaceID, m.ParentID, m.SourceSessionID, m.Label, m.Role, m.Status, m.Scope, m.Depth, m.Index, m.TurnCount,
		m.CreatedAt, m.UpdatedAt, m.LastActiveAt)
	d := st.Data
	b.Queue(`INSERT INTO session_data (session_id, space_id, system_prompt, memory, insight, consolidate_prompt, integrate_prompt)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, m.ID, m.SpaceID, d.SystemPrompt, d.Memory, d.Insight, d.ConsolidatePrompt, d.IntegratePrompt)
}

// sendBatch sends b as one round trip; PostgreSQL runs it as one implicit
// transaction, so every statement commits or none does.
func (s *Store) sendBatch(ctx context.Context, b *pgx.Batch) error {
	return s.pool.SendBatch(ctx, b).Close()
}

// CreateSession inserts a forked session. With inherit, the parent's
// records are copied into it; a non-nil prompt becomes its first assistant
// message. All of it commits in one transaction, sent in one round trip.
func (s *Store) CreateSession(ctx context.Context, st session.State, inherit bool, prompt *string) error {
	b := &pgx.Batch{}
	queueFence(ctx, b, st.Meta.SpaceID)
	queueSession(b, st)
	if inherit && st.Meta.ParentID != nil {
		b.Queue(`INSERT INTO records (space_id, session_id, role, content, tool_calls, tool_call_id, created_at)
			SELECT space_id, $3, role, content, tool_calls, tool_call_id, created_at FROM records
			WHERE space_id = $1 AND session_id = $2 ORDER BY id`, st.Meta.SpaceID, *st.Meta.ParentID, st.Meta.ID)
	}
	if prompt != nil {
		b.Queue(`INSERT INTO records (space_id, session_id, role, content, created_at) VALUES ($1, $2, 'assistant', $3, $4)`,
			st.Meta.SpaceID, st.Meta.ID, *prompt, st.Meta.CreatedAt)
	}
	return wrap(ctx, "create session", s.sendBatch(ctx, b))
}

// ArchiveSession marks a session archived and returns its update time.
func (s *Store) ArchiveSession(ctx context.Context, spaceID, sessionID string) (time.Time, error) {
	t := now()
	tag, err := s.execSpace(ctx, spaceID, "UPDATE sessions SET status = 'archived', updated_at = $3 WHERE space_id = $1 AND id = $2", spaceID, sessionID, t)
	if err == nil && tag.RowsAffected() == 0 {
		err = pgx.ErrNoRows
	}
	return t, wrap(ctx, "archive session", err)
}

// SetSlot writes one data slot of a session.
func (s *Store) SetSlot(ctx context.Context, spaceID, sessionID string, slot session.Slot, content *string) error {
	var q string
	switch slot {
	case session.SlotSystemPrompt, session.SlotInsight, session.SlotConsolidatePrompt, session.SlotIntegratePrompt:
		q = fmt.Sprintf("UPDATE session_data SET %s = $3 WHERE space_id = $1 AND session_id = $2", slot)
	case session.SlotMemory:
		q = "UPDATE session_data SET memory = $3, memory_version = memory_version + 1 WHERE space_id = $1 AND session_id = $2"
	default:
		return fmt.Errorf("set slot: unknown slot %q", slot)
	}
	tag, err := s.execSpace(ctx, spaceID, q, spaceID, sessionID, content)
	if err == nil && tag.RowsAffected() == 0 {
		err = pgx.ErrNoRows
	}
	return wrap(ctx, "set "+string(slot), err)
}

const recordCols = "id, role, content, tool_calls, tool_call_id, created_at"

func scanRecord(r pgx.CollectableRow) (session.Record, error) {
	var rec session.Record
	var role string
	var calls []byte
	var callID *string
	if err := r.Scan(&rec.ID, &role, &rec.Content, &calls, &callID, &rec.CreatedAt); err != nil {
		return rec, err
	}
	rec.Role = llm.Role(role)
	rec.CreatedAt = rec.CreatedAt.UTC()
	if callID != nil {
		rec.ToolCallID = *callID
	}
	if len(calls) > 0 {
		if err := json.Unmarshal(calls, &rec.ToolCalls); err != nil {
			return rec, fmt.Errorf("decode tool calls of record %d: %w", rec.ID, err)
		}
	}
	return rec, nil
}

// ListRecords returns a page of a session's records, oldest first. limit <= 0
// means no limit.
func (s *Store) ListRecords(ctx context.Context, spaceID, sessionID string, limit, offset int) ([]session.Record, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	rows, err := s.pool.Query(ctx, "SELECT "+recordCols+" FROM records WHERE space_id = $1 AND session_id = $2 ORDER BY id LIMIT $3 OFFSET $4",
		spaceID, sessionID, lim, offset)
	if err != nil {
		return nil, wrap(ctx, "list records", err)
	}
	recs, err := pgx.CollectRows(rows, scanRecord)
	return recs, wrap(ctx, "list records", err)
}

// RecordsAfter returns a session's records with id > after, oldest first.
func (s *Store) RecordsAfter(ctx context.Context, spaceID, sessionID string, after int64) ([]session.Record, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+recordCols+" FROM records WHERE space_id = $1 AND session_id = $2 AND id > $3 ORDER BY id",
		spaceID, sessionID, after)
	if err != nil {
		return nil, wrap(ctx, "read records", err)
	}
	recs, err := pgx.CollectRows(rows, scanRecord)
	return recs, wrap(ctx, "read records", err)
}

// commitTimeout bounds a turn's commit once it is on the wire.
const commitTimeout = 30 * time.Second

// CommitTurn writes a turn's records, bumps the turn count and last-active
// time, clears the consumed insight and, with c.Log, inserts the turn's row
// in the turn log, in one transaction. It returns the new turn count and
// the ids given to the records.
func (s *Store) CommitTurn(ctx context.Context, c session.TurnCommit) (int, []int64, error) {
	roles := make([]string, len(c.Records))
	contents := make([]string, len(c.Records))
	calls := make([]*string, len(c.Records))
	callIDs := make([]*string, len(c.Records))
	for i, r := range c.Records {
		roles[i] = string(r.Role)
		contents[i] = r.Content
		if len(r.ToolCalls) > 0 {
			b, err := json.Marshal(r.ToolCalls)
			if err != nil {
				return 0, nil, fmt.Errorf("commit turn: encode tool calls: %w", err)
			}
			s := string(b)
			calls[i] = &s
		}
		if r.ToolCallID != "" {
			id := r.ToolCallID
			callIDs[i] = &id
		}
	}
	// One batch is one round trip and runs in one implicit transaction:
	// either every statement commits or none does.
	b := &pgx.Batch{}
	fenced := queueFence(ctx, b, c.SpaceID)
	b.Queue(`INSERT INTO records (space_id, session_id, role, content, tool_calls, tool_call_id, created_at)
		SELECT $1, $2, t.role, t.content, t.calls, t.call_id, $7
		FROM unnest($3::text[], $4::text[], $5::jsonb[], $6::text[]) WITH ORDINALITY AS t(role, content, calls, call_id, n)
		ORDER BY t.n RETURNING id`, c.SpaceID, c.SessionID, roles, contents, calls, callIDs, c.At)
	if c.Log == nil {
		b.Queue(`UPDATE sessions SET turn_count = turn_count + 1, last_active_at = $3, updated_at = $3
		WHERE space_id = $1 AND id = $2 RETURNING turn_count`, c.SpaceID, c.SessionID, c.At)
	} else {
		// The turn's row is inserted from the session row the same
		// statement updates: no row without its session, and no foreign
		// key check (the session row stays locked until the commit, so a
		// delete of the session waits for it, then deletes the row too).
		// A turn id is new: a conflict on it fails the commit.
		args := turnLogArgs(*c.Log)
		args[1], args[2] = c.SpaceID, c.SessionID
		b.Queue(`WITH s AS (
			UPDATE sessions SET turn_count = turn_count + 1, last_active_at = $15, updated_at = $15
			WHERE space_id = $2 AND id = $3 RETURNING space_id, id, turn_count)
		INSERT INTO turns `+turnLogValues+` FROM s
		RETURNING (SELECT turn_count FROM s)`, append(args, c.At)...)
	}
	if c.ConsumedInsight != nil {
		b.Queue(`UPDATE session_data SET insight = NULL WHERE space_id = $1 AND session_id = $2 AND insight = $3`,
			c.SpaceID, c.SessionID, *c.ConsumedInsight)
	}
	var turns int
	var ids []int64
	err := func() error {
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		// The implicit transaction commits on the server at the end of the
		// batch, whatever happens to the client: once the batch is sent, ctx
		// must not cut it short, or a turn that committed would be reported
		// as failed (and "nothing persisted").
		// It is still bounded, so a dead connection cannot hold the turn.
		// The statement timeout's client-side deadline must not cut it
		// either (the server side still applies: a statement it cancels
		// aborts the whole batch, so the answer matches the database).
		sctx, cancel := context.WithTimeout(withoutStatementTimeout(context.WithoutCancel(ctx)), commitTimeout)
		defer cancel()
		br := conn.SendBatch(sctx, b)
		defer br.Close()
		if fenced {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		if err := br.QueryRow().Scan(&turns); err != nil {
			return err
		}
		if c.ConsumedInsight != nil {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		return br.Close()
	}()
	if err == nil && len(ids) != len(c.Records) {
		err = fmt.Errorf("wrote %d of %d records", len(ids), len(c.Records))
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "turns_idempotency_idx" {
			return 0, nil, fmt.Errorf("commit turn: the idempotency key completed another turn meanwhile: %w", session.ErrConflict)
		}
		return 0, nil, wrap(ctx, "commit turn", err)
	}
	return turns, ids, nil
}
