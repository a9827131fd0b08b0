package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

// database is an open store plus whatever must be stopped with it.
type database struct {
	store *pgstore.Store
	pg    *embedpg.Instance // nil when external or borrowed
}

func (d *database) close(ctx context.Context) error {
	d.store.Close()
	if d.pg != nil {
		return d.pg.Stop(ctx)
	}
	return nil
}

// open connects to --database-url, or to the embedded PostgreSQL in
// --data-dir: an instance another stello process already runs there is
// reused, otherwise one is started (and stopped by close).
func (d *dbFlags) open(ctx context.Context, log *zap.Logger) (*database, error) {
	url := d.url
	var inst *embedpg.Instance
	if url == "" {
		dir, err := filepath.Abs(d.dataDir)
		if err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		if port, ok := runningPort(dir); ok {
			url = fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", embedpg.Superuser, port, embedpg.DefaultDatabase)
			log.Info("using the embedded PostgreSQL already running", zap.String("dataDir", dir), zap.Int("port", port))
		} else {
			log.Info("starting embedded PostgreSQL", zap.String("dataDir", dir))
			inst, err = embedpg.Start(ctx, embedpg.Options{DataDir: dir, Fsync: true, Logger: log})
			if err != nil {
				if errors.Is(err, embedpg.ErrNoBinaries) {
					return nil, fmt.Errorf("%w\n(or pass --database-url / STELLO_DATABASE_URL to use an existing PostgreSQL)", err)
				}
				return nil, fmt.Errorf("start embedded PostgreSQL: %w", err)
			}
			url = inst.URL()
		}
	}
	store, err := pgstore.Open(ctx, url, pgstore.PoolOptions{MaxConns: int32(d.maxConns), StatementTimeout: d.statementTimeout()})
	if err != nil {
		if inst != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = inst.Stop(sctx)
		}
		return nil, err
	}
	return &database{store: store, pg: inst}, nil
}

// runningPort reads postmaster.pid of a live server in dir.
func runningPort(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	pid, err1 := strconv.Atoi(strings.TrimSpace(lines[0]))
	port, err2 := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err1 != nil || err2 != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return 0, false
	}
	return port, true
}

// statementTimeout converts the flag to PoolOptions.StatementTimeout, where
// zero means the default: a flag of zero or less disables the bound.
func (d *dbFlags) statementTimeout() time.Duration {
	if d.stmtTimeout <= 0 {
		return -1
	}
	return d.stmtTimeout
}
