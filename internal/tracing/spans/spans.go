// Package spans starts Stello's trace spans with the global OpenTelemetry
// tracer provider. It depends on the OpenTelemetry API only: without a
// provider installed (by internal/tracing, or by a program embedding
// Stello) every span is a no-op that costs next to nothing.
package spans

import (
	"context"
	"reflect"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Attribute keys shared by Stello's spans.
const (
	SpaceID   = attribute.Key("stello.space.id")
	SessionID = attribute.Key("stello.session.id")
	TurnID    = attribute.Key("stello.turn.id")
	// ErrorCode is the API's error code of a failure (e.g. LLM_ERROR).
	ErrorCode = attribute.Key("stello.error.code")
	// ErrorType is OpenTelemetry's error.type.
	ErrorType = attribute.Key("error.type")
)

// Tracer starts spans of one instrumentation scope with whatever provider
// is global when the span starts, so a provider installed (or replaced)
// after the package was initialised is used too.
type Tracer struct {
	scope string
	cur   atomic.Pointer[bound]
}

// bound is the scope's tracer from one provider.
type bound struct {
	tp     trace.TracerProvider
	tracer trace.Tracer
	idle   bool // tp records nothing
}

// New returns the Tracer of an instrumentation scope, e.g.
// "github.com/stellohq/stello/space".
func New(scope string) *Tracer { return &Tracer{scope: scope} }

// Start starts a span; see trace.Tracer. While no provider is installed
// (the global one is OpenTelemetry's default, or a no-op provider) it
// returns ctx as it is and a span that does nothing, without allocating:
// what is in ctx (an incoming trace context) still reaches the spans and
// the propagation below.
func (t *Tracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	b := t.bound()
	if b.idle {
		return ctx, idleSpan
	}
	return b.tracer.Start(ctx, name, opts...)
}

// idleSpan is the span of a provider that records nothing.
var idleSpan = trace.SpanFromContext(context.Background())

func (t *Tracer) bound() *bound {
	tp := otel.GetTracerProvider()
	if b := t.cur.Load(); b != nil && b.tp == tp {
		return b
	}
	b := &bound{tp: tp, tracer: tp.Tracer(t.scope), idle: idle(tp)}
	// A provider of a type that cannot be compared is asked every time:
	// comparing it would panic.
	if reflect.TypeOf(tp).Comparable() {
		t.cur.Store(b)
	}
	return b
}

// idle reports whether tp records nothing: OpenTelemetry's global default
// before a provider is set (its type is unexported), or a no-op provider.
func idle(tp trace.TracerProvider) bool {
	if _, ok := tp.(noop.TracerProvider); ok {
		return true
	}
	return reflect.TypeOf(tp).String() == "*global.tracerProvider"
}

// Fail marks span as failed by err (nothing when err is nil): the error is
// recorded as an event and the status set to Error. code, when not empty,
// is the API's error code, set as stello.error.code and error.type.
func Fail(span trace.Span, err error, code string) {
	if err == nil || !span.IsRecording() {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	if code != "" {
		span.SetAttributes(ErrorCode.String(code), ErrorType.String(code))
	}
}

// Parent returns a context that carries sc as the parent of the spans
// started from it: background work (a turn, memory work) continues the
// trace of the request that asked for it without holding its context.
func Parent(sc trace.SpanContext) context.Context {
	if !sc.IsValid() {
		return context.Background()
	}
	return trace.ContextWithSpanContext(context.Background(), sc)
}
