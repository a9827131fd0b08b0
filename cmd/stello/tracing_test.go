package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace/noop"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/stellohq/stello/pgstore/pgtest"
)

// otelEnv clears every OTEL_* variable, sets env for the test, and puts
// the no-op tracer provider back afterwards.
func otelEnv(t *testing.T, env map[string]string) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, "")
			require.NoError(t, os.Unsetenv(k))
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	t.Cleanup(func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
	})
}

// TestServeExportsTraces runs `stello serve` with OTEL_EXPORTER_OTLP_ENDPOINT
// pointing at an in-process OTLP/HTTP receiver: the spans of its requests
// arrive, flushed when it stops.
func TestServeExportsTraces(t *testing.T) {
	var mu sync.Mutex
	var names, services []string
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(raw, &req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range req.ResourceSpans {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					services = append(services, a.GetValue().GetStringValue())
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					names = append(names, sp.Name)
				}
			}
		}
	}))
	defer rc.Close()
	otelEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL})

	p := startServe(t, "--database-url", pgtest.NewDatabase(t))
	code, body := httpDo(t, http.MethodGet, p.url("/healthz"), "", "")
	require.Equal(t, http.StatusOK, code, body)
	code, _ = httpDo(t, http.MethodGet, p.url("/spaces"), "", "")
	require.Equal(t, http.StatusUnauthorized, code)
	require.NoError(t, p.stop(t))

	mu.Lock()
	defer mu.Unlock()
	assert.Contains(t, names, "GET /healthz")
	assert.Contains(t, names, "GET /spaces")
	assert.Contains(t, services, "stello")
	assert.Contains(t, p.stderr.String(), "tracing: exporting spans over OTLP/HTTP")
}

// TestServeRefusesGRPCTraceProtocol: the binary speaks OTLP over HTTP only,
// and says so instead of sending HTTP to a gRPC port.
func TestServeRefusesGRPCTraceProtocol(t *testing.T) {
	otelEnv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
	var stdout, stderr strings.Builder
	err := run(context.Background(), []string{"serve", "--addr", "127.0.0.1:0", "--llm", "fake",
		"--database-url", "postgres://nobody@127.0.0.1:1/none"}, &stdout, &stderr)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL")
	assert.Equal(t, 1, exitCode(err))
}
