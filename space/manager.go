package space

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/puzpuzpuz/xsync/v3"
	"go.uber.org/zap"

	"github.com/stellohq/stello/actor"
	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/session"
)

// Options configure a Manager.
type Options struct {
	IdleTTL          time.Duration
	MailboxSize      int
	SessionQueue     int           // turns that may wait behind a running turn (default 8)
	TurnTimeout      time.Duration // deadline of a whole turn (default 2m)
	ConsolidateEvery int           // 0 disables automatic consolidation
	// IntegrateDelay debounces integration after consolidations (default 2s).
	IntegrateDelay time.Duration
	// MemoryTimeout bounds one consolidation or integration (default 2m).
	MemoryTimeout time.Duration
	// MaxConcurrentLoads bounds how many actors load their space from the
	// database at once (default 8), so a storm of activations queues in
	// the server instead of growing the database pool.
	MaxConcurrentLoads int
	// LoadTimeout bounds loading a space from the database (default 15s).
	LoadTimeout time.Duration
	// WriteTimeout bounds one write of a space (fork, archive, slot,
	// update, delete) whatever its caller does (default 15s).
	WriteTimeout time.Duration
	// Guard logs and counts recovered panics (default: a private one).
	Guard *guard.Guard
	// TurnLogSweep is how often expired failed and cancelled turns are
	// deleted from the turn log (default 1h).
	TurnLogSweep time.Duration
	// NoTurnLog keeps finished turns out of the turn log (for measuring
	// its cost): GET …/turns/:id and idempotency keys then only know
	// queued and running turns.
	NoTurnLog bool
	// Build, when set, is called as each space's actor loads and chooses
	// that space's model, extra tools and default prompts (see BuildFunc).
	Build BuildFunc
	// Cluster, when set, makes the manager share its database with other
	// processes: spaces are activated under a lease (see Cluster).
	Cluster *Cluster
}

// Manager is the handle on every space actor: the agent pool.
type Manager struct {
	opts   Options
	store  Store
	engine Engine
	log    *zap.Logger
	sys    *actor.System
	loads  chan struct{} // semaphore of space loads
	met    metrics

	routes   *xsync.MapOf[string, route] // where spaces are served (with a Cluster)
	releases chan releaseReq             // leases of evicted spaces to hand back

	sweeping sync.WaitGroup
}

// NewManager starts the actor system. engine may be nil, in which case
// turns and memory operations fail with ErrNoEngine.
func NewManager(opts Options, store Store, engine Engine, log *zap.Logger) *Manager {
	if opts.SessionQueue <= 0 {
		opts.SessionQueue = 8
	}
	if opts.TurnTimeout <= 0 {
		opts.TurnTimeout = 2 * time.Minute
	}
	if opts.IntegrateDelay <= 0 {
		opts.IntegrateDelay = 2 * time.Second
	}
	if opts.MemoryTimeout <= 0 {
		opts.MemoryTimeout = 2 * time.Minute
	}
	if opts.MaxConcurrentLoads <= 0 {
		opts.MaxConcurrentLoads = 8
	}
	if opts.LoadTimeout <= 0 {
		opts.LoadTimeout = 15 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 15 * time.Second
	}
	if opts.TurnLogSweep <= 0 {
		opts.TurnLogSweep = time.Hour
	}
	if log == nil {
		log = zap.NewNop()
	}
	if opts.Guard == nil {
		opts.Guard = guard.New(log)
	}
	m := &Manager{opts: opts, store: store, engine: engine, log: log, loads: make(chan struct{}, opts.MaxConcurrentLoads),
		met: newMetrics()}
	m.sys = actor.NewSystem(actor.Options{IdleTTL: opts.IdleTTL, MailboxSize: opts.MailboxSize, Guard: opts.Guard}, m.newActor)
	m.sweeping.Add(1)
	go m.sweepTurnLogs()
	if opts.Cluster != nil {
		c := *opts.Cluster
		if c.LeaseTTL <= 0 {
			c.LeaseTTL = 10 * time.Second
		}
		if c.Alive == nil {
			c.Alive = func() bool { return true }
		}
		m.opts.Cluster = &c
		m.routes = xsync.NewMapOf[string, route]()
		m.releases = make(chan releaseReq, 4096)
		m.sweeping.Add(1)
		go m.releaseLoop()
	}
	return m
}

// System exposes the actor system (Get, Evict, Len, Close, Stats).
func (m *Manager) System() *actor.System { return m.sys }

// Len returns the number of resident space actors.
func (m *Manager) Len() int { return m.sys.Len() }

// Evict asks a space's actor to stop once idle.
func (m *Manager) Evict(spaceID string) bool { return m.sys.Evict(spaceID) }

// Close stops every actor and waits for running tasks, or until ctx ends.
func (m *Manager) Close(ctx context.Context) error {
	err := m.sys.Close(ctx)
	m.sweeping.Wait()
	return err
}

// TurnLogRetention is how long failed and cancelled turns stay in the turn
// log (completed ones stay as long as their session).
const TurnLogRetention = 24 * time.Hour

// sweepTurnLogs deletes expired failed and cancelled turns, at start-up
// and then every TurnLogSweep, until the manager closes.
func (m *Manager) sweepTurnLogs() {
	defer m.sweeping.Done()
	t := time.NewTicker(m.opts.TurnLogSweep)
	defer t.Stop()
	ctx := m.sys.Context()
	for {
		m.sweepOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Manager) sweepOnce(ctx context.Context) {
	defer func() {
		if v := recover(); v != nil {
			_ = m.opts.Guard.Caught("turnlog.sweep", v)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	n, err := m.store.DeleteExpiredTurnLogs(ctx, time.Now().Add(-TurnLogRetention))
	if err != nil && ctx.Err() == nil {
		m.log.Warn("sweep the turn log", zap.Error(err))
	} else if n > 0 {
		m.log.Info("swept the turn log", zap.Int64("deleted", n))
	}
}

// do runs fn on the space's actor after the ownership check and waits for
// its answer. An id that is not a UUID is ErrNotFound.
func (m *Manager) do(ctx context.Context, userID, spaceID string, fn func(s *spaceActor) (any, error)) (any, error) {
	if err := checkSpaceID(spaceID); err != nil {
		return nil, err
	}
	c := &call{userID: userID, fn: fn, reply: make(chan result, 1)}
	if err := m.sys.Send(spaceID, c); err != nil {
		return nil, mapSendErr(err)
	}
	select {
	case r := <-c.reply:
		return r.v, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the space: %w", ctx.Err())
	}
}

func mapSendErr(err error) error {
	switch {
	case errors.Is(err, actor.ErrBusy):
		return fmt.Errorf("space mailbox full: %w", session.ErrBusy)
	case errors.Is(err, actor.ErrClosed), errors.Is(err, actor.ErrStopped):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func doTyped[T any](ctx context.Context, m *Manager, userID, spaceID string, fn func(s *spaceActor) (T, error)) (T, error) {
	v, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) { return fn(s) })
	if err != nil {
		var zero T
		return zero, err
	}
	return v.(T), nil
}

// CreateSpace creates a space with its root session.
func (m *Manager) CreateSpace(ctx context.Context, userID string, in session.SpaceInput) (session.Space, error) {
	if err := in.Validate(); err != nil {
		return session.Space{}, err
	}
	sp, _, err := m.store.CreateSpace(ctx, userID, in)
	return sp, err
}

// ListSpaces lists the user's spaces, oldest first.
func (m *Manager) ListSpaces(ctx context.Context, userID string) ([]session.Space, error) {
	return m.store.ListSpaces(ctx, userID)
}

// GetSpace returns a space the user owns.
func (m *Manager) GetSpace(ctx context.Context, userID, spaceID string) (session.Space, error) {
	return doTyped(ctx, m, userID, spaceID, func(s *spaceActor) (session.Space, error) { return s.space, nil })
}

// UpdateSpace patches a space; a new system prompt also goes to the root
// session.
func (m *Manager) UpdateSpace(ctx context.Context, userID, spaceID string, p session.SpacePatch) (session.Space, error) {
	if err := p.Validate(); err != nil {
		return session.Space{}, err
	}
	return writeTyped[session.Space](ctx, m, userID, spaceID, func(s *spaceActor) (commitFn, applyFn, error) {
		commit := func(ctx context.Context) (any, error) { return m.store.UpdateSpace(ctx, spaceID, p) }
		apply := func(s *spaceActor, v any) (any, error) {
			sp := v.(session.Space)
			s.space = sp
			if p.SetSystemPrompt {
				s.tree.root.data.SystemPrompt = p.SystemPrompt
				s.publish(SpaceEvent{Event: EventSessionUpdated, SessionID: s.tree.root.meta.ID, Session: viewPtr(s.tree.root)})
			}
			return sp, nil
		}
		return commit, apply, nil
	})
}

// CloseDeleted is the WebSocket close code sent when a space is deleted.
const CloseDeleted = 4404

// DeleteSpace deletes a space, stops its actor and closes its connections.
func (m *Manager) DeleteSpace(ctx context.Context, userID, spaceID string) error {
	_, err := m.write(ctx, userID, spaceID, func(s *spaceActor) (commitFn, applyFn, error) {
		commit := func(ctx context.Context) (any, error) { return nil, m.store.DeleteSpace(ctx, spaceID) }
		apply := func(s *spaceActor, _ any) (any, error) {
			s.closeConns(CloseDeleted, "space deleted")
			s.a.StopSelf(fmt.Errorf("space %s was deleted: %w", spaceID, session.ErrNotFound))
			return nil, nil
		}
		return commit, apply, nil
	})
	return err
}

// Tree returns the session tree.
func (m *Manager) Tree(ctx context.Context, userID, spaceID string) (*TreeNode, error) {
	return doTyped(ctx, m, userID, spaceID, func(s *spaceActor) (*TreeNode, error) { return s.tree.build(s.tree.root), nil })
}

// Session returns one session's metadata.
func (m *Manager) Session(ctx context.Context, userID, spaceID, sessionID string) (SessionView, error) {
	return doTyped(ctx, m, userID, spaceID, func(s *spaceActor) (SessionView, error) {
		n, err := s.node(sessionID)
		if err != nil {
			return SessionView{}, err
		}
		return n.view(), nil
	})
}

// Messages returns a page of a session's records. The actor only checks
// that the session is in the space; the records are read from the database
// outside the actor.
func (m *Manager) Messages(ctx context.Context, userID, spaceID, sessionID string, limit, offset int) ([]session.Record, error) {
	if _, err := m.Session(ctx, userID, spaceID, sessionID); err != nil {
		return nil, err
	}
	return m.store.ListRecords(ctx, spaceID, sessionID, limit, offset)
}

// Fork creates a child session.
func (m *Manager) Fork(ctx context.Context, userID, spaceID, parentID string, o session.ForkOptions) (SessionView, error) {
	if err := o.Validate(); err != nil {
		return SessionView{}, err
	}
	return writeTyped[SessionView](ctx, m, userID, spaceID, func(s *spaceActor) (commitFn, applyFn, error) {
		return s.forkWrite(parentID, o)
	})
}

// Archive archives a session; the root cannot be archived.
func (m *Manager) Archive(ctx context.Context, userID, spaceID, sessionID string) (SessionView, error) {
	return writeTyped[SessionView](ctx, m, userID, spaceID, func(s *spaceActor) (commitFn, applyFn, error) {
		n, err := s.node(sessionID)
		if err != nil {
			return nil, nil, err
		}
		if n.meta.Role == session.RoleMain {
			return nil, nil, fmt.Errorf("the root session cannot be archived: %w", session.ErrConflict)
		}
		if n.meta.Status == session.StatusArchived {
			return nil, func(*spaceActor, any) (any, error) { return n.view(), nil }, nil
		}
		commit := func(ctx context.Context) (any, error) { return m.store.ArchiveSession(ctx, spaceID, sessionID) }
		apply := func(s *spaceActor, v any) (any, error) {
			n.meta.Status = session.StatusArchived
			n.meta.UpdatedAt = v.(time.Time)
			s.publish(SpaceEvent{Event: EventSessionArchived, SessionID: n.meta.ID, Session: viewPtr(n)})
			return n.view(), nil
		}
		return commit, apply, nil
	})
}

// Slot reads a session data slot.
func (m *Manager) Slot(ctx context.Context, userID, spaceID, sessionID string, slot session.Slot) (*string, error) {
	return doTyped(ctx, m, userID, spaceID, func(s *spaceActor) (*string, error) {
		n, err := s.node(sessionID)
		if err != nil {
			return nil, err
		}
		return n.data.Get(slot), nil
	})
}

// SetSlot writes a session data slot; archived sessions refuse writes.
func (m *Manager) SetSlot(ctx context.Context, userID, spaceID, sessionID string, slot session.Slot, content string) (*string, error) {
	if err := session.ValidText("content", content); err != nil {
		return nil, err
	}
	return writeTyped[*string](ctx, m, userID, spaceID, func(s *spaceActor) (commitFn, applyFn, error) {
		n, err := s.writable(sessionID)
		if err != nil {
			return nil, nil, err
		}
		commit := func(ctx context.Context) (any, error) {
			return nil, m.store.SetSlot(ctx, spaceID, sessionID, slot, &content)
		}
		apply := func(s *spaceActor, _ any) (any, error) {
			n.data.Set(slot, &content)
			ev := EventSessionUpdated
			switch slot {
			case session.SlotMemory:
				ev = EventMemoryUpdated
			case session.SlotInsight:
				ev = EventInsightUpdated
			}
			s.publish(SpaceEvent{Event: ev, SessionID: n.meta.ID, Session: viewPtr(n)})
			return &content, nil
		}
		return commit, apply, nil
	})
}

// Bootstrap is what a WebSocket client receives on session.enter.
type Bootstrap struct {
	Core          *string   // the root session's memory (the synthesis)
	Memories      []*string // memory of each ancestor, nearest first
	CurrentMemory *string
	Scope         *string
	Session       SessionView
}

// Enter checks the session and returns its bootstrap.
func (m *Manager) Enter(ctx context.Context, userID, spaceID, sessionID string) (Bootstrap, error) {
	return doTyped(ctx, m, userID, spaceID, func(s *spaceActor) (Bootstrap, error) {
		n, err := s.node(sessionID)
		if err != nil {
			return Bootstrap{}, err
		}
		b := Bootstrap{Core: s.tree.root.data.Memory, CurrentMemory: n.data.Memory, Scope: n.meta.Scope, Session: n.view(),
			Memories: []*string{}}
		for _, a := range s.tree.ancestors(n) {
			b.Memories = append(b.Memories, a.data.Memory)
		}
		return b, nil
	})
}

// Attach binds a connection to the space after checking ownership.
func (m *Manager) Attach(ctx context.Context, userID, spaceID string, c Conn) error {
	_, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if s.conns == nil {
			s.conns = map[Conn]struct{}{}
		}
		s.conns[c] = struct{}{}
		return nil, nil
	})
	return err
}

// Detach unbinds a connection. It never waits and is never refused by a
// full mailbox.
func (m *Manager) Detach(spaceID string, c Conn) {
	m.sys.Tell(spaceID, &call{fn: func(s *spaceActor) (any, error) {
		delete(s.conns, c)
		delete(s.subs, c)
		return nil, nil
	}, reply: make(chan result, 1)})
}

// Conns returns the number of connections bound to a space (for tests and
// metrics).
func (m *Manager) Conns(ctx context.Context, spaceID string) (int, error) {
	return doTyped(ctx, m, "", spaceID, func(s *spaceActor) (int, error) { return len(s.conns), nil })
}
