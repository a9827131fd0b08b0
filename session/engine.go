package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stellohq/stello/llm"
)

// Store is the storage the engine needs; pgstore.Store satisfies it.
type Store interface {
	RecordsAfter(ctx context.Context, spaceID, sessionID string, after int64) ([]Record, error)
	CommitTurn(ctx context.Context, c TurnCommit) (int, []int64, error)
	MemoryState(ctx context.Context, spaceID, sessionID string) (MemoryState, error)
	WriteConsolidation(ctx context.Context, spaceID, sessionID, memory string, expect, through int64) (int64, bool, error)
	WriteIntegration(ctx context.Context, spaceID, rootID, synthesis string, expect int64, insights []Insight) (int64, []string, bool, error)
	ChildMemories(ctx context.Context, spaceID string) ([]ChildMemory, error)
	SaveSummary(ctx context.Context, spaceID, sessionID, summary string, through int64) error
}

// Options tune the engine.
type Options struct {
	// MaxContextTokens is the budget of one model call (default 32000).
	MaxContextTokens int
	// MaxToolRounds bounds the tool loop of one turn (default 5).
	MaxToolRounds int
	// MaxTokens is the max output tokens of one call (0: provider default).
	MaxTokens int
}

// Engine runs turns, consolidation and integration.
type Engine struct {
	store Store
	llm   llm.Client
	// enc is llm when it takes pre-encoded histories, else nil.
	enc   llm.HistoryEncoder
	tools *Registry
	opts  Options
	// nulStripped counts NUL characters removed from model output.
	nulStripped *atomic.Uint64 // shared by the per-space copies of the engine
	setup       *SpaceSetup    // the space's setup, on a copy made by with
}

// NewEngine returns an engine; tools nil means the built-in tools.
func NewEngine(store Store, client llm.Client, tools *Registry, opts Options) *Engine {
	if tools == nil {
		tools = DefaultRegistry()
	}
	if opts.MaxContextTokens <= 0 {
		opts.MaxContextTokens = 32000
	}
	if opts.MaxToolRounds <= 0 {
		opts.MaxToolRounds = 5
	}
	enc, _ := client.(llm.HistoryEncoder)
	return &Engine{store: store, llm: client, enc: enc, tools: tools, opts: opts, nulStripped: new(atomic.Uint64)}
}

// NULStripped is how many NUL characters (U+0000) the engine has removed
// from model output (replies, tool calls, summaries and memory work) since
// it started. PostgreSQL's text and jsonb cannot store NUL, so output is
// stored without them rather than failing the commit.
func (e *Engine) NULStripped() uint64 { return e.nulStripped.Load() }

// Collectors returns the engine's metrics for a Prometheus registry:
// stello_llm_nul_stripped_total.
func (e *Engine) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "stello_llm_nul_stripped_total",
			Help: "NUL characters removed from model output before it was stored."},
			func() float64 { return float64(e.nulStripped.Load()) }),
	}
}

// Tools returns the engine's tool registry, to which embedders may add.
func (e *Engine) Tools() *Registry { return e.tools }

// TurnRequest is one turn, with a snapshot of the space and session taken by
// the space actor when the turn started.
type TurnRequest struct {
	Space   Space
	Session State
	Input   string
	// OnDelta receives streamed text; nil for a non-streaming turn. It must
	// not block.
	OnDelta func(chunk string)
	// Fork forks a child of this session (for the built-in tool).
	Fork func(ctx context.Context, o ForkOptions) (Meta, error)
	// History is the caller's cached history of the session (records since
	// the cached summary); nil makes the engine read it from the store.
	// The engine never modifies it.
	History *History
	// Log, if not nil, is the turn's row in the turn log; it commits with
	// the turn.
	Log *TurnLog
	// Setup is the space's setup (model, extra tools, default prompts);
	// nil means none.
	Setup *SpaceSetup
}

// History is a session's conversation as the model sees it: the summary of
// older records and every record after it.
type History struct {
	Summary        *string
	SummaryThrough int64
	Records        []Record

	// The model's view, computed once (see prepare). msgs lies in room
	// after viewPrefix slots, so that a turn's messages are the view
	// itself with its head in front (see assemble).
	clean  []Record
	msgs   []llm.Message
	room   []llm.Message
	tokens int
	ready  bool
	// wire is msgs in the model provider's wire format, when the provider
	// takes a pre-encoded history (llm.HistoryEncoder): built with the
	// model view, extended with it per turn, and dropped with it.
	wire *llm.Encoded
}

// TurnResult is the outcome of a committed turn.
type TurnResult struct {
	// TurnID is the turn's id (set by whoever scheduled the turn).
	TurnID            string
	FinalContent      *string
	ToolRoundCount    int
	ToolCallsExecuted int
	RawResponse       string
	// TurnCount is the session's turn count after the commit.
	TurnCount int
	// ConsumedInsight is the insight shown to the model, now cleared.
	ConsumedInsight *string
	At              time.Time
	// History is the session's history after this turn, for the caller's
	// cache.
	History *History
}

// Turn runs one turn: it assembles the context, calls the model, runs the
// tool loop and commits everything in one transaction. On any error nothing
// of the turn is persisted.
func (e *Engine) Turn(ctx context.Context, req TurnRequest) (TurnResult, error) {
	e = e.with(req.Setup)
	if strings.TrimSpace(req.Input) == "" {
		return TurnResult{}, &FieldError{Field: "input", Msg: "is required and must be non-empty"}
	}
	msgs, hist, histAt, err := e.turnContext(ctx, req)
	if err != nil {
		return TurnResult{}, err
	}
	now := time.Now().UTC()
	recs := []Record{{Role: llm.RoleUser, Content: req.Input, CreatedAt: now}}
	env := ToolEnv{SpaceID: req.Space.ID, SessionID: req.Session.Meta.ID, Fork: req.Fork}
	tools := e.tools.Definitions()
	var res TurnResult
	for {
		call := llm.Request{Messages: msgs, Tools: tools, MaxTokens: e.opts.MaxTokens, History: hist.wire, HistoryAt: histAt}
		resp, err := e.call(ctx, call, req.OnDelta)
		if err != nil {
			return TurnResult{}, ctxErr(ctx, err)
		}
		res.RawResponse = resp.Raw
		if len(resp.ToolCalls) == 0 {
			content := resp.Content
			res.FinalContent = &content
			recs = append(recs, Record{Role: llm.RoleAssistant, Content: content})
			break
		}
		if res.ToolRoundCount >= e.opts.MaxToolRounds {
			return TurnResult{}, fmt.Errorf("the model asked for tool round %d, over the limit of %d: %w",
				res.ToolRoundCount+1, e.opts.MaxToolRounds, ErrToolLimit)
		}
		res.ToolRoundCount++
		calls := normaliseCalls(resp.ToolCalls, res.ToolRoundCount)
		asst := llm.Message{Role: llm.RoleAssistant, Content: resp.Content, ToolCalls: calls}
		msgs = append(msgs, asst)
		recs = append(recs, Record{Role: llm.RoleAssistant, Content: resp.Content, ToolCalls: calls})
		for _, tc := range calls {
			out := e.callTool(ctx, env, tc)
			res.ToolCallsExecuted++
			msgs = append(msgs, llm.Message{Role: llm.RoleTool, Content: out, ToolCallID: tc.ID})
			recs = append(recs, Record{Role: llm.RoleTool, Content: out, ToolCallID: tc.ID})
		}
		if err := ctx.Err(); err != nil {
			return TurnResult{}, ctxErr(ctx, err)
		}
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	for i := range recs {
		recs[i].CreatedAt = at
	}
	turns, ids, err := e.commitTurn(ctx, TurnCommit{SpaceID: req.Space.ID, SessionID: req.Session.Meta.ID,
		Records: recs, ConsumedInsight: req.Session.Data.Insight, At: at, Log: req.Log.completed(res, at)})
	if err != nil {
		return TurnResult{}, ctxErr(ctx, err)
	}
	for i := range recs {
		recs[i].ID = ids[i]
	}
	// Appending never changes the records the caller's cache holds: it
	// writes past their length, and turns on a session are serial.
	res.History = hist.withTurn(recs, e.enc)
	res.TurnCount = turns
	res.ConsumedInsight = req.Session.Data.Insight
	res.At = at
	return res, nil
}

// LoadHistory reads a session's summary and the records after it.
func (e *Engine) LoadHistory(ctx context.Context, spaceID, sessionID string) (*History, error) {
	ms, err := e.store.MemoryState(ctx, spaceID, sessionID)
	if err != nil {
		return nil, err
	}
	recs, err := e.store.RecordsAfter(ctx, spaceID, sessionID, ms.SummaryThrough)
	if err != nil {
		return nil, err
	}
	return &History{Summary: ms.Summary, SummaryThrough: ms.SummaryThrough, Records: recs}, nil
}

// normaliseCalls gives every call an id and valid JSON input, so that the
// stored history always pairs a call with its result.
func normaliseCalls(calls []llm.ToolCall, round int) []llm.ToolCall {
	out := make([]llm.ToolCall, len(calls))
	for i, c := range calls {
		if c.ID == "" {
			c.ID = fmt.Sprintf("call_r%d_%d", round, i)
		}
		if len(c.Input) == 0 || !json.Valid(c.Input) {
			c.Input = json.RawMessage("{}")
		}
		out[i] = c
	}
	return out
}

// ctxErr reports a deadline as a timeout whatever layer noticed it.
func ctxErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, llm.ErrTimeout) {
		return fmt.Errorf("turn deadline exceeded: %w: %w", llm.ErrTimeout, err)
	}
	return err
}

// call runs one model call; the reply comes back without NUL characters
// (see NULStripped), and so do the streamed chunks.
func (e *Engine) call(ctx context.Context, req llm.Request, onDelta func(string)) (*llm.Response, error) {
	var resp *llm.Response
	var err error
	if onDelta == nil {
		resp, err = e.llm.Complete(ctx, req)
	} else {
		resp, err = e.llm.Stream(ctx, req, func(d llm.Delta) error {
			if t, _ := stripNUL(d.Text); t != "" {
				onDelta(t)
			}
			return nil
		})
	}
	if err != nil {
		return nil, err
	}
	e.clean(resp)
	return resp, nil
}

// clean removes NUL characters from a reply, counting them.
func (e *Engine) clean(resp *llm.Response) {
	var n, k int
	resp.Content, n = stripNUL(resp.Content)
	for i := range resp.ToolCalls {
		tc := &resp.ToolCalls[i]
		tc.ID, k = stripNUL(tc.ID)
		n += k
		tc.Name, k = stripNUL(tc.Name)
		n += k
		tc.Input, k = stripJSONNUL(tc.Input)
		n += k
	}
	if n > 0 {
		e.nulStripped.Add(uint64(n))
	}
}

// stripNUL returns s without NUL characters and how many there were.
func stripNUL(s string) (string, int) {
	n := strings.Count(s, "\x00")
	if n == 0 {
		return s, 0
	}
	return strings.ReplaceAll(s, "\x00", ""), n
}

// stripJSONNUL removes NUL characters from JSON text: raw NUL bytes and
// NULs escaped as \u0000 inside strings (PostgreSQL's jsonb rejects
// those too). Invalid JSON is only stripped of raw NUL bytes.
func stripJSONNUL(in json.RawMessage) (json.RawMessage, int) {
	n := bytes.Count(in, []byte{0})
	if n > 0 {
		in = bytes.ReplaceAll(in, []byte{0}, nil)
	}
	if !bytes.Contains(in, []byte(`\u0000`)) {
		return in, n
	}
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return in, n
	}
	k := 0
	v = stripValue(v, &k)
	if k == 0 {
		return in, n // a literal backslash followed by u0000, not a NUL
	}
	out, err := json.Marshal(v)
	if err != nil {
		return in, n
	}
	return out, n + k
}

func stripValue(v any, n *int) any {
	switch x := v.(type) {
	case string:
		s, k := stripNUL(x)
		*n += k
		return s
	case []any:
		for i := range x {
			x[i] = stripValue(x[i], n)
		}
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for key, val := range x {
			clean, k := stripNUL(key)
			*n += k
			out[clean] = stripValue(val, n)
		}
		return out
	}
	return v
}

// complete is a plain text call for memory work; think blocks are stripped.
func (e *Engine) complete(ctx context.Context, system, user string, format llm.Format) (string, error) {
	resp, err := e.llm.Complete(ctx, llm.Request{Messages: []llm.Message{
		{Role: llm.RoleSystem, Content: system}, {Role: llm.RoleUser, Content: user}}, MaxTokens: e.opts.MaxTokens, Format: format})
	if err != nil {
		return "", err
	}
	e.clean(resp)
	return llm.StripThink(resp.Content), nil
}
