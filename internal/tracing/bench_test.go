package tracing_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/stellohq/stello/internal/tracing"
	"github.com/stellohq/stello/internal/tracing/spans"
)

// BenchmarkSpan is the cost of one span like a turn's (four attributes):
// with no provider installed, and exported over OTLP/HTTP to a local
// receiver (the batch processor encodes and sends while the loop runs, on
// its own goroutine; only the flush of the last batch is not timed).
//
//	go test -run '^$' -bench BenchmarkSpan ./internal/tracing/
func BenchmarkSpan(b *testing.B) {
	run := func(b *testing.B) {
		ctx := context.Background()
		tr := spans.New("bench")
		b.ReportAllocs()
		for b.Loop() {
			_, span := tr.Start(ctx, "turn")
			if span.IsRecording() {
				span.SetAttributes(spans.SpaceID.String("0197c1d2-0000-7000-8000-000000000001"),
					spans.SessionID.String("0197c1d2-0000-7000-8000-000000000002"),
					spans.TurnID.String("0197c1d2-0000-7000-8000-000000000003"), attribute.Bool("stello.turn.stream", false))
			}
			span.End()
		}
	}
	b.Run("no provider", func(b *testing.B) {
		otel.SetTracerProvider(noop.NewTracerProvider())
		run(b)
	})
	b.Run("exported", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
		defer srv.Close()
		b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
		b.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1000000") // every span is exported, none dropped
		shutdown, err := tracing.Setup(context.Background(), "stello", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			otel.SetTracerProvider(noop.NewTracerProvider())
			otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
		}()
		run(b)
		if err := shutdown(context.Background()); err != nil {
			b.Fatal(err)
		}
	})
}
