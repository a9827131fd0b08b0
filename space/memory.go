package space

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/stellohq/stello/session"
)

// memState is the actor's bookkeeping of background memory work.
type memState struct {
	consolidating map[string]bool // sessions with an automatic consolidation running
	integrating   bool
	again         bool // another integration was asked for while one ran
	scheduled     bool // a debounced integration is pending
}

type memoryKind int

const (
	kindConsolidate memoryKind = iota
	kindIntegrate
)

// memoryDone reports finished memory work.
type memoryDone struct {
	kind      memoryKind
	sessionID string
	auto      bool
	cons      session.ConsolidateResult
	integ     session.IntegrateResult
	err       error
	reply     chan result // nil for automatic work
}

type integrateTick struct{}

// startConsolidation runs a consolidation task. reply nil means automatic:
// then at most one runs per session, and failures are only logged. Its
// span is a child of parent (when valid).
func (s *spaceActor) startConsolidation(n *node, reply chan result, parent trace.SpanContext) {
	auto := reply == nil
	if auto {
		if s.mem.consolidating == nil {
			s.mem.consolidating = map[string]bool{}
		}
		if s.mem.consolidating[n.meta.ID] {
			return
		}
		s.mem.consolidating[n.meta.ID] = true
	}
	s.work++
	sp, st, setup := s.space, session.State{Meta: n.meta, Data: n.data}, s.setup
	engine, timeout := s.m.engine, s.m.opts.MemoryTimeout
	s.task(func(ctx context.Context) any {
		ctx, span := memorySpan(ctx, parent, "consolidate", sp.ID, st.Meta.ID, auto)
		defer span.End()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		res, err := engine.ConsolidateFor(ctx, setup, sp, st)
		memoryFailed(span, err)
		s.m.observeMemory("consolidate", err)
		return &memoryDone{kind: kindConsolidate, sessionID: st.Meta.ID, auto: auto, cons: res, err: err, reply: reply}
	}, func(err error) any {
		s.m.observeMemory("consolidate", err)
		return &memoryDone{kind: kindConsolidate, sessionID: st.Meta.ID, auto: auto, err: err, reply: reply}
	})
}

// startIntegration runs an integration task; reply nil means automatic.
// Its span is a child of parent (when valid).
func (s *spaceActor) startIntegration(reply chan result, parent trace.SpanContext) {
	if reply == nil {
		if s.mem.integrating {
			s.mem.again = true
			return
		}
		s.mem.integrating = true
	}
	s.work++
	sp, root, setup := s.space, session.State{Meta: s.tree.root.meta, Data: s.tree.root.data}, s.setup
	engine, timeout := s.m.engine, s.m.opts.MemoryTimeout
	s.task(func(ctx context.Context) any {
		ctx, span := memorySpan(ctx, parent, "integrate", sp.ID, "", reply == nil)
		defer span.End()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		res, err := engine.IntegrateFor(ctx, setup, sp, root)
		memoryFailed(span, err)
		s.m.observeMemory("integrate", err)
		return &memoryDone{kind: kindIntegrate, auto: reply == nil, integ: res, err: err, reply: reply}
	}, func(err error) any {
		s.m.observeMemory("integrate", err)
		return &memoryDone{kind: kindIntegrate, auto: reply == nil, err: err, reply: reply}
	})
}

// scheduleIntegration debounces integration: a burst of consolidations
// makes one integration.
func (s *spaceActor) scheduleIntegration() {
	if s.mem.scheduled {
		return
	}
	s.mem.scheduled = true
	s.work++
	a := s.a
	time.AfterFunc(s.m.opts.IntegrateDelay, func() { _ = a.Tell(integrateTick{}) }) // Tell cannot panic
}

func (s *spaceActor) maybeIntegrate() {
	if !s.mem.scheduled {
		return
	}
	s.mem.scheduled = false
	s.work--
	s.startIntegration(nil, trace.SpanContext{})
}

func (s *spaceActor) finishMemory(d *memoryDone) {
	s.work--
	switch d.kind {
	case kindConsolidate:
		if d.auto {
			delete(s.mem.consolidating, d.sessionID)
		}
		if d.err != nil {
			s.logErr("consolidation failed", d.err, zap.String("session", d.sessionID), zap.Bool("auto", d.auto))
			break
		}
		n, ok := s.tree.nodes[d.sessionID]
		if ok && d.cons.Changed {
			n.data.Memory = d.cons.Memory
			n.data.MemoryVersion = d.cons.Version
			s.publish(SpaceEvent{Event: EventMemoryUpdated, SessionID: n.meta.ID, Session: viewPtr(n)})
			if n.meta.Role != session.RoleMain {
				s.scheduleIntegration()
			}
		}
	case kindIntegrate:
		if d.auto {
			s.mem.integrating = false
		}
		if d.err != nil {
			s.logErr("integration failed", d.err, zap.Bool("auto", d.auto))
		} else if d.integ.Written {
			syn := d.integ.Synthesis
			s.tree.root.data.Memory = &syn
			s.tree.root.data.MemoryVersion = d.integ.RootVersion
			s.publish(SpaceEvent{Event: EventMemoryUpdated, SessionID: s.tree.root.meta.ID, Session: viewPtr(s.tree.root)})
			for _, in := range d.integ.Insights {
				if n, ok := s.tree.nodes[in.SessionID]; ok {
					c := in.Content
					n.data.Insight = &c
					s.publish(SpaceEvent{Event: EventInsightUpdated, SessionID: n.meta.ID, Session: viewPtr(n)})
				}
			}
		}
		if d.auto && s.mem.again {
			s.mem.again = false
			s.startIntegration(nil, trace.SpanContext{})
		}
	}
	if d.reply != nil {
		var v any
		if d.kind == kindConsolidate {
			v = d.cons
		} else {
			v = d.integ
		}
		select {
		case d.reply <- result{v: v, err: d.err}:
		default:
		}
	}
}

// Consolidate consolidates a session now and waits for the new memory.
func (m *Manager) Consolidate(ctx context.Context, userID, spaceID, sessionID string) (*string, error) {
	reply := make(chan result, 1)
	parent := trace.SpanContextFromContext(ctx)
	if _, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if m.engine == nil {
			return nil, ErrNoEngine
		}
		n, err := s.node(sessionID)
		if err != nil {
			return nil, err
		}
		s.startConsolidation(n, reply, parent)
		return nil, nil
	}); err != nil {
		return nil, err
	}
	select {
	case r := <-reply:
		if r.err != nil {
			return nil, r.err
		}
		return r.v.(session.ConsolidateResult).Memory, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Integrate integrates the space now and waits for the result.
func (m *Manager) Integrate(ctx context.Context, userID, spaceID string) (session.IntegrateResult, error) {
	reply := make(chan result, 1)
	parent := trace.SpanContextFromContext(ctx)
	if _, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if m.engine == nil {
			return nil, ErrNoEngine
		}
		s.startIntegration(reply, parent)
		return nil, nil
	}); err != nil {
		return session.IntegrateResult{}, err
	}
	select {
	case r := <-reply:
		if r.err != nil {
			return session.IntegrateResult{}, r.err
		}
		return r.v.(session.IntegrateResult), nil
	case <-ctx.Done():
		return session.IntegrateResult{}, ctx.Err()
	}
}
