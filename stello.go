// Package stello runs Stello inside a Go program: the whole server (REST,
// SSE and WebSocket API, space actors, memory work, metrics) over a
// PostgreSQL database, with a per-space build hook that chooses each
// space's model, extra tools and default prompts from the space's config.
//
// It is what `stello serve` itself runs:
//
//	srv, err := stello.New(ctx, stello.Config{DatabaseURL: url, Model: model})
//	if err != nil { … }
//	defer srv.Close(context.Background())
//	err = srv.ListenAndServe("127.0.0.1:8080")
//
// See docs/embedding.md for a guide.
package stello

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/stellohq/stello/cluster"
	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
	"github.com/stellohq/stello/transport"
)

// SpaceSetup is what BuildSpace chooses for one space: its model (nil: the
// server's), extra tools the model may call there, and default system,
// consolidate and integrate prompts used when neither the session nor the
// space has its own.
type SpaceSetup = session.SpaceSetup

// BuildFunc is the type of Config.BuildSpace.
type BuildFunc = space.BuildFunc

// Config configures a Server. Zero values mean the defaults of the same
// flags of `stello serve`; where that flag's zero disables something, a
// negative value does it here.
type Config struct {
	// Pool is an open database pool to use; the server never closes it.
	// Set Pool or DatabaseURL, not both.
	Pool *pgxpool.Pool
	// DatabaseURL is a PostgreSQL connection string; the server opens a
	// pool of its own and closes it in Close.
	DatabaseURL string
	// MaxConns bounds the pool opened for DatabaseURL (default 32).
	MaxConns int32
	// StatementTimeout bounds every statement and connection wait of the
	// pool opened for DatabaseURL; past it a request answers 503
	// UNAVAILABLE (default 5s; negative disables). A Pool keeps its own
	// settings.
	StatementTimeout time.Duration
	// SkipMigrate leaves the database schema alone; by default New applies
	// the missing migrations.
	SkipMigrate bool

	// Model answers every space whose BuildSpace chose no model of its
	// own (default: the offline fake model).
	Model llm.Client
	// MaxTokens bounds the output tokens of one model call (0: the
	// provider's default).
	MaxTokens int
	// Tools are offered to the model in every space, beside the built-in
	// stello_create_session.
	Tools []session.Tool
	// BuildSpace, when set, is called when a space's actor loads (on its
	// first request, and again after the actor was evicted) with the space
	// as stored, Config included. What it returns applies to that space
	// until its actor stops. An error fails the load: the request answers
	// 503 UNAVAILABLE, the error is logged, and the next request tries
	// again. It runs within the load's deadline (15s).
	BuildSpace BuildFunc

	// IdleTTL stops a space actor idle this long (default 5m; negative:
	// never).
	IdleTTL time.Duration
	// MailboxSize is the capacity of each space actor's mailbox; when
	// full, requests get 429 BUSY (default 256).
	MailboxSize int
	// SessionQueue is how many turns may wait behind a running turn on one
	// session before 429 BUSY (default 8).
	SessionQueue int
	// ConsolidateEvery consolidates a session after every N turns
	// (default 6; negative disables).
	ConsolidateEvery int
	// MaxContextTokens is the context budget of one model call, before
	// older history is summarised (default 32000).
	MaxContextTokens int
	// MaxToolRounds is the tool-loop limit of one turn (default 5).
	MaxToolRounds int
	// TurnTimeout is the deadline of a whole turn (default 2m).
	TurnTimeout time.Duration
	// NoTurnLog keeps finished turns out of the turn log (only to measure
	// its cost: idempotency keys then hold only while a turn runs).
	NoTurnLog bool
	// MaxBodyBytes is the request body limit (default 1 MiB).
	MaxBodyBytes int64
	// WSMaxMessageBytes is the WebSocket frame limit (default 1 MiB).
	WSMaxMessageBytes int64
	// KeyCacheTTL is how long an API key lookup is cached (default 30s;
	// negative disables the cache).
	KeyCacheTTL time.Duration
	// KeyCacheSize is how many known keys the cache keeps (default
	// 100,000).
	KeyCacheSize int
	// KeyLookupRate bounds database lookups per second of keys not in the
	// cache (default 200).
	KeyLookupRate float64
	// Pprof serves /debug/pprof/ on Handler (unless SeparateAdmin).
	Pprof bool
	// SeparateAdmin leaves /metrics and /debug/pprof/ off Handler: they
	// are served by AdminHandler only.
	SeparateAdmin bool

	// AdvertiseURL is how the other processes sharing the database reach
	// this one to forward requests for the spaces it owns (default:
	// "http://" and the address of the first listener given to Serve).
	AdvertiseURL string
	// LeaseTTL is how long this process's heartbeat vouches for the
	// spaces it owns: after it dies, they move to other processes within
	// this time (default 10s).
	LeaseTTL time.Duration
	// NodeID names this process among those sharing the database
	// (default: a new UUIDv7 per start).
	NodeID string

	// Logger receives the server's logs (default: none).
	Logger *zap.Logger
	// Registry receives the server's metrics, served on /metrics. Default:
	// a new registry that also holds the Go runtime and process
	// collectors.
	Registry *prometheus.Registry
}

// Server is a running Stello: its space actors are started, its HTTP
// handler is ready to serve. Close stops it.
type Server struct {
	log    *zap.Logger
	store  *pgstore.Store
	ownsDB bool
	model  llm.Client
	engine *session.Engine
	spaces *space.Manager
	front  *transport.Server
	reg    *prometheus.Registry
	pool   *Pool
	member *cluster.Membership
	nodeID string
	ttl    time.Duration

	mu      sync.Mutex
	closed  bool
	servers []*listened
	admins  []*listened

	closeOnce sync.Once
	closeErr  error
}

// New opens (or adopts) the database, migrates it unless told not to,
// and starts the space actors. The caller must Close the server.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if (cfg.Pool == nil) == (cfg.DatabaseURL == "") {
		return nil, errors.New("set exactly one of Config.Pool and Config.DatabaseURL")
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{log: log, model: cfg.Model}
	if s.model == nil {
		s.model = fake.New(fake.Config{})
	}
	if cfg.Pool != nil {
		s.store = pgstore.New(cfg.Pool)
	} else {
		maxConns := cfg.MaxConns
		if maxConns <= 0 {
			maxConns = 32
		}
		st, err := pgstore.Open(ctx, cfg.DatabaseURL, pgstore.PoolOptions{MaxConns: maxConns, StatementTimeout: cfg.StatementTimeout})
		if err != nil {
			return nil, err // "connect to database: …"
		}
		s.store, s.ownsDB = st, true
	}
	if !cfg.SkipMigrate {
		applied, err := s.store.Migrate(ctx)
		if err != nil {
			s.closeDB()
			return nil, err // "migrate: …"
		}
		log.Info("database migrated", zap.Ints("applied", applied))
	}

	tools := session.DefaultRegistry()
	for _, t := range cfg.Tools {
		tools.Register(t)
	}
	s.engine = session.NewEngine(s.store, s.model, tools, session.Options{
		MaxContextTokens: cfg.MaxContextTokens, MaxToolRounds: cfg.MaxToolRounds, MaxTokens: cfg.MaxTokens})
	panics := guard.New(log)
	s.nodeID = cfg.NodeID
	if s.nodeID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			s.closeDB()
			return nil, fmt.Errorf("node id: %w", err)
		}
		s.nodeID = id.String()
	}
	s.ttl = orDefault(cfg.LeaseTTL, cluster.DefaultLeaseTTL)
	s.spaces = space.NewManager(space.Options{
		IdleTTL:          orDefault(cfg.IdleTTL, 5*time.Minute),
		MailboxSize:      cfg.MailboxSize,
		SessionQueue:     cfg.SessionQueue,
		TurnTimeout:      cfg.TurnTimeout,
		ConsolidateEvery: orDefault(cfg.ConsolidateEvery, 6),
		Guard:            panics,
		Build:            cfg.BuildSpace,
		NoTurnLog:        cfg.NoTurnLog,
		Cluster: &space.Cluster{NodeID: s.nodeID, LeaseTTL: s.ttl, Alive: func() bool {
			return s.member != nil && s.member.Alive()
		}},
	}, s.store, s.engine, log)
	member, err := cluster.Join(ctx, s.store, cluster.Options{NodeID: s.nodeID, AdvertiseURL: cfg.AdvertiseURL,
		LeaseTTL: s.ttl, Log: log, Guard: panics,
		OnLost:     s.spaces.LoseLeases,
		OnReleased: s.spaces.ForgetOwner,
	})
	if err != nil {
		s.closeParts(ctx)
		return nil, err // "join the cluster: …"
	}
	s.member = member
	s.pool = &Pool{m: s.spaces}

	s.reg = cfg.Registry
	var cs []prometheus.Collector
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stello_goroutines", Help: "runtime.NumGoroutine()."},
				func() float64 { return float64(runtime.NumGoroutine()) }))
	}
	cs = append(cs, panics.Collector())
	cs = append(cs, s.spaces.Collectors()...)
	cs = append(cs, s.engine.Collectors()...)
	for _, c := range cs {
		if err := s.reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				s.closeParts(ctx)
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	s.front = transport.New(transport.Options{
		MaxBodyBytes:      cfg.MaxBodyBytes,
		WSMaxMessageBytes: cfg.WSMaxMessageBytes,
		KeyCacheTTL:       orDefault(cfg.KeyCacheTTL, 30*time.Second),
		KeyCacheSize:      cfg.KeyCacheSize,
		KeyLookupRate:     cfg.KeyLookupRate,
		Pprof:             cfg.Pprof,
		SeparateAdmin:     cfg.SeparateAdmin,
		Guard:             panics,
		Forward:           &transport.ForwardOptions{NodeID: s.nodeID},
	}, s.spaces, s.store, s.store, log, s.reg)
	return s, nil
}

// orDefault maps zero to def and a negative value to zero (off).
func orDefault[T int | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// Handler serves the API: /spaces…, /healthz, /readyz, and /metrics and
// /debug/pprof/ unless Config.SeparateAdmin.
func (s *Server) Handler() http.Handler { return s.front.Handler() }

// AdminHandler serves /metrics and /debug/pprof/, for a listener of its
// own (see Config.SeparateAdmin and ServeAdmin).
func (s *Server) AdminHandler() http.Handler { return s.front.AdminHandler() }

// Spaces is the space manager: create, list, read, update and delete
// spaces, run turns, fork, archive, consolidate, integrate, as the API
// does. Methods taking a userID check that the user owns the space.
func (s *Server) Spaces() *space.Manager { return s.spaces }

// Pool is the pool of space actors.
func (s *Server) Pool() *Pool { return s.pool }

// Store is the database storage, e.g. to create users and API keys
// (Store().CreateUser).
func (s *Server) Store() *pgstore.Store { return s.store }

// NodeID is this process's id among those sharing the database.
func (s *Server) NodeID() string { return s.nodeID }

// Model is the server's default model.
func (s *Server) Model() llm.Client { return s.model }

// Tools is the tool registry offered in every space; tools may be added
// while the server runs.
func (s *Server) Tools() *session.Registry { return s.engine.Tools() }

// Registry holds the server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// ListenAndServe listens on the TCP address addr and serves Handler on it
// until Close; it then returns http.ErrServerClosed.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return s.Serve(ln)
}

// Serve serves Handler on ln until Close, which drains it; it then returns
// http.ErrServerClosed. It may be called for several listeners.
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(ln, s.Handler(), "http", &s.servers)
}

// ServeAdmin serves AdminHandler on ln until Close; it then returns
// http.ErrServerClosed.
func (s *Server) ServeAdmin(ln net.Listener) error {
	return s.serve(ln, s.AdminHandler(), "admin", &s.admins)
}

// listened is one listener served by an http.Server, with the connections
// it accepted whose first request has not been read yet.
type listened struct {
	srv      *http.Server
	ln       net.Listener
	mu       sync.Mutex
	fresh    map[net.Conn]struct{}
	stopping atomic.Bool
}

func (l *listened) connState(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st == http.StateNew {
		l.fresh[c] = struct{}{}
	} else {
		delete(l.fresh, c)
	}
}

func (l *listened) freshConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.fresh)
}

// onceCloseListener closes its listener once: stopAccepting closes it
// before http.Server.Shutdown does again.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// freshWait bounds how long a shutdown waits for connections accepted
// just before it to send their first request.
const freshWait = 2 * time.Second

// stopAccepting closes the listener (new connections are refused, which a
// client or load balancer may retry elsewhere) and waits, up to freshWait,
// until every connection accepted before has had its first request read:
// http.Server.Shutdown would drop a request read after it began, without
// an answer, leaving its client unable to tell whether it ran.
func (l *listened) stopAccepting(ctx context.Context) {
	l.stopping.Store(true)
	_ = l.ln.Close()
	deadline := time.Now().Add(freshWait)
	for l.freshConns() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *Server) serve(ln net.Listener, h http.Handler, name string, list *[]*listened) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: zap.NewStdLog(s.log.Named(name))}
	ln = &onceCloseListener{Listener: ln}
	l := &listened{srv: srv, ln: ln, fresh: map[net.Conn]struct{}{}}
	srv.ConnState = l.connState
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return http.ErrServerClosed
	}
	*list = append(*list, l)
	advertise := name == "http" && s.member.AdvertiseURL() == ""
	s.mu.Unlock()
	if advertise {
		// Other processes forward requests here from now on.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		addr := ln.Addr().String()
		err := s.member.SetAdvertiseURL(ctx, "http://"+addr)
		if ta, ok := ln.Addr().(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
			s.log.Warn("listening on every interface: other processes reach this one at the advertise URL " +
				"http://" + addr + ", which works on this machine only; set AdvertiseURL (--advertise-url) for processes on other machines")
		} else if err == nil {
			// This process holds the address now: a process registered at
			// it before (killed, then restarted here) is gone, and its
			// spaces need not wait for its heartbeat to lapse. Only a
			// speed-up: on failure they move when that heartbeat lapses.
			if e := s.member.ReplacePredecessors(ctx); e != nil {
				s.log.Warn("take over from the previous process at this address", zap.Error(e))
			}
		}
		cancel()
		if err != nil {
			_ = ln.Close()
			return err
		}
	}
	err := srv.Serve(ln)
	if l.stopping.Load() {
		return http.ErrServerClosed // Close closed the listener first
	}
	return err
}

// Close shuts the server down gracefully: WebSockets are closed with 1001
// and /readyz answers 503; the listeners of Serve stop accepting and their
// in-flight requests finish (streams still open when ctx ends get an
// UNAVAILABLE error event); the space actors stop; the database pool is
// closed if New opened it. It returns what did not finish in time. Calls
// after the first return the first one's result.
//
// A program serving Handler on an http.Server of its own should Shutdown
// that server first, then call Close.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { s.closeErr = s.close(ctx) })
	return s.closeErr
}

func (s *Server) close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	servers, admins := s.servers, s.admins
	s.mu.Unlock()

	var errs []error
	s.front.Close() // WebSockets get 1001; /readyz answers 503
	if s.member != nil {
		// Give up the address first: a replacement started on it while
		// this process drains must not take its spaces, and fence its
		// turns in flight, before Leave hands them back.
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := s.member.Vacate(vctx); err != nil {
			s.log.Warn("give up the advertise URL", zap.Error(err))
		}
		cancel()
	}
	var wg sync.WaitGroup
	var errMu sync.Mutex
	for _, l := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if v := recover(); v != nil {
					s.log.Error("shutdown panicked", zap.Any("panic", v), zap.Stack("stack"))
				}
			}()
			srv := l.srv
			l.stopAccepting(ctx)
			if err := srv.Shutdown(ctx); err != nil {
				s.log.Warn("in-flight requests did not finish in time", zap.Error(err))
				errMu.Lock()
				errs = append(errs, fmt.Errorf("drain requests: %w", err))
				errMu.Unlock()
				// Streams still open end with an UNAVAILABLE error event,
				// not a bare close; give them a moment to write it.
				s.front.Abort()
				actx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = srv.Shutdown(actx)
				cancel()
				_ = srv.Close()
			}
		}()
	}
	wg.Wait()
	if err := s.spaces.Close(ctx); err != nil {
		s.log.Warn("space actors did not stop in time", zap.Error(err))
		errs = append(errs, fmt.Errorf("stop space actors: %w", err))
	}
	// Every lease goes back at once: other processes take the spaces over
	// on their next request.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if err := s.member.Leave(lctx); err != nil {
		s.log.Warn("leave the cluster", zap.Error(err))
		errs = append(errs, err)
	}
	cancel()
	for _, l := range admins {
		if err := l.srv.Shutdown(ctx); err != nil {
			_ = l.srv.Close()
		}
	}
	s.closeDB()
	return errors.Join(errs...)
}

// closeParts stops what New started before it failed.
func (s *Server) closeParts(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = s.spaces.Close(cctx)
	if s.member != nil {
		_ = s.member.Leave(cctx)
	}
	s.closeDB()
}

func (s *Server) closeDB() {
	if s.ownsDB {
		s.store.Close()
	}
}
