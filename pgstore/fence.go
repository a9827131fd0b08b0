package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stellohq/stello/session"
)

// fenceSQL fails the transaction (SQLSTATE SLOST) unless the space's lease
// still names the node and epoch: see migrations/003_cluster.sql.
const fenceSQL = "SELECT stello_fence($1, $2, $3)"

// codeLeaseLost is the SQLSTATE stello_fence raises.
const codeLeaseLost = "SLOST"

// Every write a space's owner makes is fenced: when ctx carries a lease
// (session.WithLease), the write commits only if the lease is still the
// same, in the same transaction; otherwise it fails with
// session.ErrLeaseLost and nothing of it is stored. Writes made without a
// lease (the command line, a process running without leases) are not
// fenced.

// queueFence queues the lease check first in b when ctx carries a lease,
// and reports whether it did.
func queueFence(ctx context.Context, b *pgx.Batch, spaceID string) bool {
	l, ok := session.LeaseFrom(ctx)
	if !ok {
		return false
	}
	b.Queue(fenceSQL, spaceID, l.NodeID, l.Epoch)
	return true
}

// fenceTx checks ctx's lease first in a transaction.
func fenceTx(ctx context.Context, tx pgx.Tx, spaceID string) error {
	l, ok := session.LeaseFrom(ctx)
	if !ok {
		return nil
	}
	_, err := tx.Exec(ctx, fenceSQL, spaceID, l.NodeID, l.Epoch)
	return err
}

// spaceTx runs fn in a transaction fenced by ctx's lease on spaceID.
func (s *Store) spaceTx(ctx context.Context, spaceID string, fn func(tx pgx.Tx) error) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if err := fenceTx(ctx, tx, spaceID); err != nil {
			return err
		}
		return fn(tx)
	})
}

// sendSpace sends the statements queue adds as one batch (one round trip,
// one implicit transaction) behind the check of ctx's lease on spaceID;
// read reads their results in order, after the check's.
func (s *Store) sendSpace(ctx context.Context, spaceID string, queue func(b *pgx.Batch), read func(br pgx.BatchResults) error) error {
	b := &pgx.Batch{}
	fenced := queueFence(ctx, b, spaceID)
	queue(b)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if fenced {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	if err := read(br); err != nil {
		return err
	}
	return br.Close()
}

// execSpace runs one write statement of spaceID, fenced by ctx's lease:
// the check and the statement go in one batch (sendSpace).
func (s *Store) execSpace(ctx context.Context, spaceID, sql string, args ...any) (tag pgconn.CommandTag, err error) {
	if _, ok := session.LeaseFrom(ctx); !ok {
		return s.pool.Exec(ctx, sql, args...)
	}
	err = s.sendSpace(ctx, spaceID, func(b *pgx.Batch) { b.Queue(sql, args...) }, func(br pgx.BatchResults) error {
		tag, err = br.Exec()
		return err
	})
	return tag, err
}

// queryRowSpace runs one write statement returning a row, fenced like
// execSpace, and scans the row with scan.
func (s *Store) queryRowSpace(ctx context.Context, spaceID string, scan func(pgx.Row) error, sql string, args ...any) error {
	if _, ok := session.LeaseFrom(ctx); !ok {
		return scan(s.pool.QueryRow(ctx, sql, args...))
	}
	return s.sendSpace(ctx, spaceID, func(b *pgx.Batch) { b.Queue(sql, args...) }, func(br pgx.BatchResults) error {
		return scan(br.QueryRow())
	})
}
