package pgstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/session"
)

const spaceCols = `id::text, user_id::text, label, system_prompt, consolidate_prompt, integrate_prompt, config, created_at, updated_at`

func scanSpace(r pgx.Row) (session.Space, error) {
	var sp session.Space
	var cfg []byte
	err := r.Scan(&sp.ID, &sp.UserID, &sp.Label, &sp.SystemPrompt, &sp.ConsolidatePrompt, &sp.IntegratePrompt, &cfg, &sp.CreatedAt, &sp.UpdatedAt)
	sp.Config = json.RawMessage(cfg)
	sp.CreatedAt = sp.CreatedAt.UTC()
	sp.UpdatedAt = sp.UpdatedAt.UTC()
	return sp, err
}

// CreateSpace creates a space and its root session in one transaction. The
// root session takes the space's label and system prompt.
func (s *Store) CreateSpace(ctx context.Context, userID string, in session.SpaceInput) (session.Space, session.State, error) {
	t := now()
	cfg := in.Config
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	}
	sp := session.Space{ID: uuid.NewString(), UserID: userID, Label: in.Label, SystemPrompt: in.SystemPrompt,
		ConsolidatePrompt: in.ConsolidatePrompt, IntegratePrompt: in.IntegratePrompt, Config: cfg, CreatedAt: t, UpdatedAt: t}
	root := session.State{
		Meta: session.Meta{ID: uuid.NewString(), SpaceID: sp.ID, Label: in.Label, Role: session.RoleMain,
			Status: session.StatusActive, CreatedAt: t, UpdatedAt: t, LastActiveAt: t},
		Data: session.Data{SystemPrompt: in.SystemPrompt},
	}
	// Written with the creates that arrive meanwhile: see groupQueue.
	if err := s.creates.do(ctx, &spaceCreate{sp: sp, root: root}, s.writeCreates); err != nil {
		return session.Space{}, session.State{}, wrap(ctx, "create space", err)
	}
	return sp, root, nil
}

// ListSpaces lists a user's spaces, oldest first.
func (s *Store) ListSpaces(ctx context.Context, userID string) ([]session.Space, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+spaceCols+" FROM spaces WHERE user_id = $1 ORDER BY created_at, id", userID)
	if err != nil {
		return nil, wrap(ctx, "list spaces", err)
	}
	sps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (session.Space, error) { return scanSpace(r) })
	return sps, wrap(ctx, "list spaces", err)
}

// LoadSpace reads a space and its whole session tree with every session's
// data slots. It fails with session.ErrNotFound when the space does not exist.
func (s *Store) LoadSpace(ctx context.Context, spaceID string) (session.Space, []session.State, error) {
	// Both queries in one round trip.
	b := &pgx.Batch{}
	b.Queue("SELECT "+spaceCols+" FROM spaces WHERE id = $1", spaceID)
	b.Queue(`SELECT `+sessionCols+`, d.system_prompt, d.memory, d.insight, d.consolidate_prompt, d.integrate_prompt, d.memory_version
		FROM sessions s JOIN session_data d ON d.session_id = s.id AND d.space_id = s.space_id
		WHERE s.space_id = $1 ORDER BY s.depth, s.idx, s.created_at`, spaceID)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	sp, err := scanSpace(br.QueryRow())
	if err != nil {
		return session.Space{}, nil, wrap(ctx, "load space", err)
	}
	rows, err := br.Query()
	if err != nil {
		return session.Space{}, nil, wrap(ctx, "load sessions", err)
	}
	sessions, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (session.State, error) {
		var st session.State
		m := &st.Meta
		d := &st.Data
		err := r.Scan(&m.ID, &m.SpaceID, &m.ParentID, &m.SourceSessionID, &m.Label, &m.Role, &m.Status, &m.Scope,
			&m.Depth, &m.Index, &m.TurnCount, &m.CreatedAt, &m.UpdatedAt, &m.LastActiveAt,
			&d.SystemPrompt, &d.Memory, &d.Insight, &d.ConsolidatePrompt, &d.IntegratePrompt, &d.MemoryVersion)
		m.CreatedAt, m.UpdatedAt, m.LastActiveAt = m.CreatedAt.UTC(), m.UpdatedAt.UTC(), m.LastActiveAt.UTC()
		return st, err
	})
	if err != nil {
		return session.Space{}, nil, wrap(ctx, "load sessions", err)
	}
	if err := br.Close(); err != nil {
		return session.Space{}, nil, wrap(ctx, "load space", err)
	}
	return sp, sessions, nil
}

// UpdateSpace applies a patch. A new system prompt is also written to the
// root session, in the same transaction.
func (s *Store) UpdateSpace(ctx context.Context, spaceID string, p session.SpacePatch) (session.Space, error) {
	var sp session.Space
	err := s.sendSpace(ctx, spaceID, func(b *pgx.Batch) {
		b.Queue(`UPDATE spaces SET
		label = COALESCE($2, label),
		system_prompt = CASE WHEN $3 THEN $4 ELSE system_prompt END,
		consolidate_prompt = CASE WHEN $5 THEN $6 ELSE consolidate_prompt END,
		integrate_prompt = CASE WHEN $7 THEN $8 ELSE integrate_prompt END,
		config = COALESCE($9::jsonb, config),
		updated_at = $10
		WHERE id = $1 RETURNING `+spaceCols,
			spaceID, p.Label, p.SetSystemPrompt, p.SystemPrompt, p.SetConsolidatePrompt, p.ConsolidatePrompt,
			p.SetIntegratePrompt, p.IntegratePrompt, nullJSON(p.Config), now())
		if p.SetSystemPrompt {
			b.Queue(`UPDATE session_data d SET system_prompt = $2 FROM sessions s
			WHERE s.space_id = $1 AND s.role = 'main' AND d.session_id = s.id AND d.space_id = $1`, spaceID, p.SystemPrompt)
		}
	}, func(br pgx.BatchResults) error {
		var err error
		sp, err = scanSpace(br.QueryRow())
		return err
	})
	return sp, wrap(ctx, "update space", err)
}

func nullJSON(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

// DeleteSpace deletes a space with its sessions, records and data.
func (s *Store) DeleteSpace(ctx context.Context, spaceID string) error {
	tag, err := s.execSpace(ctx, spaceID, "DELETE FROM spaces WHERE id = $1", spaceID)
	if err != nil {
		return wrap(ctx, "delete space", err)
	}
	if tag.RowsAffected() == 0 {
		return wrap(ctx, "delete space", pgx.ErrNoRows)
	}
	return nil
}

// SetSpaceValue stores a space-level key/value.
func (s *Store) SetSpaceValue(ctx context.Context, spaceID, key string, value json.RawMessage) error {
	_, err := s.execSpace(ctx, spaceID, `INSERT INTO space_kv (space_id, key, value) VALUES ($1, $2, $3)
		ON CONFLICT (space_id, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()`, spaceID, key, string(value))
	return wrap(ctx, fmt.Sprintf("set space value %q", key), err)
}

// SpaceValue reads a space-level key/value (ErrNotFound when unset).
func (s *Store) SpaceValue(ctx context.Context, spaceID, key string) (json.RawMessage, error) {
	var b []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM space_kv WHERE space_id = $1 AND key = $2", spaceID, key).Scan(&b)
	return json.RawMessage(b), wrap(ctx, fmt.Sprintf("space value %q", key), err)
}
