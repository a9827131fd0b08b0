// Package tracing installs the OpenTelemetry SDK for `stello serve`: spans
// are exported over OTLP/HTTP when the standard OTEL_* environment asks for
// it, and nothing is installed otherwise. Stello's own code starts its spans
// with the global provider (internal/tracing/spans), so a program embedding
// Stello installs its own provider instead and never calls Setup.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.uber.org/zap"
)

// Enabled reports whether the environment asks for trace export, and why
// not when it does not: OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none
// turn it off; OTEL_TRACES_EXPORTER=otlp, or an OTLP endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) with
// OTEL_TRACES_EXPORTER unset, turn it on. An exporter other than otlp is
// not supported and is ignored with a warning.
func Enabled() (on bool, ignored []string) {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	list := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER"))
	if list == "" {
		return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	}
	for _, e := range strings.Split(list, ",") {
		switch e = strings.ToLower(strings.TrimSpace(e)); e {
		case "none":
			return false, nil
		case "otlp":
			on = true
		case "":
		default:
			ignored = append(ignored, e)
		}
	}
	return on, ignored
}

// Setup installs, when the environment asks for it (see Enabled), a global
// tracer provider that exports every span over OTLP/HTTP through a batch
// span processor, and the W3C trace context and baggage propagator. The
// exporter reads the standard variables itself (OTEL_EXPORTER_OTLP_[TRACES_]
// ENDPOINT, HEADERS, TIMEOUT, COMPRESSION, CERTIFICATE, INSECURE, PROTOCOL
// http/protobuf or http/json), the SDK the sampler (OTEL_TRACES_SAMPLER) and
// the batching (OTEL_BSP_*); the resource is serviceName, overridden by
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. The gRPC protocol is
// refused: this binary speaks OTLP over HTTP only.
//
// Otherwise it changes nothing: the global provider stays the no-op one
// (or whatever the process installed) and the returned shutdown does
// nothing. shutdown flushes the spans not yet exported and stops the
// exporter; call it once, after the server stopped.
func Setup(ctx context.Context, serviceName string, log *zap.Logger) (shutdown func(context.Context) error, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	noop := func(context.Context) error { return nil }
	on, ignored := Enabled()
	if len(ignored) > 0 {
		log.Warn("tracing: OTEL_TRACES_EXPORTER names exporters this server does not have; only otlp is supported",
			zap.Strings("ignored", ignored))
	}
	if !on {
		return noop, nil
	}
	if err := checkProtocol(); err != nil {
		return noop, err
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return noop, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(serviceName)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
		resource.WithFromEnv(), // last: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil {
		if !errors.Is(err, resource.ErrPartialResource) || res == nil {
			_ = exp.Shutdown(ctx)
			return noop, fmt.Errorf("tracing: resource: %w", err)
		}
		log.Warn("tracing: part of the resource could not be read", zap.Error(err))
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetErrorHandler(errorLogger(log))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	log.Info("tracing: exporting spans over OTLP/HTTP", zap.String("endpoint", endpoint()),
		zap.String("service", serviceOf(res, serviceName)))
	return tp.Shutdown, nil
}

// checkProtocol refuses the gRPC protocol (and anything unknown), which
// the HTTP exporter would otherwise quietly replace with http/protobuf
// against what is likely a gRPC port.
func checkProtocol() error {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		v, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		switch strings.TrimSpace(v) {
		case "", "http/protobuf", "http/json":
			return nil
		default:
			return fmt.Errorf("tracing: %s=%q is not supported: stello exports traces over OTLP/HTTP only "+
				"(http/protobuf or http/json); point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (usually 4318)", name, v)
		}
	}
	return nil
}

// endpoint describes where spans go, without credentials.
func endpoint() string {
	v := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if v == "" {
		v = os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if v == "" {
		return "default (localhost:4318)"
	}
	u, err := url.Parse(v)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func serviceOf(res *resource.Resource, def string) string {
	if v, ok := res.Set().Value(semconv.ServiceNameKey); ok {
		return v.AsString()
	}
	return def
}

// errorLogger logs the SDK's errors (failed exports, mostly) at warn, at
// most one every 10 seconds: a collector that is down must not flood the
// log.
func errorLogger(log *zap.Logger) otel.ErrorHandler {
	var last atomic.Int64
	var dropped atomic.Int64
	return otel.ErrorHandlerFunc(func(err error) {
		now := time.Now().UnixNano()
		prev := last.Load()
		if prev != 0 && now-prev < int64(10*time.Second) || !last.CompareAndSwap(prev, now) {
			dropped.Add(1)
			return
		}
		log.Warn("tracing", zap.Error(err), zap.Int64("suppressed", dropped.Swap(0)))
	})
}
