package testutil

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
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

// StackOptions tune a test stack; zero values take defaults.
type StackOptions struct {
	LLM       llm.Client // default: the fake model
	Space     space.Options
	Engine    session.Options
	Transport transport.Options
	Store     *pgstore.Store // default: a fresh migrated database
	// LeaseTTL is the cluster's lease TTL (default 10s).
	LeaseTTL time.Duration
	// NoCluster runs the stack without membership, leases or forwarding
	// (for a database that cannot be reached at all).
	NoCluster bool
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
	// Member is the stack's membership in the cluster of its database.
	Member *cluster.Membership

	stopOnce sync.Once
}

// Stop shuts the stack down as a process's graceful stop does: WebSockets
// closed with 1001, requests drained, actors stopped, leases handed back.
// It runs at cleanup if not before.
func (s *Stack) Stop() {
	s.stopOnce.Do(func() {
		s.Front.Close()
		s.HTTP.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Spaces.Close(ctx)
		if s.Member != nil {
			_ = s.Member.Leave(ctx)
		}
	})
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
	// Every stack is a process of a cluster of its own (or of one shared
	// with other stacks over the same Store): leases and fencing are on.
	nodeID := uuid.Must(uuid.NewV7()).String()
	var member *cluster.Membership
	if o.NoCluster {
		o.Space.Cluster = nil
	} else if o.Space.Cluster == nil {
		o.Space.Cluster = &space.Cluster{NodeID: nodeID, LeaseTTL: o.LeaseTTL,
			Alive: func() bool { return member != nil && member.Alive() }}
	} else {
		nodeID = o.Space.Cluster.NodeID
	}
	mgr := space.NewManager(o.Space, st, eng, log)
	if !o.NoCluster {
		m, err := cluster.Join(context.Background(), st, cluster.Options{NodeID: nodeID, LeaseTTL: o.LeaseTTL, Log: log,
			Guard: o.Space.Guard, OnLost: mgr.LoseLeases, OnReleased: mgr.ForgetOwner})
		if err != nil {
			_ = mgr.Close(context.Background())
			t.Fatalf("join the cluster: %v", err)
		}
		member = m
		if o.Transport.Forward == nil {
			o.Transport.Forward = &transport.ForwardOptions{NodeID: nodeID}
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(mgr.Collectors()...)
	reg.MustRegister(o.Space.Guard.Collector())
	front := transport.New(o.Transport, mgr, st, st, log, reg)
	srv := httptest.NewServer(front.Handler())
	if member != nil {
		if err := member.SetAdvertiseURL(context.Background(), srv.URL); err != nil {
			t.Fatalf("advertise: %v", err)
		}
	}
	s := &Stack{Store: st, Spaces: mgr, Engine: eng, Front: front, HTTP: srv, URL: srv.URL, Registry: reg, Guard: o.Space.Guard,
		Member: member}
	t.Cleanup(s.Stop)
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
