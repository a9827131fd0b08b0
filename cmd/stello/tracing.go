package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/tracing"
)

// tracingFlushTimeout bounds the export of the last spans at exit.
const tracingFlushTimeout = 5 * time.Second

// startTracing installs the OTLP trace exporter when the OTEL_* environment
// asks for it (see internal/tracing). stop flushes the spans still
// buffered, within tracingFlushTimeout; call it after the server stopped.
func startTracing(ctx context.Context, log *zap.Logger) (stop func(), err error) {
	shutdown, err := tracing.Setup(ctx, "stello", log)
	if err != nil {
		return nil, err
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), tracingFlushTimeout)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			log.Warn("tracing: flushing the last spans", zap.Error(err))
		}
	}, nil
}
