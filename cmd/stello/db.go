package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	neturl "net/url"
	"path/filepath"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/embedpg"
)

// dbFlags locate the database.
type dbFlags struct {
	url         string
	dataDir     string
	maxConns    int
	stmtTimeout time.Duration
}

func (d *dbFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.url, "database-url", "", "PostgreSQL connection string (env STELLO_DATABASE_URL); empty runs an embedded PostgreSQL")
	fs.StringVar(&d.dataDir, "data-dir", "./stello-data", "data directory of the embedded PostgreSQL")
	fs.IntVar(&d.maxConns, "db-max-conns", 32, "maximum database connections")
	fs.DurationVar(&d.stmtTimeout, "db-statement-timeout", pgstore.DefaultStatementTimeout,
		"deadline of one database statement and of waiting for a pooled connection; past it the request answers 503 UNAVAILABLE (0 or less disables)")
}

// database is an open store plus whatever must be released with it.
type database struct {
	store *pgstore.Store
	pg    *embedpg.Shared // nil when external
	desc  string          // which database, for people: data dir or redacted URL
}

func (d *database) close(ctx context.Context) error {
	d.store.Close()
	if d.pg != nil {
		return d.pg.Release(ctx)
	}
	return nil
}

// open connects to --database-url, or to the embedded PostgreSQL in
// --data-dir, which every stello process given that directory shares: the
// first starts it, the last to close stops it.
func (d *dbFlags) open(ctx context.Context, log *zap.Logger) (*database, error) {
	url := d.url
	var pg *embedpg.Shared
	desc := redactURL(url)
	if url == "" {
		dir, err := filepath.Abs(d.dataDir)
		if err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		pg, err = embedpg.Acquire(ctx, embedpg.Options{DataDir: dir, Fsync: true, Logger: log})
		if err != nil {
			if errors.Is(err, embedpg.ErrNoBinaries) {
				return nil, fmt.Errorf("%w\n(or pass --database-url / STELLO_DATABASE_URL to use an existing PostgreSQL)", err)
			}
			return nil, fmt.Errorf("start embedded PostgreSQL: %w", err)
		}
		url = pg.URL()
		how := "already running"
		if pg.Started() {
			how = "started by this process"
		}
		desc = fmt.Sprintf("embedded PostgreSQL in %s (%s, port %d)", dir, how, pg.Port())
	}
	store, err := pgstore.Open(ctx, url, pgstore.PoolOptions{MaxConns: int32(d.maxConns), StatementTimeout: d.statementTimeout()})
	if err != nil {
		if pg != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = pg.Release(sctx)
		}
		return nil, err
	}
	return &database{store: store, pg: pg, desc: desc}, nil
}

// runningPort reads postmaster.pid of a live server in dir.
func runningPort(dir string) (int, bool) { return embedpg.RunningPort(dir) }

// passwordRe finds the password of a key=value connection string.
var passwordRe = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// redactURL hides the password of a connection URL or key=value string.
func redactURL(s string) string {
	if u, err := neturl.Parse(s); err == nil && u.Scheme != "" {
		if _, has := u.User.Password(); has {
			u.User = neturl.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return passwordRe.ReplaceAllString(s, "${1}xxxxx")
}

// statementTimeout converts the flag to PoolOptions.StatementTimeout, where
// zero means the default: a flag of zero or less disables the bound.
func (d *dbFlags) statementTimeout() time.Duration { return offIfZero(d.stmtTimeout) }
