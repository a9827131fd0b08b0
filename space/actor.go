package space

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/stellohq/stello/actor"
	"github.com/stellohq/stello/internal/apierr"
	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/session"
)

// ErrUnavailable means the server is shutting down or the space could not
// be loaded because the database is unreachable.
var ErrUnavailable = apierr.ErrUnavailable

// Conn is a live connection bound to a space (a WebSocket).
type Conn interface {
	// CloseWith closes the connection with a WebSocket close code.
	CloseWith(code int, reason string)
}

// call runs fn on the space actor's goroutine and replies with its result.
// fn must not block: it reads or changes the actor's memory only. Writes
// go through a writeOp instead.
type call struct {
	userID string // "" for internal calls, which skip the ownership check
	fn     func(s *spaceActor) (any, error)
	reply  chan result
}

type result struct {
	v   any
	err error
}

func (c *call) answer(v any, err error) {
	select {
	case c.reply <- result{v, err}:
	default:
	}
}

// spaceActor is the behavior of one space's actor. All fields are owned by
// the actor goroutine.
type spaceActor struct {
	a *actor.Actor
	m *Manager

	loaded  bool
	loading bool
	stash   []any // messages received while the space loads

	space session.Space
	tree  *tree
	conns map[Conn]struct{}
	work  int // queued or running turns, memory jobs and writes

	writes  []*writeOp // writes waiting behind the running one
	writing bool

	runs      map[string]*turnRun        // queued and running turns by id
	keys      map[string]*turnRun        // live turns by session and idempotency key
	keyChecks map[string][]*turnCall     // turns waiting for the database about their key
	subs      map[Conn]struct{}          // connections subscribed to space events
	recent    map[string]session.TurnLog // failed and cancelled turns whose row is being written

	mem memState // consolidation / integration bookkeeping

	setup *session.SpaceSetup // chosen by Options.Build at load; nil without one

	lease  session.Lease // this process's lease on the space (with a Cluster)
	leased bool
	lost   bool // the lease was taken over: do not hand it back
}

func (m *Manager) newActor(a *actor.Actor) actor.Behavior {
	return &spaceActor{a: a, m: m}
}

// logger is built on demand: a resident space keeps no logger of its own.
func (s *spaceActor) logger() *zap.Logger {
	return s.m.log.With(zap.String("space", s.a.ID()))
}

// Receive implements actor.Behavior.
func (s *spaceActor) Receive(msg any) {
	switch m := msg.(type) {
	case *loadDone:
		s.finishLoad(m)
		return
	case *turnDone:
		s.finishTurn(m)
		s.checkLease(m.err)
		return
	case *memoryDone:
		s.finishMemory(m)
		s.checkLease(m.err)
		return
	case *writeDone:
		s.finishWrite(m)
		s.checkLease(m.err)
		return
	case *keyChecked:
		s.finishKeyCheck(m)
		return
	case turnLogged:
		delete(s.recent, m.id)
		s.work--
		return
	case integrateTick:
		s.maybeIntegrate()
		return
	}
	if !s.loaded {
		// The mailbox bound would not hold while the actor drains it into
		// the stash: the stash has the same bound.
		if len(s.stash) >= s.m.sys.MailboxSize() {
			s.refuse(msg, fmt.Errorf("space mailbox full while the space loads: %w", session.ErrBusy))
			return
		}
		s.stash = append(s.stash, msg)
		s.startLoad()
		return
	}
	switch m := msg.(type) {
	case *call:
		if m.userID != "" && m.userID != s.space.UserID {
			m.answer(nil, session.ErrForbidden)
			return
		}
		m.answer(m.fn(s))
	case *writeOp:
		if m.userID != "" && m.userID != s.space.UserID {
			m.answer(nil, session.ErrForbidden)
			return
		}
		s.enqueueWrite(m)
	case *turnCall:
		s.submit(m)
	default:
		s.logger().Error("unknown message", zap.String("type", fmt.Sprintf("%T", msg)))
	}
}

// loadDone reports the space loaded from the database.
type loadDone struct {
	space  session.Space
	states []session.State
	setup  *session.SpaceSetup
	lease  *session.Lease
	err    error
}

// startLoad loads the space and its tree as a task; messages wait in the
// stash meanwhile.
func (s *spaceActor) startLoad() {
	if s.loading {
		return
	}
	s.loading = true
	id, m := s.a.ID(), s.m
	s.a.Go(func(ctx context.Context) any {
		ctx, cancel := context.WithTimeout(ctx, m.opts.LoadTimeout)
		defer cancel()
		select {
		case m.loads <- struct{}{}:
			defer func() { <-m.loads }()
		case <-ctx.Done():
			return &loadDone{err: fmt.Errorf("%w: waiting to load the space: %w", ErrUnavailable, ctx.Err())}
		}
		var lease *session.Lease
		if m.opts.Cluster != nil {
			// The lease first: the load then sees every write of a
			// previous owner (a write commits before a takeover or not
			// at all).
			l, err := m.acquire(ctx, id)
			if err != nil {
				return &loadDone{err: err}
			}
			lease = &l
		}
		sp, states, err := m.store.LoadSpace(ctx, id)
		if err != nil {
			return &loadDone{lease: lease, err: err}
		}
		setup, err := m.build(ctx, sp)
		return &loadDone{space: sp, states: states, setup: setup, lease: lease, err: err}
	}, func(err error) any { return &loadDone{err: err} })
}

func (s *spaceActor) finishLoad(d *loadDone) {
	s.loading = false
	if d.lease != nil {
		s.lease, s.leased = *d.lease, true
	}
	err := d.err
	if err == nil {
		s.space = d.space
		s.setup = d.setup
		s.tree = newTree(d.states)
		if s.tree.root == nil {
			err = fmt.Errorf("space %s has no root session", d.space.ID)
		}
	}
	s.m.loaded(s.a.ID(), err)
	var notOwner *NotOwnerError
	if err != nil {
		if !errors.Is(err, session.ErrNotFound) && !errors.As(err, &notOwner) {
			s.logger().Error("load space", zap.Error(err))
			if !errors.Is(err, guard.ErrPanic) && !errors.Is(err, ErrUnavailable) {
				err = fmt.Errorf("%w: load space: %w", ErrUnavailable, err)
			}
		}
		s.a.StopSelf(err) // Stopped answers the stash
		return
	}
	s.loaded = true
	stash := s.stash
	s.stash = nil
	for _, m := range stash {
		s.Receive(m)
	}
}

// Idle implements actor.Behavior.
func (s *spaceActor) Idle() bool {
	return len(s.conns) == 0 && s.work == 0 && !s.loading && len(s.stash) == 0
}

// stopAnswer is what callers still waiting on a stopped actor are told:
// not found after a delete, the panic after a panic, else unavailable.
func stopAnswer(err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%w: the space stopped", ErrUnavailable)
	case errors.Is(err, session.ErrNotFound), errors.Is(err, guard.ErrPanic), errors.Is(err, ErrUnavailable):
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Stopped implements actor.Behavior: everything still waiting on the space
// is answered at once.
func (s *spaceActor) Stopped(err error) {
	if s.m.opts.Cluster != nil {
		s.m.unloaded(s.a.ID(), s.lease, s.leased && !s.lost && releasing(err))
	}
	err = stopAnswer(err)
	for _, m := range s.stash {
		s.Reject(m, err)
	}
	s.stash = nil
	for _, w := range s.writes {
		w.answer(nil, err)
	}
	s.writes = nil
	for _, calls := range s.keyChecks {
		for _, tc := range calls {
			tc.fail(err)
		}
	}
	s.keyChecks = nil
	if s.tree != nil {
		for _, n := range s.tree.nodes {
			for _, r := range n.queue {
				r.finish(session.TurnResult{TurnID: r.log.ID}, err)
			}
			n.queue = nil
		}
	}
	if errors.Is(err, session.ErrLeaseLost) {
		s.closeConns(1001, "the space moved to another process; reconnect")
	}
	s.conns = nil
	s.subs = nil
}

// Reject implements actor.Behavior. It may run after the actor stopped, on
// a task's goroutine: it touches only the message.
func (s *spaceActor) Reject(msg any, err error) { s.refuse(msg, stopAnswer(err)) }

// refuse answers whoever waits on msg with err.
func (s *spaceActor) refuse(msg any, err error) {
	switch m := msg.(type) {
	case *call:
		m.answer(nil, err)
	case *writeOp:
		m.answer(nil, err)
	case *turnCall:
		m.fail(err)
	case *turnDone:
		// The turn ended after its space stopped. A turn that committed
		// is still a success; one that failed (its context was cancelled
		// by the stop) answers why the space stopped.
		if m.err != nil {
			m.run.finish(session.TurnResult{TurnID: m.run.log.ID}, err)
		} else {
			res := m.res
			res.TurnID = m.run.log.ID
			m.run.finish(res, nil)
		}
	case *keyChecked:
		// Its callers were answered by Stopped.
	case *writeDone:
		if m.err != nil {
			m.w.answer(nil, err)
		} else {
			m.w.answer(nil, fmt.Errorf("%w: the space stopped before the write was applied; it is committed", ErrUnavailable))
		}
	case *memoryDone:
		if m.reply != nil {
			select {
			case m.reply <- result{err: err}:
			default:
			}
		}
	}
}

// node returns the session with the id in this space.
func (s *spaceActor) node(id string) (*node, error) {
	n, ok := s.tree.nodes[id]
	if !ok {
		return nil, fmt.Errorf("session %s: %w", id, session.ErrNotFound)
	}
	return n, nil
}

// writable returns the session if it exists and is not archived.
func (s *spaceActor) writable(id string) (*node, error) {
	n, err := s.node(id)
	if err != nil {
		return nil, err
	}
	if n.meta.Status == session.StatusArchived {
		return nil, fmt.Errorf("session %s: %w", id, session.ErrArchived)
	}
	return n, nil
}

// forkWrite prepares a fork of parentID: the one fork path of the API,
// the WebSocket and the model's tool.
func (s *spaceActor) forkWrite(parentID string, o session.ForkOptions) (commitFn, applyFn, error) {
	if err := o.Validate(); err != nil {
		return nil, nil, err
	}
	p, err := s.writable(parentID)
	if err != nil {
		return nil, nil, err
	}
	idx := 0
	for _, c := range p.children {
		if n := s.tree.nodes[c]; n != nil && n.meta.Index >= idx {
			idx = n.meta.Index + 1
		}
	}
	t := time.Now().UTC().Truncate(time.Microsecond)
	pid := p.meta.ID
	sp := o.SystemPrompt
	if sp == nil {
		sp = p.data.SystemPrompt
	}
	st := session.State{
		Meta: session.Meta{ID: uuid.NewString(), SpaceID: s.space.ID, ParentID: &pid, SourceSessionID: &pid,
			Label: o.Label, Role: session.RoleStandard, Status: session.StatusActive, Scope: o.Scope,
			Depth: p.meta.Depth + 1, Index: idx, CreatedAt: t, UpdatedAt: t, LastActiveAt: t},
		Data: session.Data{SystemPrompt: sp},
	}
	store := s.m.store
	commit := func(ctx context.Context) (any, error) {
		return nil, store.CreateSession(ctx, st, o.Context == "inherit", o.Prompt)
	}
	apply := func(s *spaceActor, _ any) (any, error) {
		n := s.tree.add(st)
		s.publish(SpaceEvent{Event: EventSessionCreated, SessionID: n.meta.ID, Session: viewPtr(n)})
		return n.view(), nil
	}
	return commit, apply, nil
}

// closeConns closes every connection of the space; CloseWith never blocks.
func (s *spaceActor) closeConns(code int, reason string) {
	for c := range s.conns {
		c.CloseWith(code, reason)
	}
	s.conns = nil
}
