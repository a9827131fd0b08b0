package space

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/stellohq/stello/actor"
	"github.com/stellohq/stello/session"
)

// ErrUnavailable means the server is shutting down or the space could not
// be loaded because the database is unreachable.
var ErrUnavailable = errors.New("unavailable")

// Conn is a live connection bound to a space (a WebSocket).
type Conn interface {
	// CloseWith closes the connection with a WebSocket close code.
	CloseWith(code int, reason string)
}

// call runs fn on the space actor's goroutine and replies with its result.
type call struct {
	ctx    context.Context
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

	loaded bool
	space  session.Space
	tree   *tree
	conns  map[Conn]struct{}
	work   int // queued or running turns and memory jobs

	mem memState // consolidation / integration bookkeeping
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
	case *call:
		if !s.ensureLoaded(m.ctx, m.answer) {
			return
		}
		if m.userID != "" && m.userID != s.space.UserID {
			m.answer(nil, session.ErrForbidden)
			return
		}
		m.answer(m.fn(s))
	case *turnCall:
		if !s.ensureLoaded(m.ctx, m.fail) {
			return
		}
		s.startOrQueue(m)
	case *turnDone:
		s.finishTurn(m)
	case *memoryDone:
		s.finishMemory(m)
	case integrateTick:
		s.maybeIntegrate()
	default:
		s.logger().Error("unknown message", zap.String("type", fmt.Sprintf("%T", msg)))
	}
}

// ensureLoaded loads the space and its tree on the first message. When the
// space does not exist the actor stops itself.
func (s *spaceActor) ensureLoaded(ctx context.Context, fail func(any, error)) bool {
	if s.loaded {
		return true
	}
	lctx, cancel := context.WithTimeout(s.m.sys.Context(), 15*time.Second)
	defer cancel()
	var sp session.Space
	var states []session.State
	var err error
	select {
	case s.m.loads <- struct{}{}:
		sp, states, err = s.m.store.LoadSpace(lctx, s.a.ID())
		<-s.m.loads
	case <-lctx.Done():
		err = lctx.Err()
	}
	if err != nil {
		if !errors.Is(err, session.ErrNotFound) {
			s.logger().Error("load space", zap.Error(err))
			err = fmt.Errorf("%w: load space: %w", ErrUnavailable, err)
		}
		fail(nil, err)
		s.a.StopSelf(err)
		return false
	}
	s.space = sp
	s.tree = newTree(states)
	if s.tree.root == nil {
		err := fmt.Errorf("space %s has no root session", sp.ID)
		s.logger().Error("load space", zap.Error(err))
		fail(nil, err)
		s.a.StopSelf(err)
		return false
	}
	s.loaded = true
	return true
}

// Idle implements actor.Behavior.
func (s *spaceActor) Idle() bool { return len(s.conns) == 0 && s.work == 0 }

// Stopped implements actor.Behavior.
func (s *spaceActor) Stopped() {}

// Reject implements actor.Behavior.
func (s *spaceActor) Reject(msg any, err error) {
	if errors.Is(err, actor.ErrClosed) || errors.Is(err, actor.ErrStopped) {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	switch m := msg.(type) {
	case *call:
		m.answer(nil, err)
	case *turnCall:
		m.fail(nil, err)
	case *turnDone:
		// The turn ended after its space stopped (deleted, or shutting
		// down): its outcome is still the caller's answer.
		select {
		case m.call.reply <- turnReply{res: m.res, err: m.err}:
		default:
		}
	case *memoryDone:
		if m.reply != nil {
			select {
			case m.reply <- result{err: fmt.Errorf("%w: the space stopped", ErrUnavailable)}:
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

// fork creates a child of parentID. It is the one fork path of the API,
// the WebSocket and the model's tool.
func (s *spaceActor) fork(ctx context.Context, parentID string, o session.ForkOptions) (SessionView, error) {
	if err := o.Validate(); err != nil {
		return SessionView{}, err
	}
	p, err := s.writable(parentID)
	if err != nil {
		return SessionView{}, err
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
	if err := s.m.store.CreateSession(ctx, st, o.Context == "inherit", o.Prompt); err != nil {
		return SessionView{}, err
	}
	return s.tree.add(st).view(), nil
}

func (s *spaceActor) closeConns(code int, reason string) {
	for c := range s.conns {
		c.CloseWith(code, reason)
	}
	s.conns = nil
}
