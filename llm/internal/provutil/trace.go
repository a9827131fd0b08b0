package provutil

import (
	"context"
	"errors"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/stellohq/stello/internal/tracing/spans"
	"github.com/stellohq/stello/llm"
)

var tracer = spans.New("github.com/stellohq/stello/llm")

// clientSpan are the options of a model call's span, made once.
var clientSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}

// Span names of a model call.
const (
	SpanComplete = "llm.complete"
	SpanStream   = "llm.stream"
)

// StartCall starts the span of one model call (SpanComplete or
// SpanStream), a client span with the OpenTelemetry GenAI attributes of
// the request; EndCall ends it.
func StartCall(ctx context.Context, name, provider, model string, req llm.Request) (context.Context, trace.Span) {
	ctx, span := tracer.Start(ctx, name, clientSpan...)
	if !span.IsRecording() {
		return ctx, span
	}
	attrs := []attribute.KeyValue{
		attribute.String("gen_ai.operation.name", "chat"),
		attribute.String("gen_ai.provider.name", provider),
		attribute.String("gen_ai.request.model", model),
		attribute.Int("stello.llm.messages", len(req.Messages)),
	}
	if req.MaxTokens > 0 {
		attrs = append(attrs, attribute.Int("gen_ai.request.max_tokens", req.MaxTokens))
	}
	if len(req.Tools) > 0 {
		attrs = append(attrs, attribute.Int("stello.llm.tools", len(req.Tools)))
	}
	if req.Format == llm.FormatJSON {
		attrs = append(attrs, attribute.String("gen_ai.output.type", "json"))
	}
	span.SetAttributes(attrs...)
	return ctx, span
}

// FirstDelta wraps a stream's onDelta to add the event "first_chunk" to
// span when the first delta arrives (the time to the first token).
func FirstDelta(span trace.Span, onDelta func(llm.Delta) error) func(llm.Delta) error {
	if onDelta == nil || !span.IsRecording() {
		return onDelta
	}
	first := true
	return func(d llm.Delta) error {
		if first {
			first = false
			span.AddEvent("first_chunk")
		}
		return onDelta(d)
	}
}

// EndCall ends a model call's span: token usage (when the provider reported
// it) and the number of tool calls on success, the error otherwise.
func EndCall(span trace.Span, resp *llm.Response, err error) {
	defer span.End()
	if !span.IsRecording() {
		return
	}
	if err != nil {
		spans.Fail(span, err, "")
		var pe *llm.ProviderError
		switch {
		case errors.As(err, &pe) && pe.Timeout:
			span.SetAttributes(spans.ErrorType.String("timeout"))
		case errors.As(err, &pe) && pe.Status != 0:
			span.SetAttributes(spans.ErrorType.String(strconv.Itoa(pe.Status)), attribute.Int("http.response.status_code", pe.Status))
		case errors.Is(err, context.Canceled):
			span.SetAttributes(spans.ErrorType.String("canceled"))
		default:
			span.SetAttributes(spans.ErrorType.String("provider_error"))
		}
		return
	}
	if resp == nil {
		return
	}
	if u := resp.Usage; u.InputTokens > 0 || u.OutputTokens > 0 {
		span.SetAttributes(attribute.Int("gen_ai.usage.input_tokens", u.InputTokens),
			attribute.Int("gen_ai.usage.output_tokens", u.OutputTokens))
	}
	if n := len(resp.ToolCalls); n > 0 {
		span.SetAttributes(attribute.Int("stello.llm.tool_calls", n))
	}
}
