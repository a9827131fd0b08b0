package testutil

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
	"github.com/stellohq/stello/transport"
)

// StackOptions tune a test stack; zero values take defaults.
type StackOptions struct {
	LLM       llm.Client // default: the fake model
	Space     space.Options
	Engine    session.Options
	Transport transport.Options
	Store     *pgstore.Store // default: a fresh migrated database
}

// Stack is a whole Stello server over a real database, served by httptest.
type Stack struct {
	Store    *pgstore.Store
	Spaces   *space.Manager
	Engine   *session.Engine
	Front    *transport.Server
	HTTP     *httptest.Server
	URL      string
	Registry *prometheus.Registry
	Guard    *guard.Guard
}

// NewStack starts a stack; it is shut down at cleanup.
func NewStack(t testing.TB, o StackOptions) *Stack {
	t.Helper()
	st := o.Store
	if st == nil {
		st = Store(t)
	}
	client := o.LLM
	if client == nil {
		client = fake.New(fake.Config{})
	}
	if o.Space.IdleTTL == 0 {
		o.Space.IdleTTL = time.Minute
	}
	if o.Transport.KeyCacheTTL == 0 {
		o.Transport.KeyCacheTTL = 50 * time.Millisecond
	}
	log := zap.NewNop()
	panics := guard.New(log)
	if o.Space.Guard == nil {
		o.Space.Guard = panics
	}
	if o.Transport.Guard == nil {
		o.Transport.Guard = o.Space.Guard
	}
	eng := session.NewEngine(st, client, nil, o.Engine)
	mgr := space.NewManager(o.Space, st, eng, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(mgr.Collectors()...)
	reg.MustRegister(o.Space.Guard.Collector())
	front := transport.New(o.Transport, mgr, st, st, log, reg)
	srv := httptest.NewServer(front.Handler())
	s := &Stack{Store: st, Spaces: mgr, Engine: eng, Front: front, HTTP: srv, URL: srv.URL, Registry: reg, Guard: o.Space.Guard}
	t.Cleanup(func() {
		front.Close()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = mgr.Close(ctx)
	})
	return s
}

// User creates a user and returns its id and API key.
func (s *Stack) User(t testing.TB, name string) (string, string) {
	t.Helper()
	u, key, err := s.Store.CreateUser(context.Background(), name)
	if err != nil {
		t.Fatalf("create user: %v", err)
	}
	return u.ID, key
}
