package space

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/apierr"
	"github.com/stellohq/stello/session"
)

// Engine runs the model-driven work; session.Engine satisfies it.
type Engine interface {
	Turn(ctx context.Context, req session.TurnRequest) (session.TurnResult, error)
	ConsolidateFor(ctx context.Context, setup *session.SpaceSetup, sp session.Space, st session.State) (session.ConsolidateResult, error)
	IntegrateFor(ctx context.Context, setup *session.SpaceSetup, sp session.Space, root session.State) (session.IntegrateResult, error)
	// CheckInput refuses an input that can never be sent to the model
	// (larger alone than the context budget).
	CheckInput(input string) error
}

// ErrNoEngine means the server runs without a model.
var ErrNoEngine = fmt.Errorf("no model configured: %w", apierr.ErrUnavailable)

// ifBusy policies.
const (
	IfBusyEnqueue   = "enqueue"
	IfBusyReject    = "reject"
	IfBusyInterrupt = "interrupt"
)

// MaxIdempotencyKey is the longest accepted idempotency key, in characters.
const MaxIdempotencyKey = 255

// TurnOptions are the optional parts of a turn.
type TurnOptions struct {
	// IdempotencyKey makes a repeat of the turn attach to it (while it is
	// queued or running) or return its stored result (once completed).
	IdempotencyKey string
	// IfBusy says what happens when the session already has a turn:
	// enqueue (default), reject or interrupt.
	IfBusy string
	// Follower receives the turn's id, stream and outcome. Its functions
	// must not block.
	Follower Follower
}

// turnCall asks the actor to accept a turn.
type turnCall struct {
	userID    string
	sessionID string
	input     string
	o         TurnOptions
	accepted  chan acceptance   // buffered: the actor never waits
	parent    trace.SpanContext // the submitter's span: the turn's span is its child
}

// acceptance is the actor's answer to a turnCall: the turn's id, or an
// error, or the stored outcome of a completed turn with the same key.
type acceptance struct {
	id     string
	stored *session.TurnLog
	err    error
}

func (t *turnCall) answer(a acceptance) {
	select {
	case t.accepted <- a:
	default:
	}
}

func (t *turnCall) fail(err error) { t.answer(acceptance{err: err}) }

// turnDone reports a finished turn task.
type turnDone struct {
	run *turnRun
	res session.TurnResult
	err error
}

// PendingTurn is a turn the space accepted.
type PendingTurn struct {
	// ID is the turn's id.
	ID string

	once sync.Once
	done chan struct{}
	res  session.TurnResult
	err  error
}

func (p *PendingTurn) set(res session.TurnResult, err error) {
	p.once.Do(func() {
		p.res, p.err = res, err
		close(p.done)
	})
}

// Done is closed when the turn has its outcome.
func (p *PendingTurn) Done() <-chan struct{} { return p.done }

// Result is the turn's outcome; call it after Done is closed.
func (p *PendingTurn) Result() (session.TurnResult, error) {
	<-p.done
	return p.res, p.err
}

// Wait waits for the turn's outcome. ctx bounds the wait only: the turn
// runs to completion (and is persisted) whether or not anyone waits.
func (p *PendingTurn) Wait(ctx context.Context) (session.TurnResult, error) {
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		return session.TurnResult{}, fmt.Errorf("waiting for the turn: %w", ctx.Err())
	}
}

// ValidateTurnOptions checks a turn's options.
func ValidateTurnOptions(o TurnOptions) error {
	switch o.IfBusy {
	case "", IfBusyEnqueue, IfBusyReject, IfBusyInterrupt:
	default:
		return &session.FieldError{Field: "ifBusy", Msg: `must be "enqueue", "reject" or "interrupt"`}
	}
	if utf8.RuneCountInString(o.IdempotencyKey) > MaxIdempotencyKey {
		return &session.FieldError{Field: "idempotencyKey", Msg: fmt.Sprintf("must be at most %d characters", MaxIdempotencyKey)}
	}
	return session.ValidText("idempotencyKey", o.IdempotencyKey)
}

// SubmitTurn validates a turn and hands it to the space's actor, waiting
// only until the actor accepted it (ctx bounds that wait): turns submitted
// one after another to one session run in that order. The returned turn's
// outcome comes later, through Wait or the follower.
func (m *Manager) SubmitTurn(ctx context.Context, userID, spaceID, sessionID, input string, o TurnOptions) (*PendingTurn, error) {
	if err := checkSpaceID(spaceID); err != nil {
		return nil, err
	}
	if strings.TrimSpace(input) == "" {
		return nil, &session.FieldError{Field: "input", Msg: "is required and must be non-empty"}
	}
	if err := session.ValidText("input", input); err != nil {
		return nil, err
	}
	if err := ValidateTurnOptions(o); err != nil {
		return nil, err
	}
	if m.engine == nil {
		return nil, ErrNoEngine
	}
	if err := m.engine.CheckInput(input); err != nil {
		return nil, err
	}
	p := &PendingTurn{done: make(chan struct{})}
	user := o.Follower
	o.Follower.Then = func(res session.TurnResult, err error) {
		p.set(res, err)
		if user.Then != nil {
			user.Then(res, err)
		}
	}
	tc := &turnCall{userID: userID, sessionID: sessionID, input: input, o: o, accepted: make(chan acceptance, 1),
		parent: trace.SpanContextFromContext(ctx)}
	if err := m.sys.Send(spaceID, tc); err != nil {
		return nil, mapSendErr(err)
	}
	var a acceptance
	select {
	case a = <-tc.accepted:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the space to accept the turn: %w", ctx.Err())
	}
	if a.err != nil {
		return nil, a.err
	}
	p.ID = a.id
	if a.stored != nil { // a completed turn with the same key: its result, without the model
		res := a.stored.Result()
		res.TurnID = a.stored.ID
		f := o.Follower
		if user.OnStart != nil {
			user.OnStart(a.stored.ID)
		}
		if user.OnDelta != nil && res.FinalContent != nil && *res.FinalContent != "" {
			user.OnDelta(*res.FinalContent, len([]rune(*res.FinalContent)))
		}
		f.Then(res, nil)
	}
	return p, nil
}

// Turn runs a turn on a session and waits for its result. Turns on one
// session run one at a time in arrival order; at most SessionQueue wait.
// The turn runs to completion (and is persisted) even if ctx ends first:
// ctx only bounds the wait for the result.
func (m *Manager) Turn(ctx context.Context, userID, spaceID, sessionID, input string, onDelta func(string)) (session.TurnResult, error) {
	var f Follower
	if onDelta != nil {
		f.OnDelta = func(chunk string, _ int) { onDelta(chunk) }
	}
	p, err := m.SubmitTurn(ctx, userID, spaceID, sessionID, input, TurnOptions{Follower: f})
	if err != nil {
		return session.TurnResult{}, err
	}
	return p.Wait(ctx)
}

// keyChecked reports the database's answer about an idempotency key.
type keyChecked struct {
	key   string
	log   session.TurnLog
	found bool
	err   error
}

func runKey(sessionID, key string) string { return sessionID + "\x00" + key }

// submit handles a turnCall on the actor.
func (s *spaceActor) submit(tc *turnCall) {
	if tc.userID != "" && tc.userID != s.space.UserID {
		tc.fail(session.ErrForbidden)
		return
	}
	if _, err := s.writable(tc.sessionID); err != nil {
		tc.fail(err)
		return
	}
	key := tc.o.IdempotencyKey
	if key == "" {
		s.enqueue(tc)
		return
	}
	k := runKey(tc.sessionID, key)
	if r := s.keys[k]; r != nil {
		s.attachRepeat(r, tc)
		return
	}
	if waiting, ok := s.keyChecks[k]; ok {
		s.keyChecks[k] = append(waiting, tc)
		return
	}
	if s.m.opts.NoTurnLog {
		s.enqueue(tc)
		return
	}
	// Is there a completed turn with this key? Ask the database, as a task.
	if s.keyChecks == nil {
		s.keyChecks = map[string][]*turnCall{}
	}
	s.keyChecks[k] = []*turnCall{tc}
	s.work++
	store, spaceID, sessionID := s.m.store, s.space.ID, tc.sessionID
	timeout := s.m.opts.WriteTimeout
	s.task(func(ctx context.Context) any {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		l, found, err := store.CompletedTurnByKey(ctx, spaceID, sessionID, key)
		return &keyChecked{key: k, log: l, found: found, err: err}
	}, func(err error) any { return &keyChecked{key: k, err: err} })
}

// attachRepeat makes a repeat of a live turn with the same key follow it.
func (s *spaceActor) attachRepeat(r *turnRun, tc *turnCall) {
	if r.log.Input != tc.input {
		tc.fail(fmt.Errorf("idempotency key %q was used with another input: %w", tc.o.IdempotencyKey, session.ErrConflict))
		return
	}
	if !r.follow(0, tc.o.Follower) {
		tc.fail(fmt.Errorf("%w: the turn ended while attaching", ErrUnavailable))
		return
	}
	tc.answer(acceptance{id: r.log.ID})
}

func (s *spaceActor) finishKeyCheck(d *keyChecked) {
	s.work--
	calls := s.keyChecks[d.key]
	delete(s.keyChecks, d.key)
	for _, tc := range calls {
		switch {
		case d.err != nil:
			tc.fail(d.err)
		case d.found && d.log.Input != tc.input:
			tc.fail(fmt.Errorf("idempotency key %q was used with another input: %w", tc.o.IdempotencyKey, session.ErrConflict))
		case d.found:
			l := d.log
			tc.answer(acceptance{id: l.ID, stored: &l})
		default:
			if _, err := s.writable(tc.sessionID); err != nil {
				tc.fail(err)
			} else if r := s.keys[d.key]; r != nil {
				s.attachRepeat(r, tc)
			} else {
				s.enqueue(tc)
			}
		}
	}
}

// enqueue accepts a new turn: it runs now, or waits behind the session's
// running turn, as its ifBusy policy says.
func (s *spaceActor) enqueue(tc *turnCall) {
	n := s.tree.nodes[tc.sessionID]
	busy := n.current != nil || len(n.queue) > 0
	if busy {
		switch tc.o.IfBusy {
		case IfBusyReject:
			tc.fail(fmt.Errorf("session %s: %w", n.meta.ID, session.ErrSessionBusy))
			return
		case IfBusyInterrupt:
			for _, q := range n.queue {
				s.cancelQueued(q, "cancelled by a newer turn (ifBusy=interrupt)")
			}
			n.queue = nil
			if n.current != nil {
				s.cancelRunning(n.current, nil)
			}
		default:
			if len(n.queue) >= s.m.opts.SessionQueue {
				tc.fail(fmt.Errorf("session %s has %d turns waiting: %w", n.meta.ID, len(n.queue), session.ErrBusy))
				return
			}
		}
	}
	r := &turnRun{node: n, stream: tc.o.Follower.OnDelta != nil, log: session.TurnLog{ID: uuid.Must(uuid.NewV7()).String(), SpaceID: s.space.ID, SessionID: n.meta.ID,
		State: session.TurnQueued, Input: tc.input, IdempotencyKey: tc.o.IdempotencyKey,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}}
	if s.runs == nil {
		s.runs = map[string]*turnRun{}
	}
	s.runs[r.log.ID] = r
	if k := tc.o.IdempotencyKey; k != "" {
		if s.keys == nil {
			s.keys = map[string]*turnRun{}
		}
		s.keys[runKey(n.meta.ID, k)] = r
	}
	r.startSpans(tc.parent)
	r.follow(0, tc.o.Follower)
	tc.answer(acceptance{id: r.log.ID})
	s.work++
	if n.current == nil && len(n.queue) == 0 {
		s.startTurn(n, r)
		return
	}
	n.queue = append(n.queue, r)
}

func (s *spaceActor) startTurn(n *node, r *turnRun) {
	n.current = r
	r.log.State = session.TurnRunning
	cctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	log := r.log
	req := session.TurnRequest{
		Space:   s.space,
		Session: session.State{Meta: n.meta, Data: n.data},
		Input:   r.log.Input,
		Fork:    s.m.forkFunc(s.space.ID, n.meta.ID),
		History: n.hist,
		Setup:   s.setup,
	}
	if !s.m.opts.NoTurnLog {
		req.Log = &log
	}
	if r.stream {
		req.OnDelta = r.push
	}
	engine, timeout := s.m.engine, s.m.opts.TurnTimeout
	m := s.m
	span := r.started()
	s.task(func(ctx context.Context) any {
		if span != nil {
			ctx = trace.ContextWithSpan(ctx, span)
		}
		ctx, cancelTurn := context.WithTimeout(ctx, timeout)
		defer cancelTurn()
		stop := context.AfterFunc(cctx, cancelTurn)
		defer stop()
		start := time.Now()
		res, err := engine.Turn(ctx, req)
		m.observeTurn(time.Since(start), err)
		return &turnDone{run: r, res: res, err: err}
	}, func(err error) any {
		m.observeTurn(0, err)
		return &turnDone{run: r, err: err}
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

// forget removes a finished run from the actor's indexes.
func (s *spaceActor) forget(r *turnRun) {
	delete(s.runs, r.log.ID)
	if k := r.log.IdempotencyKey; k != "" {
		if s.keys[runKey(r.log.SessionID, k)] == r {
			delete(s.keys, runKey(r.log.SessionID, k))
		}
	}
	if r.cancel != nil {
		r.cancel()
	}
}

// failRun ends a run that did not commit: its row goes to the turn log
// (in the background), its followers and cancel waiters are answered.
func (s *spaceActor) failRun(r *turnRun, err error, state string) {
	s.forget(r)
	now := time.Now().UTC().Truncate(time.Millisecond)
	r.log.State = state
	r.log.FinishedAt = &now
	ae := apierr.Classify(err)
	r.log.ErrorCode, r.log.ErrorMessage = ae.Code, ae.Message
	s.logTurn(r.log)
	for _, w := range r.cancelWaiter {
		w(r.log)
	}
	r.cancelWaiter = nil
	r.finish(session.TurnResult{TurnID: r.log.ID}, err)
}

// logTurn writes a failed or cancelled turn's row as a task; a failure is
// logged, never a caller's problem.
func (s *spaceActor) logTurn(l session.TurnLog) {
	if s.m.opts.NoTurnLog {
		return
	}
	// Until its row is written the turn is still answered from memory, so
	// GET …/turns/:id never misses it.
	if s.recent == nil {
		s.recent = map[string]session.TurnLog{}
	}
	s.recent[l.ID] = l
	s.work++
	store, timeout, log := s.m.store, s.m.opts.WriteTimeout, s.m.log
	s.task(func(ctx context.Context) any {
		// Not cut short by the actor stopping: the row is part of the answer.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		if err := store.LogTurn(ctx, l); err != nil && !errors.Is(err, session.ErrNotFound) {
			log.Warn("log turn", zap.String("turn", l.ID), zap.Error(err))
		}
		return turnLogged{id: l.ID}
	}, func(error) any { return turnLogged{id: l.ID} })
}

// turnLogged reports a failed or cancelled turn's row written (or given up).
type turnLogged struct{ id string }

// recentTurn returns a finished turn whose row is still being written.
func (s *spaceActor) recentTurn(id, sessionID string) (session.TurnLog, bool) {
	l, ok := s.recent[id]
	return l, ok && l.SessionID == sessionID
}

// cancelQueued cancels a turn that has not started.
func (s *spaceActor) cancelQueued(r *turnRun, why string) {
	s.work--
	s.failRun(r, fmt.Errorf("%s: %w", why, session.ErrCancelled), session.TurnCancelled)
}

// cancelRunning aborts a running turn's model call; its outcome (cancelled,
// or completed if it committed first) comes with its turnDone.
func (s *spaceActor) cancelRunning(r *turnRun, waiter func(session.TurnLog)) {
	r.cancelled = true
	if waiter != nil {
		r.cancelWaiter = append(r.cancelWaiter, waiter)
	}
	if r.cancel != nil {
		r.cancel()
	}
}

func (s *spaceActor) finishTurn(d *turnDone) {
	s.work--
	r := d.run
	n := r.node
	if n.current == r {
		n.current = nil
	}
	if d.err == nil {
		s.forget(r)
		n.meta.TurnCount = d.res.TurnCount
		n.meta.LastActiveAt = d.res.At
		n.meta.UpdatedAt = d.res.At
		if c := d.res.ConsumedInsight; c != nil && n.data.Insight != nil && *n.data.Insight == *c {
			n.data.Insight = nil
		}
		n.hist = d.res.History
		res := d.res
		res.TurnID = r.log.ID
		at := d.res.At
		r.log.State = session.TurnCompleted
		r.log.FinishedAt = &at
		r.log.FinalContent, r.log.ToolRoundCount = res.FinalContent, res.ToolRoundCount
		r.log.ToolCallsExecuted, r.log.RawResponse = res.ToolCallsExecuted, res.RawResponse
		for _, w := range r.cancelWaiter {
			w(r.log)
		}
		r.cancelWaiter = nil
		s.publish(SpaceEvent{Event: EventTurnCommitted, SessionID: n.meta.ID, TurnID: r.log.ID, Session: viewPtr(n)})
		if !r.stream && res.FinalContent != nil {
			r.push(*res.FinalContent) // followers of a non-streamed turn get its text at the end
		}
		r.finish(res, nil)
	} else if r.cancelled && !errors.Is(d.err, session.ErrConflict) {
		s.failRun(r, fmt.Errorf("%s: %w", "the turn was cancelled while running", session.ErrCancelled), session.TurnCancelled)
	} else {
		s.failRun(r, d.err, session.TurnFailed)
	}
	s.startNext(n)
	if d.err == nil && s.m.opts.ConsolidateEvery > 0 && d.res.TurnCount%s.m.opts.ConsolidateEvery == 0 {
		s.startConsolidation(n, nil, r.spanContext())
	}
}

// startNext starts the session's next queued turn, if any.
func (s *spaceActor) startNext(n *node) {
	if n.current != nil {
		return
	}
	for len(n.queue) > 0 {
		next := n.queue[0]
		n.queue[0] = nil
		n.queue = n.queue[1:]
		if n.meta.Status == session.StatusArchived {
			s.work--
			s.forget(next)
			next.finish(session.TurnResult{TurnID: next.log.ID}, fmt.Errorf("session %s: %w", n.meta.ID, session.ErrArchived))
			continue
		}
		s.startTurn(n, next)
		break
	}
	if len(n.queue) == 0 {
		n.queue = nil
	}
}

func (s *spaceActor) logErr(msg string, err error, fields ...zap.Field) {
	s.logger().Warn(msg, append(fields, zap.Error(err))...)
}

// TurnInfo is a turn as GET …/turns/:id shows it.
type TurnInfo = session.TurnLog

// GetTurn returns a turn of a session: from the actor while it is queued
// or running, else from the turn log.
func (m *Manager) GetTurn(ctx context.Context, userID, spaceID, sessionID, turnID string) (TurnInfo, error) {
	if _, err := parseID(turnID); err != nil {
		return TurnInfo{}, fmt.Errorf("turn %q: %w", turnID, session.ErrNotFound)
	}
	v, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if _, err := s.node(sessionID); err != nil {
			return nil, err
		}
		if r := s.runs[turnID]; r != nil && r.log.SessionID == sessionID {
			return r.log, nil
		}
		if l, ok := s.recentTurn(turnID, sessionID); ok {
			return l, nil
		}
		return nil, nil
	})
	if err != nil {
		return TurnInfo{}, err
	}
	if l, ok := v.(session.TurnLog); ok {
		return l, nil
	}
	return m.store.TurnLog(ctx, spaceID, sessionID, turnID)
}

// cancelPending says the cancel of a running turn waits for its outcome.
type cancelPending struct{}

// CancelTurn cancels a turn: a queued one is dropped at once, a running one
// has its model call aborted. It returns the turn as it ends: cancelled,
// or completed when it committed first (a committed turn is never undone).
func (m *Manager) CancelTurn(ctx context.Context, userID, spaceID, sessionID, turnID string) (TurnInfo, error) {
	if _, err := parseID(turnID); err != nil {
		return TurnInfo{}, fmt.Errorf("turn %q: %w", turnID, session.ErrNotFound)
	}
	reply := make(chan session.TurnLog, 1)
	v, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if _, err := s.node(sessionID); err != nil {
			return nil, err
		}
		r := s.runs[turnID]
		if r == nil || r.log.SessionID != sessionID {
			if l, ok := s.recentTurn(turnID, sessionID); ok {
				return l, nil
			}
			return nil, nil
		}
		if r.log.State == session.TurnQueued {
			n := r.node
			for i, q := range n.queue {
				if q == r {
					n.queue = append(n.queue[:i:i], n.queue[i+1:]...)
					break
				}
			}
			s.cancelQueued(r, "cancelled while queued")
			return r.log, nil
		}
		s.cancelRunning(r, func(l session.TurnLog) {
			select {
			case reply <- l:
			default:
			}
		})
		return cancelPending{}, nil
	})
	if err != nil {
		return TurnInfo{}, err
	}
	switch x := v.(type) {
	case session.TurnLog:
		return x, nil
	case cancelPending:
		select {
		case l := <-reply:
			return l, nil
		case <-ctx.Done():
			return TurnInfo{}, fmt.Errorf("waiting for the turn to stop: %w", ctx.Err())
		}
	}
	return m.store.TurnLog(ctx, spaceID, sessionID, turnID)
}

// FollowTurn attaches f to a turn from code point offset from: a live
// turn sends what it streamed so far after from, then live deltas, then its
// outcome; a finished one sends the rest of its stored reply and its
// outcome at once. OnStart is called first either way.
func (m *Manager) FollowTurn(ctx context.Context, userID, spaceID, sessionID, turnID string, from int, f Follower) error {
	if _, err := parseID(turnID); err != nil {
		return fmt.Errorf("turn %q: %w", turnID, session.ErrNotFound)
	}
	if from < 0 {
		return &session.FieldError{Field: "from", Msg: "must be a non-negative integer"}
	}
	v, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if _, err := s.node(sessionID); err != nil {
			return nil, err
		}
		if r := s.runs[turnID]; r != nil && r.log.SessionID == sessionID && r.follow(from, f) {
			return true, nil
		}
		if l, ok := s.recentTurn(turnID, sessionID); ok {
			return l, nil
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	var l session.TurnLog
	switch x := v.(type) {
	case bool:
		if x {
			return nil
		}
		if l, err = m.store.TurnLog(ctx, spaceID, sessionID, turnID); err != nil {
			return err
		}
	case session.TurnLog:
		l = x
	}
	if f.OnStart != nil {
		f.OnStart(turnID)
	}
	switch l.State {
	case session.TurnCompleted:
		res := l.Result()
		res.TurnID = l.ID
		if fc := res.FinalContent; fc != nil && f.OnDelta != nil {
			if rest := Suffix(*fc, from); rest != "" {
				f.OnDelta(rest, len([]rune(*fc)))
			}
		}
		if f.Then != nil {
			f.Then(res, nil)
		}
	default:
		if f.Then != nil {
			f.Then(session.TurnResult{TurnID: l.ID}, storedError(l))
		}
	}
	return nil
}

// storedError rebuilds the error of a failed or cancelled turn.
func storedError(l session.TurnLog) error {
	if l.State == session.TurnCancelled {
		return fmt.Errorf("%s: %w", strings.TrimSuffix(l.ErrorMessage, "; nothing of it was persisted"), session.ErrCancelled)
	}
	return &apierr.Error{Status: statusOf(l.ErrorCode), Code: l.ErrorCode, Message: l.ErrorMessage}
}

func statusOf(code string) int {
	switch code {
	case "LLM_ERROR":
		return 502
	case "TIMEOUT":
		return 504
	case "UNAVAILABLE":
		return 503
	case "CONFLICT", "SESSION_ARCHIVED", "CANCELLED", "SESSION_BUSY":
		return 409
	case "BAD_REQUEST":
		return 400
	case "NOT_FOUND":
		return 404
	}
	return 500
}
