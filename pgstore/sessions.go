package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// newCommits is the queue of turn commits (see groupQueue): the turns of
// every space that finish together commit together.
func newCommits() groupQueue[*turnCommit] {
	return groupQueue[*turnCommit]{maxGroup: 64, maxFlights: 4, maxWait: commitTimeout}
}

// turnCommit is one turn's commit and, once written, its results.
type turnCommit struct {
	c     session.TurnCommit
	turns int
	ids   []int64
}

// CommitTurn writes a turn's records, bumps the turn count and last-active
// time, clears the consumed insight and, with c.Log, inserts the turn's row
// in the turn log, in one transaction. It returns the new turn count and
// the ids given to the records. The turns of other sessions that commit at
// the same moment may share the transaction (see groupQueue); each turn's
// writes still commit whole or not at all.
func (s *Store) CommitTurn(ctx context.Context, c session.TurnCommit) (int, []int64, error) {
	tc := &turnCommit{c: c}
	err := s.commits.do(ctx, tc, s.writeCommits)
	if err == nil && len(tc.ids) != len(c.Records) {
		err = fmt.Errorf("wrote %d of %d records", len(tc.ids), len(c.Records))
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "turns_idempotency_idx" {
			return 0, nil, fmt.Errorf("commit turn: the idempotency key completed another turn meanwhile: %w", session.ErrConflict)
		}
		return 0, nil, wrap(ctx, "commit turn", err)
	}
	return tc.turns, tc.ids, nil
}

// errSplit makes writeGroup write a group's commits one by one.
var errSplit = errors.New("two turns of one session in one group")

// writeCommits writes the turns of group: at most four statements whatever
// their number (the leases' checks, the records, the sessions' turn counts
// with the turn log rows, the consumed insights), in one batch: one round
// trip, one implicit transaction.
//
// Arrays of ids are sent as text[] and cast to uuid[] by the statement
// (here, in writeCreates and in ReleaseSpaces): pgx encodes a uuid[]
// parameter in binary, has no binary plan for Go strings, and so first
// failed each []string, formatting the whole array into an error, before
// sending it as text. That was a twelfth of a turn's commit.
func (s *Store) writeCommits(ctx context.Context, group []*groupReq[*turnCommit]) error {
	n := len(group)
	bySession := make(map[string]*turnCommit, n)
	var fSpaces, fNodes []string
	var fEpochs []int64
	var rSpaces, rSessions, rRoles, rContents []string
	var rCalls, rCallIDs []*string
	var rAt []time.Time
	sSpaces, sSessions, sAt := make([]string, n), make([]string, n), make([]time.Time, n)
	var iSpaces, iSessions, iInsights []string
	var log turnLogColumnsOf
	for i, r := range group {
		c := r.in.c
		if _, dup := bySession[c.SessionID]; dup {
			return errSplit
		}
		bySession[c.SessionID] = r.in
		r.in.ids, r.in.turns = nil, 0
		if l, ok := session.LeaseFrom(r.ctx); ok {
			fSpaces, fNodes, fEpochs = append(fSpaces, c.SpaceID), append(fNodes, l.NodeID), append(fEpochs, l.Epoch)
		}
		for _, rec := range c.Records {
			var calls, callID *string
			if len(rec.ToolCalls) > 0 {
				b, err := json.Marshal(rec.ToolCalls)
				if err != nil {
					return fmt.Errorf("encode tool calls: %w", err)
				}
				s := string(b)
				calls = &s
			}
			if rec.ToolCallID != "" {
				id := rec.ToolCallID
				callID = &id
			}
			rSpaces, rSessions = append(rSpaces, c.SpaceID), append(rSessions, c.SessionID)
			rRoles, rContents = append(rRoles, string(rec.Role)), append(rContents, rec.Content)
			rCalls, rCallIDs, rAt = append(rCalls, calls), append(rCallIDs, callID), append(rAt, c.At)
		}
		sSpaces[i], sSessions[i], sAt[i] = c.SpaceID, c.SessionID, c.At
		if c.ConsumedInsight != nil {
			iSpaces, iSessions, iInsights = append(iSpaces, c.SpaceID), append(iSessions, c.SessionID), append(iInsights, *c.ConsumedInsight)
		}
		if c.Log != nil {
			log.add(*c.Log, c.SessionID)
		}
	}
	b := &pgx.Batch{}
	if len(fSpaces) > 0 {
		b.Queue(`SELECT stello_fence(t.space, t.node, t.epoch) FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::bigint[]) AS t(space, node, epoch)`,
			fSpaces, fNodes, fEpochs)
	}
	// Records get their ids in the order of the input (ORDER BY t.n).
	b.Queue(`INSERT INTO records (space_id, session_id, role, content, tool_calls, tool_call_id, created_at)
		SELECT t.space, t.sess, t.role, t.content, t.calls, t.call_id, t.at
		FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::timestamptz[])
			WITH ORDINALITY AS t(space, sess, role, content, calls, call_id, at, n)
		ORDER BY t.n RETURNING session_id::text, id`, rSpaces, rSessions, rRoles, rContents, rCalls, rCallIDs, rAt)
	// The session rows stay locked until the commit: a delete of a session
	// waits for it, then deletes its records and turn log rows too.
	const update = `UPDATE sessions s SET turn_count = s.turn_count + 1, last_active_at = t.at, updated_at = t.at
		FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::timestamptz[]) AS t(space, sess, at)
		WHERE s.space_id = t.space AND s.id = t.sess
		RETURNING s.space_id, s.id, s.turn_count`
	if len(log.ids) == 0 {
		b.Queue(`WITH s AS (`+update+`) SELECT s.id::text, s.turn_count FROM s`, sSpaces, sSessions, sAt)
	} else {
		// The turns' rows are inserted from the session rows the same
		// statement updates: no row without its session, and no foreign key
		// check. A turn id is new: a conflict on it fails the commit.
		b.Queue(`WITH s AS (`+update+`),
		logged AS (INSERT INTO turns (id, space_id, session_id, state, input, idempotency_key, final_content,
			tool_round_count, tool_calls_executed, raw_response, error_code, error_message, created_at, finished_at)
		SELECT l.id, s.space_id, s.id, l.state, l.input, l.key, l.final, l.rounds, l.calls, l.raw, l.code, l.message, l.created, l.finished
		FROM unnest($4::text[]::uuid[], $5::text[]::uuid[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::int[],
				$12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[])
			AS l(id, sess, state, input, key, final, rounds, calls, raw, code, message, created, finished)
		JOIN s ON s.id = l.sess)
		SELECT s.id::text, s.turn_count FROM s`, append([]any{sSpaces, sSessions, sAt}, log.args()...)...)
	}
	if len(iSessions) > 0 {
		b.Queue(`UPDATE session_data d SET insight = NULL
		FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[]) AS t(space, sess, insight)
		WHERE d.space_id = t.space AND d.session_id = t.sess AND d.insight = t.insight`, iSpaces, iSessions, iInsights)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	// The implicit transaction commits on the server at the end of the
	// batch, whatever happens to the client: once the batch is sent, nothing
	// may cut it short, or a turn that committed would be reported as failed
	// (and "nothing persisted"). It is still bounded, so a dead connection
	// cannot hold the turns. The statement timeout's client-side deadline
	// must not cut it either (the server side still applies: a statement it
	// cancels aborts the whole batch, so the answer matches the database).
	sctx, cancel := context.WithTimeout(withoutStatementTimeout(ctx), commitTimeout)
	defer cancel()
	br := conn.SendBatch(sctx, b)
	defer br.Close()
	if len(fSpaces) > 0 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	var sess string
	var id, turns int64
	if _, err := pgx.ForEachRow(rows, []any{&sess, &id}, func() error {
		if tc := bySession[sess]; tc != nil {
			tc.ids = append(tc.ids, id)
		}
		return nil
	}); err != nil {
		return err
	}
	rows, err = br.Query()
	if err != nil {
		return err
	}
	if _, err := pgx.ForEachRow(rows, []any{&sess, &turns}, func() error {
		if tc := bySession[sess]; tc != nil {
			tc.turns = int(turns)
		}
		return nil
	}); err != nil {
		return err
	}
	if len(iSessions) > 0 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	for _, r := range group {
		// Ids in the order of the turn's records (identity order).
		slices.Sort(r.in.ids)
		if r.in.turns == 0 {
			return fmt.Errorf("session %s: %w", r.in.c.SessionID, pgx.ErrNoRows)
		}
	}
	return br.Close()
}
