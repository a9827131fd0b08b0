package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stellohq/stello/session"
)

// LeaseChannel is the notification channel on which lease releases are
// announced (after the release commits): "node <id>" when a process left
// and every lease it held went with it, or "spaces <node id> <space id>,…"
// when it handed back some spaces.
const LeaseChannel = "stello_leases"

// ErrNotAlive means this process's own heartbeat is not fresh: it may not
// take leases until its next heartbeat.
var ErrNotAlive = errors.New("this process's heartbeat is not fresh")

// Node is one process in the membership table.
type Node struct {
	ID           string
	AdvertiseURL string
	StartedAt    time.Time
	HeartbeatAt  time.Time
	// HeartbeatAge is how long ago the heartbeat was, by the database's
	// clock.
	HeartbeatAge time.Duration
	// LeaseTTL is the node's own lease TTL.
	LeaseTTL time.Duration
	// Alive is whether the heartbeat is younger than LeaseTTL.
	Alive bool
	// Spaces is how many space leases the node holds.
	Spaces int
}

// RegisterNode adds (or refreshes) this process in the membership table
// with a fresh heartbeat; the process counts as alive while its heartbeat
// is younger than leaseTTL.
func (s *Store) RegisterNode(ctx context.Context, id, advertiseURL string, leaseTTL time.Duration) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO nodes (id, advertise_url, lease_ttl) VALUES ($1, $2, $3::bigint * interval '1 millisecond')
		ON CONFLICT (id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url, lease_ttl = EXCLUDED.lease_ttl, heartbeat_at = now()`,
		id, advertiseURL, leaseTTL.Milliseconds())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		return fmt.Errorf("register node: the database schema is not migrated (run `stello migrate`): %w", err)
	}
	return wrap(ctx, "register node", err)
}

// ReplaceNodesAt deletes the other processes registered at advertiseURL,
// with their leases, and announces it: the caller has just bound the
// address they advertised, so they are gone (a process restarted on the
// same address takes its predecessor's spaces at once instead of waiting
// for its heartbeat to lapse). It returns how many it replaced.
func (s *Store) ReplaceNodesAt(ctx context.Context, id, advertiseURL string) (int, error) {
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `WITH gone AS (DELETE FROM nodes WHERE advertise_url = $2 AND id <> $1 RETURNING id)
			SELECT count(pg_notify($3, 'node ' || id::text))::int FROM gone`, id, advertiseURL, LeaseChannel).Scan(&n)
	})
	return n, wrap(ctx, "replace processes at "+advertiseURL, err)
}

// VacateNode clears a stopping process's advertise URL: a process started
// on the same address meanwhile (ReplaceNodesAt) then leaves it, and its
// leases, alone while it drains; its leases go when it deregisters.
func (s *Store) VacateNode(ctx context.Context, id string) error {
	_, err := s.pool.Exec(ctx, "UPDATE nodes SET advertise_url = '' WHERE id = $1", id)
	return wrap(ctx, "vacate the advertise URL", err)
}

// Heartbeat renews this process's heartbeat: one statement, however many
// spaces it owns. It reports false when the node is not registered (a
// process presumed dead for long was pruned): the caller registers again.
func (s *Store) Heartbeat(ctx context.Context, id string) (bool, error) {
	tag, err := s.pool.Exec(ctx, "UPDATE nodes SET heartbeat_at = now() WHERE id = $1", id)
	if err != nil {
		return false, wrap(ctx, "heartbeat", err)
	}
	return tag.RowsAffected() == 1, nil
}

// DeregisterNode removes this process from the membership table; every
// lease it holds goes with it (the foreign key cascades), and the release
// is announced on LeaseChannel.
func (s *Store) DeregisterNode(ctx context.Context, id string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM nodes WHERE id = $1", id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", LeaseChannel, "node "+id)
		return err
	})
	return wrap(ctx, "deregister node", err)
}

// PruneNodes deletes processes whose heartbeat is older than deadFor (and
// their leases, which are free anyway).
func (s *Store) PruneNodes(ctx context.Context, deadFor time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM nodes WHERE heartbeat_at < now() - $1::bigint * interval '1 millisecond'",
		deadFor.Milliseconds())
	if err != nil {
		return 0, wrap(ctx, "prune nodes", err)
	}
	return tag.RowsAffected(), nil
}

// AcquireSpace takes the lease of a space for node, if the space has no
// lease, its lease is node's own (a new activation: it gets a new epoch),
// or its owner is dead (its heartbeat is older than its lease TTL); node
// itself must be alive. It returns the new lease, or the current owner when another live
// process holds it. A space that does not exist is session.ErrNotFound.
// One round trip.
func (s *Store) AcquireSpace(ctx context.Context, spaceID, nodeID string) (session.Lease, *session.Owner, error) {
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO space_leases AS l (space_id, node_id, epoch)
		SELECT $1, me.id, nextval('space_lease_epoch') FROM nodes me
		WHERE me.id = $2 AND me.heartbeat_at > now() - me.lease_ttl
		ON CONFLICT (space_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = EXCLUDED.epoch, acquired_at = now()
		WHERE l.node_id = EXCLUDED.node_id OR NOT EXISTS (
			SELECT 1 FROM nodes n WHERE n.id = l.node_id AND n.heartbeat_at > now() - n.lease_ttl)
		RETURNING epoch`, spaceID, nodeID)
	b.Queue(`SELECT l.node_id::text, n.advertise_url FROM space_leases l JOIN nodes n ON n.id = l.node_id
		WHERE l.space_id = $1`, spaceID)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	var epoch int64
	err := br.QueryRow().Scan(&epoch)
	won := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23503" && strings.Contains(pgErr.ConstraintName, "space_id") {
			return session.Lease{}, nil, fmt.Errorf("space %s: %w", spaceID, session.ErrNotFound)
		}
		return session.Lease{}, nil, wrap(ctx, "acquire space lease", err)
	}
	var owner session.Owner
	err = br.QueryRow().Scan(&owner.NodeID, &owner.URL)
	if err == nil {
		err = br.Close()
	}
	switch {
	case won:
		if err != nil {
			return session.Lease{}, nil, wrap(ctx, "acquire space lease", err)
		}
		return session.Lease{NodeID: nodeID, Epoch: epoch}, nil, nil
	case errors.Is(err, pgx.ErrNoRows):
		// No lease and none taken: this process is not alive, or the
		// space does not exist (then the insert found no conflict but
		// only because it inserted nothing).
		var exists bool
		if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM spaces WHERE id = $1)", spaceID).Scan(&exists); err != nil {
			return session.Lease{}, nil, wrap(ctx, "acquire space lease", err)
		}
		if !exists {
			return session.Lease{}, nil, fmt.Errorf("space %s: %w", spaceID, session.ErrNotFound)
		}
		return session.Lease{}, nil, fmt.Errorf("acquire space lease: %w: %w", ErrUnavailable, ErrNotAlive)
	case err != nil:
		return session.Lease{}, nil, wrap(ctx, "acquire space lease", err)
	}
	if owner.NodeID == nodeID {
		// Not won, yet ours: this process is not alive.
		return session.Lease{}, nil, fmt.Errorf("acquire space lease: %w: %w", ErrUnavailable, ErrNotAlive)
	}
	return session.Lease{}, &owner, nil
}

// notifyChunk bounds the space ids of one release notification (the
// payload limit is 8000 bytes; an id takes 37).
const notifyChunk = 150

// ReleaseSpaces hands back leases this node holds (spaces[i] at
// epochs[i]; a lease taken over meanwhile is left alone) and announces
// them on LeaseChannel.
func (s *Store) ReleaseSpaces(ctx context.Context, nodeID string, spaces []string, epochs []int64) error {
	if len(spaces) != len(epochs) {
		return fmt.Errorf("release spaces: %d spaces, %d epochs", len(spaces), len(epochs))
	}
	for len(spaces) > 0 {
		n := min(len(spaces), notifyChunk)
		_, err := s.pool.Exec(ctx, `WITH gone AS (
				DELETE FROM space_leases WHERE node_id = $1
				AND (space_id, epoch) IN (SELECT * FROM unnest($2::text[]::uuid[], $3::bigint[]))
				RETURNING space_id)
			SELECT pg_notify($4, 'spaces ' || $1 || ' ' || string_agg(space_id::text, ',')) FROM gone HAVING count(*) > 0`,
			nodeID, spaces[:n], epochs[:n], LeaseChannel)
		if err != nil {
			return wrap(ctx, "release spaces", err)
		}
		spaces, epochs = spaces[n:], epochs[n:]
	}
	return nil
}

// Nodes lists the processes in the membership table, oldest first, with
// how many leases each holds.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := s.pool.Query(ctx, `SELECT n.id::text, n.advertise_url, n.started_at, n.heartbeat_at,
		EXTRACT(EPOCH FROM now() - n.heartbeat_at)::float8, EXTRACT(EPOCH FROM n.lease_ttl)::float8,
		n.heartbeat_at > now() - n.lease_ttl,
		(SELECT count(*) FROM space_leases l WHERE l.node_id = n.id)::int
		FROM nodes n ORDER BY n.started_at, n.id`)
	if err != nil {
		return nil, wrap(ctx, "list nodes", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		var age, ttl float64
		err := r.Scan(&n.ID, &n.AdvertiseURL, &n.StartedAt, &n.HeartbeatAt, &age, &ttl, &n.Alive, &n.Spaces)
		n.StartedAt, n.HeartbeatAt = n.StartedAt.UTC(), n.HeartbeatAt.UTC()
		n.HeartbeatAge = time.Duration(age * float64(time.Second))
		n.LeaseTTL = time.Duration(ttl * float64(time.Second))
		return n, err
	})
	return out, wrap(ctx, "list nodes", err)
}

// ParseLeaseNotice decodes a LeaseChannel payload: the node that released
// and the spaces (none: every lease of the node).
func ParseLeaseNotice(payload string) (nodeID string, spaces []string, ok bool) {
	kind, rest, _ := strings.Cut(payload, " ")
	switch kind {
	case "node":
		return rest, nil, rest != ""
	case "spaces":
		node, list, found := strings.Cut(rest, " ")
		if !found || node == "" || list == "" {
			return "", nil, false
		}
		return node, strings.Split(list, ","), true
	}
	return "", nil, false
}
