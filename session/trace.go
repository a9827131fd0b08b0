package session

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/stellohq/stello/internal/tracing/spans"
	"github.com/stellohq/stello/llm"
)

var tracer = spans.New("github.com/stellohq/stello/session")

// turnContext assembles a turn's context in a `turn.context` span: the
// history (read from the store unless the caller cached it), a summary of
// older history when over budget (its model call is a child span), and the
// messages of the first model call with the index of the history in them.
func (e *Engine) turnContext(ctx context.Context, req TurnRequest) ([]llm.Message, *History, int, error) {
	ctx, span := tracer.Start(ctx, "turn.context")
	defer span.End()
	hist := req.History
	if hist == nil {
		h, err := e.LoadHistory(ctx, req.Space.ID, req.Session.Meta.ID)
		if err != nil {
			spans.Fail(span, err, "")
			return nil, nil, 0, err
		}
		hist = h
	}
	msgs, out, at, err := e.assemble(ctx, req, hist)
	if err != nil {
		spans.Fail(span, err, "")
		return nil, nil, 0, err
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.Bool("stello.context.history_cached", req.History != nil),
			attribute.Int("stello.context.messages", len(msgs)),
			attribute.Int("stello.context.history_tokens", out.tokens),
			attribute.Bool("stello.context.summarised", out.SummaryThrough != hist.SummaryThrough))
	}
	return msgs, out, at, nil
}

// commitTurn commits a turn in a `turn.commit` span.
func (e *Engine) commitTurn(ctx context.Context, c TurnCommit) (int, []int64, error) {
	ctx, span := tracer.Start(ctx, "turn.commit")
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("stello.commit.records", len(c.Records)), attribute.Bool("stello.commit.turn_log", c.Log != nil))
	}
	turns, ids, err := e.store.CommitTurn(ctx, c)
	spans.Fail(span, err, "")
	return turns, ids, err
}

// callTool runs one tool call of the model in a `turn.tool` span; a
// failure becomes the message the model gets, and marks the span failed.
func (e *Engine) callTool(ctx context.Context, env ToolEnv, tc llm.ToolCall) string {
	ctx, span := tracer.Start(ctx, "turn.tool")
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("gen_ai.tool.name", tc.Name), attribute.String("gen_ai.tool.call.id", tc.ID))
	}
	out, ok := e.tools.Call(ctx, env, tc.Name, tc.Input)
	if !ok {
		span.SetStatus(codes.Error, "the tool failed")
	}
	return out
}
