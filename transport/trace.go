package transport

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/stellohq/stello/internal/tracing/spans"
)

var tracer = spans.New("github.com/stellohq/stello/transport")

// serverSpan are the options of a server span, made once: starting a span
// that nobody records then costs only what the provider itself takes.
var serverSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}

// trace gives every request a server span, named by its method and the
// matched route pattern (e.g. `POST /spaces/{spaceId}/sessions/{id}/turn`),
// continuing the trace of an incoming W3C traceparent header when the
// global propagator reads one. Work the request starts (a turn) becomes
// part of that trace. Without a tracer provider the request passes through
// untouched.
func (s *Server) trace(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		method := methodLabel(r.Method)
		name := method
		if method == "other" {
			method, name = "_OTHER", "HTTP"
		}
		ctx, span := tracer.Start(ctx, name, serverSpan...)
		if !span.IsRecording() {
			if trace.SpanContextFromContext(ctx).IsValid() {
				r = r.WithContext(ctx) // an incoming trace goes on through a provider that does not record
			}
			next.ServeHTTP(w, r)
			return
		}
		defer span.End()
		span.SetAttributes(semconv.HTTPRequestMethodKey.String(method), semconv.URLPath(r.URL.Path))
		sw := recording(w)
		r = r.WithContext(ctx)
		next.ServeHTTP(sw, r)
		span.SetAttributes(semconv.HTTPResponseStatusCode(sw.status))
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route := rc.RoutePattern()
			span.SetName(name + " " + route)
			span.SetAttributes(semconv.HTTPRoute(route))
			if id := rc.URLParam("spaceId"); id != "" {
				span.SetAttributes(spans.SpaceID.String(id))
			}
			if id := rc.URLParam("id"); id != "" {
				span.SetAttributes(spans.SessionID.String(id))
			}
		}
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
			span.SetAttributes(spans.ErrorType.String(strconv.Itoa(sw.status)))
		}
	})
}

// wsMessageTypes are the client message types that name a span; any other
// is "WS unknown".
var wsMessageTypes = map[string]bool{"session.enter": true, "session.leave": true, "session.message": true,
	"session.stream": true, "turn.attach": true, "turn.cancel": true, "space.subscribe": true, "session.fork": true}

// messageSpan starts the span of one WebSocket message (e.g.
// `WS session.stream`): the root of a trace of its own, linked to the
// span of the upgrade request, since a connection lives far longer than
// one trace should. A turn the message starts is its child. The span ends
// when the message was handled (a turn: accepted); c.fail marks it failed.
// Called on the reader goroutine only.
func (c *wsConn) messageSpan(typ string) (context.Context, trace.Span) {
	name := "WS unknown"
	if wsMessageTypes[typ] {
		name = "WS " + typ
	}
	ctx, span := tracer.Start(context.Background(), name, serverSpan...)
	if !span.IsRecording() {
		return ctx, span
	}
	c.span = span
	if c.upgrade != nil {
		span.AddLink(trace.Link{SpanContext: *c.upgrade})
	}
	span.SetAttributes(attribute.String("stello.ws.message_type", typ), spans.SpaceID.String(c.spaceID))
	if c.entered != "" {
		span.SetAttributes(spans.SessionID.String(c.entered))
	}
	return ctx, span
}

// upgradeSpan is the span context of a WebSocket upgrade request, nil
// when it has none (then an idle connection holds no copy of it).
func upgradeSpan(r *http.Request) *trace.SpanContext {
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
		return &sc
	}
	return nil
}

// endMessageSpan ends the span of the message handled.
func (c *wsConn) endMessageSpan(span trace.Span) {
	c.span = nil
	span.End()
}

// failSpan marks the span of the message being handled as failed with an
// error code.
func (c *wsConn) failSpan(code, msg string) {
	if c.span != nil {
		spans.Fail(c.span, errors.New(msg), code)
	}
}
