// Package pgstore is Stello's PostgreSQL storage: every query, the
// transactions that keep a turn atomic, and the migration runner. The
// embedded PostgreSQL used by `stello serve` and by tests lives in the
// subpackages embedpg and pgtest.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"

	"github.com/stellohq/stello/session"
)

// Store is the PostgreSQL storage. It is safe for concurrent use.
type Store struct {
	pool    *pgxpool.Pool
	creates groupQueue[*spaceCreate]
	commits groupQueue[*turnCommit]
}

// DefaultStatementTimeout is PoolOptions.StatementTimeout when it is zero.
const DefaultStatementTimeout = 5 * time.Second

// PoolOptions configure the connection pool.
type PoolOptions struct {
	MaxConns int32
	// StatementTimeout bounds every statement and every wait for a pooled
	// connection (or a new one). The server cancels a statement running
	// longer (PostgreSQL statement_timeout), and the client gives up on a
	// server that does not answer at all within the same time (a paused or
	// unreachable host), closing that connection. Either way the operation
	// fails with ErrUnavailable. Zero means DefaultStatementTimeout;
	// negative disables both bounds.
	StatementTimeout time.Duration
}

// Open connects to the database at url.
func Open(ctx context.Context, url string, o PoolOptions) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	timeout := o.StatementTimeout
	if timeout == 0 {
		timeout = DefaultStatementTimeout
	}
	if timeout > 0 {
		ms := timeout.Milliseconds()
		if ms < 1 {
			ms = 1
		}
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(ms, 10)
		// A process paused in the middle of a transaction must not hold
		// its locks (a space lease's share lock, say) for longer either.
		cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(ms, 10)
		if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > timeout {
			cfg.ConnConfig.ConnectTimeout = timeout
		}
		cfg.ConnConfig.Tracer = deadlineTracer{timeout: timeout}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return New(pool), nil
}

// New wraps an existing pool. Statement deadlines are the pool's own (see
// PoolOptions.StatementTimeout for what Open sets up).
func New(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool, creates: newCreates(), commits: newCommits()}
}

// Pool returns the underlying pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// ErrUnavailable wraps failures to reach the database, including a
// statement or a connection wait that exceeded the statement timeout.
var ErrUnavailable = errors.New("database unavailable")

// wrap converts pgx errors to domain errors where one applies. ctx is the
// caller's context: a deadline that expired while it is still live is the
// store's own statement deadline, so the database is unavailable.
func wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, session.ErrNotFound)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if pgErr.Code == codeLeaseLost {
			return fmt.Errorf("%s: %w", op, session.ErrLeaseLost)
		}
		switch {
		case pgErr.Code == "57014" && strings.Contains(pgErr.Message, "statement timeout"),
			strings.HasPrefix(pgErr.Code, "57P"), // admin shutdown, crash shutdown, cannot connect now
			pgErr.Code == "53300":                // too many connections
			return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return fmt.Errorf("%s: %w: no answer within the statement timeout: %w", op, ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	if errors.As(err, &connErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, puddle.ErrClosedPool) {
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// deadlineTracer gives every statement, batch, prepare, connect and pool
// acquire its own deadline: the client-side half of the statement timeout,
// which also bounds a server that accepted the request and never answers.
// The context each Start returns carries its cancel function, which the
// matching End calls.
type deadlineTracer struct {
	timeout time.Duration
}

type cancelKey struct{}
type noDeadlineKey struct{}

// withoutStatementTimeout marks ctx so that statements run with it get no
// client-side deadline (migrations, which may legitimately run long).
func withoutStatementTimeout(ctx context.Context) context.Context {
	return context.WithValue(ctx, noDeadlineKey{}, true)
}

func (t deadlineTracer) start(ctx context.Context) context.Context {
	if ctx.Value(noDeadlineKey{}) != nil {
		// Shadow any enclosing cancel function, so End does not call it.
		return context.WithValue(ctx, cancelKey{}, context.CancelFunc(nil))
	}
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	return context.WithValue(ctx, cancelKey{}, cancel)
}

func (deadlineTracer) end(ctx context.Context) {
	if cancel, _ := ctx.Value(cancelKey{}).(context.CancelFunc); cancel != nil {
		cancel()
	}
}

// TraceQueryStart implements pgx.QueryTracer.
func (t deadlineTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return t.start(ctx)
}

// TraceQueryEnd implements pgx.QueryTracer.
func (t deadlineTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	t.end(ctx)
}

// TraceBatchStart implements pgx.BatchTracer.
func (t deadlineTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return t.start(ctx)
}

// TraceBatchQuery implements pgx.BatchTracer.
func (deadlineTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

// TraceBatchEnd implements pgx.BatchTracer.
func (t deadlineTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchEndData) {
	t.end(ctx)
}

// TracePrepareStart implements pgx.PrepareTracer.
func (t deadlineTracer) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	return t.start(ctx)
}

// TracePrepareEnd implements pgx.PrepareTracer.
func (t deadlineTracer) TracePrepareEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareEndData) {
	t.end(ctx)
}

// TraceAcquireStart implements pgxpool.AcquireTracer.
func (t deadlineTracer) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	return t.start(ctx)
}

// TraceAcquireEnd implements pgxpool.AcquireTracer.
func (t deadlineTracer) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireEndData) {
	t.end(ctx)
}

// inTx runs fn in a transaction, committing when fn succeeds.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// now is the database timestamp precision: microseconds, UTC.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
