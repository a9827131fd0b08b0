package spans_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/internal/tracing/spans"
)

func TestMain(m *testing.M) { leakcheck.Main(m, nil) }

var incoming = trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2},
	TraceFlags: trace.FlagsSampled, Remote: true})

// Without a provider a span costs no allocation, and the trace context
// already in ctx goes on unchanged.
func TestStartWithoutProvider(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func()
	}{
		{"default", func() {}}, // the first test: nothing is installed yet
		{"noop", func() { otel.SetTracerProvider(noop.NewTracerProvider()) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.set()
			tr := spans.New("test")
			ctx := trace.ContextWithRemoteSpanContext(context.Background(), incoming)
			var out context.Context
			var span trace.Span
			allocs := testing.AllocsPerRun(100, func() {
				out, span = tr.Start(ctx, "work")
				span.End()
			})
			assert.Zero(t, allocs)
			assert.False(t, span.IsRecording())
			assert.Equal(t, incoming, trace.SpanContextFromContext(out))
		})
	}
}

// A Tracer follows the global provider: one installed after the Tracer
// was made, and another one after that.
func TestStartFollowsProvider(t *testing.T) {
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()) })
	tr := spans.New("test")
	var recs [2]*tracetest.SpanRecorder
	for i := range recs {
		recs[i] = tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recs[i]))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		otel.SetTracerProvider(tp)
		ctx, span := tr.Start(trace.ContextWithRemoteSpanContext(context.Background(), incoming), "work")
		require.True(t, span.IsRecording())
		_, child := tr.Start(ctx, "child")
		child.End()
		span.End()
	}
	for _, rec := range recs {
		ended := rec.Ended()
		require.Len(t, ended, 2)
		assert.Equal(t, "child", ended[0].Name())
		assert.Equal(t, ended[1].SpanContext().SpanID(), ended[0].Parent().SpanID())
		assert.Equal(t, incoming.TraceID(), ended[1].SpanContext().TraceID())
		assert.Equal(t, incoming.SpanID(), ended[1].Parent().SpanID())
		assert.Equal(t, "test", ended[1].InstrumentationScope().Name)
	}
}

func TestFail(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	tr := tp.Tracer("test")

	_, ok := tr.Start(context.Background(), "ok")
	spans.Fail(ok, nil, "X")
	ok.End()
	_, bad := tr.Start(context.Background(), "bad")
	spans.Fail(bad, errors.New("it broke"), "LLM_ERROR")
	bad.End()

	ended := rec.Ended()
	require.Len(t, ended, 2)
	assert.Equal(t, codes.Unset, ended[0].Status().Code)
	assert.Empty(t, ended[0].Events())
	assert.Equal(t, codes.Error, ended[1].Status().Code)
	assert.Equal(t, "it broke", ended[1].Status().Description)
	require.Len(t, ended[1].Events(), 1)
	assert.Equal(t, "exception", ended[1].Events()[0].Name)
	attrs := map[string]string{}
	for _, a := range ended[1].Attributes() {
		attrs[string(a.Key)] = a.Value.AsString()
	}
	assert.Equal(t, "LLM_ERROR", attrs["stello.error.code"])
	assert.Equal(t, "LLM_ERROR", attrs["error.type"])
}
