package space

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/session"
)

// Engine runs the model-driven work; session.Engine satisfies it.
type Engine interface {
	Turn(ctx context.Context, req session.TurnRequest) (session.TurnResult, error)
	Consolidate(ctx context.Context, sp session.Space, st session.State) (session.ConsolidateResult, error)
	Integrate(ctx context.Context, sp session.Space, root session.State) (session.IntegrateResult, error)
	// CheckInput refuses an input that can never be sent to the model
	// (larger alone than the context budget).
	CheckInput(input string) error
}

// ErrNoEngine means the server runs without a model.
var ErrNoEngine = errors.New("no model configured")

// turnCall asks the actor to run a turn. It is answered exactly once.
type turnCall struct {
	userID    string
	sessionID string
	input     string
	onDelta   func(string)
	then      func(session.TurnResult, error) // called once answered; must not block

	once sync.Once
	done chan struct{}
	res  session.TurnResult
	err  error
}

func (t *turnCall) answer(res session.TurnResult, err error) {
	t.once.Do(func() {
		t.res, t.err = res, err
		close(t.done)
		if t.then != nil {
			t.then(res, err)
		}
	})
}

func (t *turnCall) fail(err error) { t.answer(session.TurnResult{}, err) }

func (t *turnCall) succeed(res session.TurnResult) { t.answer(res, nil) }

// turnDone reports a finished turn task.
type turnDone struct {
	call *turnCall
	res  session.TurnResult
	err  error
}

// PendingTurn is a turn handed to its space's actor.
type PendingTurn struct {
	tc *turnCall
}

// Done is closed when the turn has its answer.
func (p *PendingTurn) Done() <-chan struct{} { return p.tc.done }

// Result is the turn's answer; call it after Done is closed.
func (p *PendingTurn) Result() (session.TurnResult, error) {
	<-p.tc.done
	return p.tc.res, p.tc.err
}

// Wait waits for the turn's result. ctx bounds the wait only: the turn runs
// to completion (and is persisted) whether or not anyone waits.
func (p *PendingTurn) Wait(ctx context.Context) (session.TurnResult, error) {
	select {
	case <-p.tc.done:
		return p.tc.res, p.tc.err
	case <-ctx.Done():
		return session.TurnResult{}, fmt.Errorf("waiting for the turn: %w", ctx.Err())
	}
}

// TurnOptions are the optional parts of a turn.
type TurnOptions struct {
	// OnDelta, if not nil, receives streamed text from the turn's
	// goroutine; it must not block.
	OnDelta func(chunk string)
	// Then, if not nil, is called once with the turn's outcome, from
	// whichever goroutine answers it; it must not block.
	Then func(session.TurnResult, error)
}

// SubmitTurn validates a turn and hands it to the space's actor without
// waiting: turns submitted one after another to one session run in that
// order.
func (m *Manager) SubmitTurn(userID, spaceID, sessionID, input string, o TurnOptions) (*PendingTurn, error) {
	if err := checkSpaceID(spaceID); err != nil {
		return nil, err
	}
	if input == "" {
		return nil, &session.FieldError{Field: "input", Msg: "is required and must be non-empty"}
	}
	if err := session.ValidText("input", input); err != nil {
		return nil, err
	}
	if m.engine == nil {
		return nil, ErrNoEngine
	}
	if err := m.engine.CheckInput(input); err != nil {
		return nil, err
	}
	tc := &turnCall{userID: userID, sessionID: sessionID, input: input, onDelta: o.OnDelta, then: o.Then, done: make(chan struct{})}
	if err := m.sys.Send(spaceID, tc); err != nil {
		return nil, mapSendErr(err)
	}
	return &PendingTurn{tc: tc}, nil
}

// Turn runs a turn on a session and waits for its result. Turns on one
// session run one at a time in arrival order; at most SessionQueue wait.
// The turn runs to completion (and is persisted) even if ctx ends first:
// ctx only bounds the wait for the result.
func (m *Manager) Turn(ctx context.Context, userID, spaceID, sessionID, input string, onDelta func(string)) (session.TurnResult, error) {
	p, err := m.SubmitTurn(userID, spaceID, sessionID, input, TurnOptions{OnDelta: onDelta})
	if err != nil {
		return session.TurnResult{}, err
	}
	return p.Wait(ctx)
}

func (s *spaceActor) startOrQueue(tc *turnCall) {
	if tc.userID != "" && tc.userID != s.space.UserID {
		tc.fail(session.ErrForbidden)
		return
	}
	n, err := s.writable(tc.sessionID)
	if err != nil {
		tc.fail(err)
		return
	}
	if n.running {
		if len(n.queue) >= s.m.opts.SessionQueue {
			tc.fail(fmt.Errorf("session %s has %d turns waiting: %w", n.meta.ID, len(n.queue), session.ErrBusy))
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
	m := s.m
	s.a.Go(func(ctx context.Context) any {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		start := time.Now()
		res, err := engine.Turn(ctx, req)
		m.observeTurn(time.Since(start), err)
		return &turnDone{call: tc, res: res, err: err}
	}, func(err error) any {
		m.observeTurn(0, err)
		return &turnDone{call: tc, err: err}
	})
}

// forkFunc forks through the actor, exactly as the API does.
func (m *Manager) forkFunc(spaceID, parentID string) func(ctx context.Context, o session.ForkOptions) (session.Meta, error) {
	return func(ctx context.Context, o session.ForkOptions) (session.Meta, error) {
		w := &writeOp{prepare: func(s *spaceActor) (commitFn, applyFn, error) { return s.forkWrite(parentID, o) },
			reply: make(chan result, 1)}
		if !m.sys.Tell(spaceID, w) {
			return session.Meta{}, fmt.Errorf("%w: space %s is not running", ErrUnavailable, spaceID)
		}
		select {
		case r := <-w.reply:
			if r.err != nil {
				return session.Meta{}, r.err
			}
			return r.v.(SessionView).Meta, nil
		case <-ctx.Done():
			return session.Meta{}, fmt.Errorf("waiting for the fork: %w", ctx.Err())
		}
	}
}

func (s *spaceActor) finishTurn(d *turnDone) {
	s.work--
	n, ok := s.tree.nodes[d.call.sessionID]
	if !ok {
		d.call.fail(session.ErrNotFound)
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
	if d.err != nil {
		d.call.fail(d.err)
	} else {
		d.call.succeed(d.res)
	}
	n.running = false
	for len(n.queue) > 0 {
		next := n.queue[0]
		n.queue[0] = nil
		n.queue = n.queue[1:]
		if n.meta.Status == session.StatusArchived {
			s.work--
			next.fail(fmt.Errorf("session %s: %w", n.meta.ID, session.ErrArchived))
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
