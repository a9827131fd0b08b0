package space

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/session"
)

// Engine runs the model-driven work; session.Engine satisfies it.
type Engine interface {
	Turn(ctx context.Context, req session.TurnRequest) (session.TurnResult, error)
	Consolidate(ctx context.Context, sp session.Space, st session.State) (session.ConsolidateResult, error)
	Integrate(ctx context.Context, sp session.Space, root session.State) (session.IntegrateResult, error)
}

// ErrNoEngine means the server runs without a model.
var ErrNoEngine = errors.New("no model configured")

// turnCall asks the actor to run a turn.
type turnCall struct {
	ctx       context.Context
	userID    string
	sessionID string
	input     string
	onDelta   func(string)
	reply     chan turnReply
}

type turnReply struct {
	res session.TurnResult
	err error
}

func (t *turnCall) fail(_ any, err error) {
	select {
	case t.reply <- turnReply{err: err}:
	default:
	}
}

// turnDone reports a finished turn task.
type turnDone struct {
	call *turnCall
	res  session.TurnResult
	err  error
}

// Turn runs a turn on a session and waits for its result. Turns on one
// session run one at a time in arrival order; at most SessionQueue wait.
// The turn runs to completion (and is persisted) even if ctx ends first:
// ctx only bounds the wait for the result. onDelta, if not nil, receives
// streamed text from the turn's goroutine and must not block.
func (m *Manager) Turn(ctx context.Context, userID, spaceID, sessionID, input string, onDelta func(string)) (session.TurnResult, error) {
	if err := checkSpaceID(spaceID); err != nil {
		return session.TurnResult{}, err
	}
	if input == "" {
		return session.TurnResult{}, &session.FieldError{Field: "input", Msg: "is required and must be non-empty"}
	}
	tc := &turnCall{ctx: ctx, userID: userID, sessionID: sessionID, input: input, onDelta: onDelta, reply: make(chan turnReply, 1)}
	if err := m.sys.Send(spaceID, tc); err != nil {
		return session.TurnResult{}, mapSendErr(err)
	}
	select {
	case r := <-tc.reply:
		return r.res, r.err
	case <-ctx.Done():
		return session.TurnResult{}, ctx.Err()
	}
}

func (s *spaceActor) startOrQueue(tc *turnCall) {
	if tc.userID != "" && tc.userID != s.space.UserID {
		tc.fail(nil, session.ErrForbidden)
		return
	}
	if s.m.engine == nil {
		tc.fail(nil, ErrNoEngine)
		return
	}
	n, err := s.writable(tc.sessionID)
	if err != nil {
		tc.fail(nil, err)
		return
	}
	if n.running {
		if len(n.queue) >= s.m.opts.SessionQueue {
			tc.fail(nil, fmt.Errorf("session %s has %d turns waiting: %w", n.meta.ID, len(n.queue), session.ErrBusy))
			return
		}
		n.queue = append(n.queue, tc)
		s.work++
		return
	}
	s.work++
	s.startTurn(n, tc)
}

func (s *spaceActor) startTurn(n *node, tc *turnCall) {
	n.running = true
	req := session.TurnRequest{
		Space:   s.space,
		Session: session.State{Meta: n.meta, Data: n.data},
		Input:   tc.input,
		OnDelta: tc.onDelta,
		Fork:    s.m.forkFunc(s.space.ID, n.meta.ID),
		History: n.hist,
	}
	engine, timeout := s.m.engine, s.m.opts.TurnTimeout
	s.a.Go(func(ctx context.Context) any {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		start := time.Now()
		res, err := engine.Turn(ctx, req)
		s.m.observeTurn(time.Since(start), err)
		return &turnDone{call: tc, res: res, err: err}
	})
}

// forkFunc forks through the actor, exactly as the API does.
func (m *Manager) forkFunc(spaceID, parentID string) func(ctx context.Context, o session.ForkOptions) (session.Meta, error) {
	return func(ctx context.Context, o session.ForkOptions) (session.Meta, error) {
		c := &call{ctx: ctx, fn: func(s *spaceActor) (any, error) { return s.fork(ctx, parentID, o) }, reply: make(chan result, 1)}
		if !m.sys.Tell(spaceID, c) {
			return session.Meta{}, fmt.Errorf("space %s is not running", spaceID)
		}
		select {
		case r := <-c.reply:
			if r.err != nil {
				return session.Meta{}, r.err
			}
			return r.v.(SessionView).Meta, nil
		case <-ctx.Done():
			return session.Meta{}, ctx.Err()
		}
	}
}

func (s *spaceActor) finishTurn(d *turnDone) {
	s.work--
	n, ok := s.tree.nodes[d.call.sessionID]
	if !ok {
		d.call.fail(nil, session.ErrNotFound)
		return
	}
	if d.err == nil {
		n.meta.TurnCount = d.res.TurnCount
		n.meta.LastActiveAt = d.res.At
		n.meta.UpdatedAt = d.res.At
		if c := d.res.ConsumedInsight; c != nil && n.data.Insight != nil && *n.data.Insight == *c {
			n.data.Insight = nil
		}
		n.hist = d.res.History
	}
	select {
	case d.call.reply <- turnReply{res: d.res, err: d.err}:
	default:
	}
	n.running = false
	for len(n.queue) > 0 {
		next := n.queue[0]
		n.queue[0] = nil
		n.queue = n.queue[1:]
		if n.meta.Status == session.StatusArchived {
			s.work--
			next.fail(nil, fmt.Errorf("session %s: %w", n.meta.ID, session.ErrArchived))
			continue
		}
		s.startTurn(n, next)
		break
	}
	if len(n.queue) == 0 {
		n.queue = nil
	}
	if d.err == nil && s.m.opts.ConsolidateEvery > 0 && d.res.TurnCount%s.m.opts.ConsolidateEvery == 0 {
		s.startConsolidation(n, nil)
	}
}

func (s *spaceActor) logErr(msg string, err error, fields ...zap.Field) {
	s.logger().Warn(msg, append(fields, zap.Error(err))...)
}
