package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/stellohq/stello"
	"github.com/stellohq/stello/llm"
)

// serveConfig is every flag of `stello serve`.
type serveConfig struct {
	addr            string
	adminAddr       string
	db              dbFlags
	skipMigrate     bool
	llm             llmFlags
	idleTTL         time.Duration
	mailboxSize     int
	sessionQueue    int
	consolidate     int
	maxContext      int
	maxToolRounds   int
	turnTimeout     time.Duration
	turnLog         bool
	maxBody         int64
	wsMaxMessage    int64
	keyCacheTTL     time.Duration
	keyCacheSize    int
	keyLookupRate   float64
	shutdownTimeout time.Duration
	pprof           bool
	logLevel        string
	logFormat       string
	advertiseURL    string
	leaseTTL        time.Duration
}

func (c *serveConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&c.adminAddr, "admin-addr", "", "when set, /metrics and /debug/pprof/ are served only on this listener (e.g. 127.0.0.1:9090), not on --addr")
	c.db.register(fs)
	fs.BoolVar(&c.skipMigrate, "skip-migrate", false, "do not migrate the database at start-up")
	c.llm.register(fs)
	fs.DurationVar(&c.idleTTL, "idle-ttl", 5*time.Minute, "stop an idle space actor (no connection, no work) after this long")
	fs.IntVar(&c.mailboxSize, "mailbox-size", 256, "capacity of each space actor's mailbox; when full, requests get 429 BUSY")
	fs.IntVar(&c.sessionQueue, "session-queue", 8, "turns that may wait behind a running turn on one session before 429 BUSY")
	fs.IntVar(&c.consolidate, "consolidate-every", 6, "consolidate a session after every N turns (0 disables)")
	fs.IntVar(&c.maxContext, "max-context-tokens", 32000, "context budget of one model call, before older history is summarised")
	fs.IntVar(&c.maxToolRounds, "max-tool-rounds", 5, "tool-loop limit per turn")
	fs.DurationVar(&c.turnTimeout, "turn-timeout", 2*time.Minute, "deadline of a whole turn")
	fs.BoolVar(&c.turnLog, "turn-log", true, "keep finished turns in the turn log (false only to measure its cost: idempotency keys then hold only while a turn runs)")
	fs.Int64Var(&c.maxBody, "max-body-bytes", 1<<20, "request body limit")
	fs.Int64Var(&c.wsMaxMessage, "ws-max-message-bytes", 1<<20, "WebSocket frame limit (larger frames close the connection with 1009)")
	fs.DurationVar(&c.keyCacheTTL, "key-cache-ttl", 30*time.Second, "how long an API key lookup is cached: revocations are announced to every server at once, this bounds a revoked key's life should an announcement be lost (0 disables the cache)")
	fs.IntVar(&c.keyCacheSize, "key-cache-size", 100_000, "known API keys kept in the cache (least recently used ones are dropped first); unknown keys have a separate cache a tenth that size")
	fs.Float64Var(&c.keyLookupRate, "key-lookup-rate", 200, "database lookups per second (bursts of twice that) for API keys not in the cache; over it such requests get 503 UNAVAILABLE")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long graceful shutdown waits for in-flight requests")
	fs.BoolVar(&c.pprof, "pprof", false, "serve runtime profiles on /debug/pprof/ of --addr (with --admin-addr they are always on the admin listener instead)")
	fs.StringVar(&c.advertiseURL, "advertise-url", "", "how the other processes sharing the database reach this one to forward requests for the spaces it owns (default: http:// + the bound --addr)")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", 10*time.Second, "how long this process's heartbeat vouches for the spaces it owns; after it dies, they move to other processes within this time")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.logFormat, "log-format", "console", "log format: json or console")
}

func newLogger(level, format string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, &usageError{fmt.Sprintf("--log-level: %v", err)}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, &usageError{fmt.Sprintf("--log-format must be json or console, not %q", format)}
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl)), nil
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stello serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c serveConfig
	c.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := newLogger(c.logLevel, c.logFormat, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	stopTracing, err := startTracing(ctx, log)
	if err != nil {
		return err
	}
	defer stopTracing()

	if c.leaseTTL <= 0 {
		return &usageError{"--lease-ttl must be positive"}
	}
	client, err := c.llm.client(log)
	if err != nil {
		return err
	}
	db, err := c.db.open(ctx, log)
	if err != nil {
		return err
	}
	log.Info("database", zap.String("database", db.desc))

	stopDB := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := db.close(sctx); err != nil {
			log.Warn("stop database", zap.Error(err))
		}
	}
	srv, err := stello.New(ctx, c.config(db, client, log))
	if err != nil {
		stopDB()
		return err
	}

	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		closeServer(srv, c.shutdownTimeout, log)
		stopDB()
		return fmt.Errorf("listen on %s: %w", c.addr, err)
	}
	if c.adminAddr != "" {
		aln, err := net.Listen("tcp", c.adminAddr)
		if err != nil {
			_ = ln.Close()
			closeServer(srv, c.shutdownTimeout, log)
			stopDB()
			return fmt.Errorf("listen on --admin-addr %s: %w", c.adminAddr, err)
		}
		go func() {
			defer func() {
				if v := recover(); v != nil {
					log.Error("admin listener panicked", zap.Any("panic", v), zap.Stack("stack"))
				}
			}()
			if err := srv.ServeAdmin(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener failed", zap.Error(err))
			}
		}()
		log.Info("admin listener: /metrics and /debug/pprof/", zap.String("addr", aln.Addr().String()))
		fmt.Fprintf(stdout, "admin listening on http://%s\n", aln.Addr())
	}
	serveErr := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				log.Error("listener panicked", zap.Any("panic", v), zap.Stack("stack"))
				serveErr <- fmt.Errorf("listener panicked: %v", v)
			}
		}()
		serveErr <- srv.Serve(ln)
	}()
	log.Info("stello listening", zap.String("addr", ln.Addr().String()), zap.String("model", client.Name()))
	fmt.Fprintf(stdout, "stello listening on http://%s\n", ln.Addr())

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		if !errors.Is(err, http.ErrServerClosed) {
			log.Error("server failed", zap.Error(err))
		}
	}
	log.Info("shutting down")
	closeServer(srv, c.shutdownTimeout, log)
	stopDB()
	log.Info("stopped")
	return nil
}

// config turns the flags into the embedding configuration: the database is
// the one cmd/stello opened (it stays in charge of it, embedded or not).
func (c *serveConfig) config(db *database, client llm.Client, log *zap.Logger) stello.Config {
	return stello.Config{
		Pool:              db.store.Pool(),
		SkipMigrate:       c.skipMigrate,
		Model:             client,
		MaxTokens:         c.llm.maxTokens,
		IdleTTL:           offIfZero(c.idleTTL),
		MailboxSize:       c.mailboxSize,
		SessionQueue:      c.sessionQueue,
		ConsolidateEvery:  offIfZero(c.consolidate),
		MaxContextTokens:  c.maxContext,
		MaxToolRounds:     c.maxToolRounds,
		TurnTimeout:       c.turnTimeout,
		NoTurnLog:         !c.turnLog,
		MaxBodyBytes:      c.maxBody,
		WSMaxMessageBytes: c.wsMaxMessage,
		KeyCacheTTL:       offIfZero(c.keyCacheTTL),
		KeyCacheSize:      c.keyCacheSize,
		KeyLookupRate:     c.keyLookupRate,
		Pprof:             c.pprof,
		SeparateAdmin:     c.adminAddr != "",
		AdvertiseURL:      c.advertiseURL,
		LeaseTTL:          c.leaseTTL,
		Logger:            log,
	}
}

// offIfZero maps a flag's "0 disables" (or any value below) to the
// Config's "negative disables".
func offIfZero[T int | time.Duration](v T) T {
	if v <= 0 {
		return -1
	}
	return v
}

// closeServer stops the server within the shutdown timeout; what did not
// finish in time is logged by Close.
func closeServer(srv *stello.Server, timeout time.Duration, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		log.Debug("shutdown incomplete", zap.Error(err))
	}
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stello migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d dbFlags
	d.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, _ := newLogger("warn", "console", stderr)
	db, err := d.open(ctx, log)
	if err != nil {
		return err
	}
	defer func() { _ = db.close(context.Background()) }()
	fmt.Fprintf(stderr, "stello: database: %s\n", db.desc)
	applied, err := db.store.Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "applied %d migration(s) %v\n", len(applied), applied)
	return nil
}
