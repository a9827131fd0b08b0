package transport

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/puzpuzpuz/xsync/v3"
	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/space"
)

// Options configure the wire.
type Options struct {
	// MaxBodyBytes bounds request bodies (default 1 MiB).
	MaxBodyBytes int64
	// WSMaxMessageBytes bounds incoming WebSocket frames (default 1 MiB).
	WSMaxMessageBytes int64
	// KeyCacheTTL is how long a key lookup is remembered, so the longest a
	// revoked key keeps working (default 30s; 0 disables the cache).
	KeyCacheTTL time.Duration
	// KeyCacheSize bounds the cached known keys (default 100,000; unknown
	// keys have a cache of a tenth of that of their own).
	KeyCacheSize int
	// KeyLookupRate bounds database lookups of keys not in the cache, per
	// second (default 200, bursts of twice that); over it such requests
	// get 503 UNAVAILABLE.
	KeyLookupRate float64
	// WSPingInterval is how often idle connections are pinged (default 30s);
	// a peer that does not answer within two intervals is dropped.
	WSPingInterval time.Duration
	// WSWriteTimeout bounds one write to a peer (default 10s).
	WSWriteTimeout time.Duration
	// WSSendQueue bounds messages queued for one peer (default 256) and
	// WSSendQueueBytes their size (default 4 MiB); a peer that falls further
	// behind is disconnected. Consecutive deltas of one streamed turn are
	// merged while they wait, so a fast model does not fill the queue.
	WSSendQueue      int
	WSSendQueueBytes int
	// Pprof mounts /debug/pprof on Handler when true (and SeparateAdmin is
	// false).
	Pprof bool
	// Guard logs and counts recovered panics (default: a private one).
	Guard *guard.Guard
	// SSEQueueBytes bounds the streamed text waiting for one SSE client
	// (default 4 MiB); a client further behind is disconnected, and the
	// turn goes on.
	SSEQueueBytes int
	// SeparateAdmin leaves /metrics and /debug/pprof off Handler: they are
	// served by AdminHandler only, for a listener of their own.
	SeparateAdmin bool
	// Forward, when set, sends requests for spaces owned by another
	// process to that process (see space.Cluster).
	Forward *ForwardOptions
}

// Pinger checks that the database answers, for /readyz.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Server is the HTTP and WebSocket front of Stello.
type Server struct {
	opts     Options
	spaces   *space.Manager
	keys     *keyCache
	db       Pinger
	log      *zap.Logger
	guard    *guard.Guard
	registry *prometheus.Registry
	router   chi.Router

	conns     *xsync.MapOf[*wsConn, struct{}]
	closing   atomic.Bool
	aborting  chan struct{} // closed by Abort: streams end with an error event
	abortMu   sync.Once
	wsActive  prometheus.Gauge
	wsTotal   prometheus.Counter
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	forwarded *prometheus.CounterVec
	hub       *pingHub
	fwd       *forwarder
}

// New builds the server. registry receives Stello's metrics and is served on
// /metrics.
func New(opts Options, spaces *space.Manager, keys KeyStore, db Pinger, log *zap.Logger, registry *prometheus.Registry) *Server {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.WSMaxMessageBytes <= 0 {
		opts.WSMaxMessageBytes = 1 << 20
	}
	if opts.WSPingInterval <= 0 {
		opts.WSPingInterval = 30 * time.Second
	}
	if opts.WSWriteTimeout <= 0 {
		opts.WSWriteTimeout = 10 * time.Second
	}
	if opts.WSSendQueue <= 0 {
		opts.WSSendQueue = 256
	}
	if opts.WSSendQueueBytes <= 0 {
		opts.WSSendQueueBytes = 4 << 20
	}
	if opts.SSEQueueBytes <= 0 {
		opts.SSEQueueBytes = 4 << 20
	}
	if log == nil {
		log = zap.NewNop()
	}
	if opts.Guard == nil {
		opts.Guard = guard.New(log)
	}
	if registry == nil {
		registry = prometheus.NewRegistry()
	}
	s := &Server{opts: opts, spaces: spaces, keys: newKeyCache(keys, opts.KeyCacheTTL, opts.KeyCacheSize, opts.KeyLookupRate), db: db, log: log,
		guard: opts.Guard, registry: registry, conns: xsync.NewMapOf[*wsConn, struct{}](), aborting: make(chan struct{})}
	s.wsActive = prometheus.NewGauge(prometheus.GaugeOpts{Name: "stello_ws_connections", Help: "Open WebSocket connections."})
	s.wsTotal = prometheus.NewCounter(prometheus.CounterOpts{Name: "stello_ws_connections_total", Help: "WebSocket connections accepted."})
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stello_http_requests_total",
		Help: "HTTP requests by route, method and status."}, []string{"route", "method", "status"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "stello_http_request_duration_seconds",
		Help: "HTTP request duration by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"route"})
	_ = registry.Register(s.wsActive)
	_ = registry.Register(s.wsTotal)
	_ = registry.Register(s.requests)
	_ = registry.Register(s.latency)
	s.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stello_forwarded_requests_total",
		Help: "Requests forwarded to the process that owns their space: sent, retried (after the owner could not be reached or no longer owned the space), failed."},
		[]string{"outcome"})
	_ = registry.Register(s.forwarded)
	if opts.Forward != nil {
		s.fwd = newForwarder(s, *opts.Forward)
	}
	s.hub = newPingHub(s)
	s.router = s.routes()
	s.watchKeys(keys)
	return s
}

// Handler returns the root handler.
func (s *Server) Handler() http.Handler { return s.router }

// Close stops the ping hub and closes every WebSocket with code 1001.
func (s *Server) Close() {
	s.closing.Store(true)
	s.stopWatchingKeys()
	s.hub.stop()
	s.conns.Range(func(c *wsConn, _ struct{}) bool {
		c.CloseWith(1001, "server shutting down")
		return true
	})
	if s.fwd != nil {
		s.fwd.taps.closeAll()
	}
}

// Abort ends every open SSE stream with `event: error` (UNAVAILABLE): the
// last step of a shutdown whose grace period ran out, so that no stream
// ends with a bare close. The turns themselves are not cancelled here.
func (s *Server) Abort() {
	s.abortMu.Do(func() { close(s.aborting) })
}

// observe records the request count and latency by route pattern. Every
// label comes from a closed set, whatever the client sends: the matched
// route pattern (or "unmatched"), a known method (or "other") and a known
// status code (or its class, e.g. "4xx").
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := recording(w)
		next.ServeHTTP(sw, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		s.requests.WithLabelValues(route, methodLabel(r.Method), statusLabel(sw.status)).Inc()
		s.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// statusWriter remembers the status of a response for the middlewares
// that report it (trace, observe, recoverer).
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status = code
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// recording returns w as a *statusWriter, wrapping it only when an outer
// middleware has not already: a request is wrapped once, however many
// middlewares read its status.
func recording(w http.ResponseWriter) *statusWriter {
	if sw, ok := w.(*statusWriter); ok {
		return sw
	}
	return &statusWriter{ResponseWriter: w, status: http.StatusOK}
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack lets the WebSocket upgrader, which asserts http.Hijacker rather
// than using http.ResponseController, take over the connection.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && !w.wrote {
		w.status = http.StatusSwitchingProtocols
		w.wrote = true
	}
	return conn, rw, err
}

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.trace, s.observe, s.recoverer, s.methodNotAllowed)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, errNotFound) })
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", s.readyz)
	s.mountConsole(r)
	r.Get("/openapi.json", serveOpenAPI)
	if !s.opts.SeparateAdmin {
		s.mountAdmin(r, s.opts.Pprof)
	}
	r.Route("/spaces", func(r chi.Router) {
		r.Use(s.authenticate)
		r.Post("/", s.createSpace)
		r.Get("/", s.listSpaces)
		r.Route("/{spaceId}", func(r chi.Router) {
			if s.fwd != nil {
				r.Use(s.fwd.middleware)
			}
			r.Get("/", s.getSpace)
			r.Patch("/", s.patchSpace)
			r.Delete("/", s.deleteSpace)
			r.Post("/integrate", s.integrate)
			r.Get("/ws", s.serveWS)
			r.Get("/sessions", s.tree)
			r.Route("/sessions/{id}", func(r chi.Router) {
				r.Get("/", s.getSession)
				r.Get("/messages", s.messages)
				r.Post("/turn", s.turn)
				r.Get("/turns/{turnId}", s.getTurn)
				r.Get("/turns/{turnId}/stream", s.turnStream)
				r.Post("/turns/{turnId}/cancel", s.cancelTurn)
				r.Post("/fork", s.fork)
				r.Post("/archive", s.archive)
				r.Post("/consolidate", s.consolidate)
				r.Get("/system-prompt", s.getSlot)
				r.Put("/system-prompt", s.putSlot)
				r.Get("/memory", s.getSlot)
				r.Get("/insight", s.getSlot)
				r.Get("/consolidate-prompt", s.getSlot)
				r.Put("/consolidate-prompt", s.putSlot)
				r.Get("/integrate-prompt", s.getSlot)
				r.Put("/integrate-prompt", s.putSlot)
			})
		})
	})
	return r
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, "UNAVAILABLE", "shutting down"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.db.Ping(ctx); err != nil {
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, "UNAVAILABLE", "database unreachable"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
