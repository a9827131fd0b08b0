package space

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/stellohq/stello/internal/apierr"
	"github.com/stellohq/stello/internal/tracing/spans"
	"github.com/stellohq/stello/session"
)

var tracer = spans.New("github.com/stellohq/stello/space")

// startSpans starts a turn's `turn` span, a child of the span that
// submitted it (parent; the request's or WebSocket message's), and its
// `turn.queue_wait` span, which ends when the turn starts. Called on the
// actor when the turn is accepted.
func (r *turnRun) startSpans(parent trace.SpanContext) {
	ctx, span := tracer.Start(spans.Parent(parent), "turn")
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(spans.SpaceID.String(r.log.SpaceID), spans.SessionID.String(r.log.SessionID),
		spans.TurnID.String(r.log.ID), attribute.Bool("stello.turn.stream", r.stream))
	if r.log.IdempotencyKey != "" {
		span.SetAttributes(attribute.Bool("stello.turn.idempotency_key", true))
	}
	r.span = span
	_, r.wait = tracer.Start(ctx, "turn.queue_wait")
}

// started ends the queue wait and returns the turn's span, the parent of
// the work of the turn's task (nil when the turn is not traced). Called on
// the actor when the turn starts.
func (r *turnRun) started() trace.Span {
	if r.wait != nil {
		r.wait.End()
		r.wait = nil
	}
	return r.span
}

// endSpans ends the turn's spans with its outcome. Called once, by finish.
func (r *turnRun) endSpans(res session.TurnResult, err error) {
	if r.span == nil {
		return
	}
	if r.wait != nil {
		r.wait.End() // a turn that never started
		r.wait = nil
	}
	switch {
	case err == nil:
		r.span.SetAttributes(attribute.String("stello.turn.state", session.TurnCompleted),
			attribute.Int("stello.turn.tool_rounds", res.ToolRoundCount))
	case errors.Is(err, session.ErrCancelled):
		r.span.SetAttributes(attribute.String("stello.turn.state", session.TurnCancelled))
	default:
		r.span.SetAttributes(attribute.String("stello.turn.state", session.TurnFailed))
		spans.Fail(r.span, err, apierr.Classify(err).Code)
	}
	r.span.End()
}

// spanContext is the turn's span context (not valid when not traced).
func (r *turnRun) spanContext() trace.SpanContext {
	if r.span == nil {
		return trace.SpanContext{}
	}
	return r.span.SpanContext()
}

// memorySpan starts the span of a consolidation or integration task:
// a child of parent (the request that asked for it, or the turn after
// which it runs) or, for a debounced integration, a trace of its own.
func memorySpan(ctx context.Context, parent trace.SpanContext, name, spaceID, sessionID string, auto bool) (context.Context, trace.Span) {
	if parent.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, parent)
	}
	ctx, span := tracer.Start(ctx, name)
	if span.IsRecording() {
		span.SetAttributes(spans.SpaceID.String(spaceID), attribute.Bool("stello.memory.auto", auto))
		if sessionID != "" {
			span.SetAttributes(spans.SessionID.String(sessionID))
		}
	}
	return ctx, span
}

// memoryFailed marks a memory task's span failed by err (if not nil).
func memoryFailed(span trace.Span, err error) {
	if err != nil {
		spans.Fail(span, err, apierr.Classify(err).Code)
	}
}
