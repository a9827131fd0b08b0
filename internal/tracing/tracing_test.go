package tracing_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/internal/tracing"
	"github.com/stellohq/stello/pgstore/pgtest"
	"github.com/stellohq/stello/space"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }

// wait bounds every wait for an eventual state.
const wait = 10 * time.Second

// clearOTEL unsets every OTEL_* variable for the test.
func clearOTEL(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, "")
			require.NoError(t, os.Unsetenv(k))
		}
	}
}

// restoreGlobals puts the no-op provider and an empty propagator back
// after a test that installed the SDK.
func restoreGlobals(t *testing.T) {
	t.Cleanup(func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
	})
}

// receiver is an OTLP/HTTP collector: it accepts POST /v1/traces with a
// protobuf ExportTraceServiceRequest and keeps the spans.
type receiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string // service.name of each resource received
	bad      []string // requests it refused, and why
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) refuse(w http.ResponseWriter, why string) {
	rc.mu.Lock()
	rc.bad = append(rc.bad, why)
	rc.mu.Unlock()
	http.Error(w, why, http.StatusBadRequest)
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		rc.refuse(w, r.Method+" "+r.URL.Path)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		rc.refuse(w, "content type "+ct)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			rc.refuse(w, err.Error())
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		rc.refuse(w, err.Error())
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		rc.refuse(w, "decode: "+err.Error())
		return
	}
	rc.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				rc.services = append(rc.services, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.ScopeSpans {
			rc.spans = append(rc.spans, ss.Spans...)
		}
	}
	rc.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// spanSet indexes received spans.
type spanSet struct {
	t    *testing.T
	all  []*tracepb.Span
	byID map[string]*tracepb.Span
}

func (rc *receiver) set(t *testing.T) *spanSet {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	require.Empty(t, rc.bad, "requests the receiver refused")
	s := &spanSet{t: t, all: append([]*tracepb.Span(nil), rc.spans...), byID: map[string]*tracepb.Span{}}
	for _, sp := range s.all {
		s.byID[hex.EncodeToString(sp.SpanId)] = sp
	}
	return s
}

// one returns the only span named name that matches keep.
func (s *spanSet) one(name string, keep func(*tracepb.Span) bool) *tracepb.Span {
	s.t.Helper()
	var found []*tracepb.Span
	for _, sp := range s.all {
		if sp.Name == name && (keep == nil || keep(sp)) {
			found = append(found, sp)
		}
	}
	require.Len(s.t, found, 1, "spans named %q; received: %v", name, s.names())
	return found[0]
}

// childrenOf returns the children of parent named name.
func (s *spanSet) childrenOf(parent *tracepb.Span, name string) []*tracepb.Span {
	var out []*tracepb.Span
	for _, sp := range s.all {
		if sp.Name == name && bytes.Equal(sp.ParentSpanId, parent.SpanId) && bytes.Equal(sp.TraceId, parent.TraceId) {
			out = append(out, sp)
		}
	}
	return out
}

// child returns the only child of parent named name.
func (s *spanSet) child(parent *tracepb.Span, name string) *tracepb.Span {
	s.t.Helper()
	c := s.childrenOf(parent, name)
	require.Len(s.t, c, 1, "children named %q of %q; received: %v", name, parent.Name, s.names())
	return c[0]
}

func (s *spanSet) names() []string {
	var n []string
	for _, sp := range s.all {
		n = append(n, sp.Name)
	}
	return n
}

func attr(sp *tracepb.Span, key string) *commonpb.AnyValue {
	for _, a := range sp.Attributes {
		if a.Key == key {
			return a.Value
		}
	}
	return nil
}

func strAttr(sp *tracepb.Span, key string) string { return attr(sp, key).GetStringValue() }
func intAttr(sp *tracepb.Span, key string) int64  { return attr(sp, key).GetIntValue() }

// follows asserts that a ended before b started: causal order within a
// turn, not a measure of speed.
func follows(t *testing.T, a, b *tracepb.Span) {
	t.Helper()
	assert.LessOrEqual(t, a.EndTimeUnixNano, b.StartTimeUnixNano, "%s ends before %s starts", a.Name, b.Name)
}

// rest does one REST call and decodes the answer.
func rest(t *testing.T, st *testutil.Stack, method, path, key string, body any, hdr http.Header, want int, out any) http.Header {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, st.URL+path, rd)
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, want, resp.StatusCode, "%s %s: %s", method, path, raw)
	if out != nil {
		require.NoError(t, json.Unmarshal(raw, out), string(raw))
	}
	return resp.Header
}

// TestTraceOfTurns runs a real server stack (PostgreSQL, the OpenAI
// provider against the mock model) with OTEL_EXPORTER_OTLP_ENDPOINT
// pointing at an in-process collector, sends a REST turn that carries a
// W3C traceparent and a streamed WebSocket turn, flushes, and checks the
// spans that arrived and how they hang together.
// traced installs tracing that exports to a fresh receiver, with the
// environment env gives for the receiver's URL. flush shuts the provider
// down, exporting every span; a test that does not flush has it done at
// cleanup.
func traced(t *testing.T, env func(url string) map[string]string) (*receiver, func()) {
	t.Helper()
	clearOTEL(t)
	rc := newReceiver(t)
	for k, v := range env(rc.srv.URL) {
		t.Setenv(k, v)
	}
	restoreGlobals(t)
	shutdown, err := tracing.Setup(context.Background(), "stello", nil)
	require.NoError(t, err)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { _ = shutdown(context.Background()) }) })
	return rc, func() { once.Do(func() { require.NoError(t, shutdown(context.Background())) }) }
}

// id is the id of an object in a response.
type id struct {
	ID string `json:"id"`
}

// newTracedSpace creates a space through st's API and reads its root.
func newTracedSpace(t *testing.T, st *testutil.Stack, key string) (sp, root id) {
	t.Helper()
	rest(t, st, http.MethodPost, "/spaces", key, map[string]any{"label": "traced"}, nil, http.StatusCreated, &sp)
	rest(t, st, http.MethodGet, "/spaces/"+sp.ID+"/sessions", key, nil, nil, http.StatusOK, &root)
	return sp, root
}

func TestTraceOfTurns(t *testing.T) {
	rc, flush := traced(t, func(url string) map[string]string {
		return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_SERVICE_NAME": "stello-trace-test"}
	})
	ctx := context.Background()

	// The global propagator is what a forwarded request injects.
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6},
		TraceFlags: trace.FlagsSampled})
	carrier := propagation.HeaderCarrier(http.Header{})
	otel.GetTextMapPropagator().Inject(trace.ContextWithSpanContext(ctx, sc), carrier)
	assert.Equal(t, "00-01020300000000000000000000000000-0405060000000000-01", carrier.Get("traceparent"))

	mock := mockllm.New(mockllm.Config{})
	client := testutil.ModelClient(t, mock)
	st := testutil.NewStack(t, testutil.StackOptions{LLM: client, Space: space.Options{ConsolidateEvery: 2}})
	_, key := st.User(t, "tracer")
	sp, root := newTracedSpace(t, st, key)

	// 1. A REST turn that continues the caller's trace.
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	const callerSpan = "00f067aa0ba902b7"
	hdr := rest(t, st, http.MethodPost, "/spaces/"+sp.ID+"/sessions/"+root.ID+"/turn", key,
		map[string]any{"input": "hello over REST"}, http.Header{"Traceparent": {"00-" + traceID + "-" + callerSpan + "-01"}},
		http.StatusOK, nil)
	restTurnID := hdr.Get("Stello-Turn-Id")
	require.NotEmpty(t, restTurnID)

	// 2. A streamed WebSocket turn; it is the session's second, so a
	// consolidation follows it.
	wsURL := "ws" + strings.TrimPrefix(st.URL, "http") + "/spaces/" + sp.ID + "/ws"
	conn, resp, err := websocket.DefaultDialer.Dial(wsURL, http.Header{"X-API-Key": {key}})
	require.NoError(t, err)
	_ = resp.Body.Close()
	defer conn.Close()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(wait)))
	require.NoError(t, conn.WriteJSON(map[string]any{"type": "session.enter", "id": "e", "sessionId": root.ID}))
	require.NoError(t, conn.WriteJSON(map[string]any{"type": "session.stream", "id": "s", "input": "hello over WebSocket"}))
	var wsTurnID string
	for wsTurnID == "" {
		var m struct {
			Type   string `json:"type"`
			TurnID string `json:"turnId"`
		}
		require.NoError(t, conn.ReadJSON(&m))
		require.NotEqual(t, "error", m.Type)
		if m.Type == "stream.end" {
			wsTurnID = m.TurnID
		}
	}
	require.Eventually(t, func() bool {
		var mem struct {
			Content *string `json:"content"`
		}
		rest(t, st, http.MethodGet, "/spaces/"+sp.ID+"/sessions/"+root.ID+"/memory", key, nil, nil, http.StatusOK, &mem)
		return mem.Content != nil
	}, wait, 20*time.Millisecond, "the consolidation after the second turn")
	_ = conn.Close()

	// Every request has ended once the server is stopped; then flush.
	st.Stop()
	flush()
	spans := rc.set(t)
	rc.mu.Lock()
	assert.Contains(t, rc.services, "stello-trace-test", "OTEL_SERVICE_NAME names the service")
	rc.mu.Unlock()

	// The REST turn: request → turn → queue wait, context, model call, commit.
	req := spans.one("POST /spaces/{spaceId}/sessions/{id}/turn", nil)
	assert.Equal(t, traceID, hex.EncodeToString(req.TraceId), "the request continues the caller's trace")
	assert.Equal(t, callerSpan, hex.EncodeToString(req.ParentSpanId))
	assert.Equal(t, tracepb.Span_SPAN_KIND_SERVER, req.Kind)
	assert.Equal(t, int64(http.StatusOK), intAttr(req, "http.response.status_code"))
	assert.Equal(t, "/spaces/{spaceId}/sessions/{id}/turn", strAttr(req, "http.route"))
	assert.Equal(t, sp.ID, strAttr(req, "stello.space.id"))

	turn := spans.child(req, "turn")
	assert.Equal(t, sp.ID, strAttr(turn, "stello.space.id"))
	assert.Equal(t, root.ID, strAttr(turn, "stello.session.id"))
	assert.Equal(t, restTurnID, strAttr(turn, "stello.turn.id"))
	assert.Equal(t, "completed", strAttr(turn, "stello.turn.state"))
	wait := spans.child(turn, "turn.queue_wait")
	assemble := spans.child(turn, "turn.context")
	call := spans.child(turn, "llm.complete")
	commit := spans.child(turn, "turn.commit")
	assert.Equal(t, "openai", strAttr(call, "gen_ai.provider.name"))
	assert.Equal(t, testutil.ModelName, strAttr(call, "gen_ai.request.model"))
	assert.Positive(t, intAttr(call, "gen_ai.usage.input_tokens"))
	assert.Positive(t, intAttr(call, "gen_ai.usage.output_tokens"))
	assert.Equal(t, tracepb.Span_SPAN_KIND_CLIENT, call.Kind)
	assert.False(t, attr(assemble, "stello.context.history_cached").GetBoolValue(), "the first turn reads the history")
	assert.Equal(t, int64(2), intAttr(commit, "stello.commit.records"))
	follows(t, wait, assemble)
	follows(t, assemble, call)
	follows(t, call, commit)
	assert.Equal(t, tracepb.Status_STATUS_CODE_UNSET, turn.GetStatus().GetCode())

	// The WebSocket turn: its message's span (a trace of its own, linked to
	// the upgrade request) → turn → … → llm.stream, then the consolidation.
	upgrade := spans.one("GET /spaces/{spaceId}/ws", nil)
	msg := spans.one("WS session.stream", nil)
	assert.Empty(t, msg.ParentSpanId, "a WebSocket message starts a trace")
	require.Len(t, msg.Links, 1)
	assert.Equal(t, upgrade.SpanId, msg.Links[0].SpanId)
	assert.Equal(t, root.ID, strAttr(msg, "stello.session.id"))
	wsTurn := spans.child(msg, "turn")
	assert.Equal(t, wsTurnID, strAttr(wsTurn, "stello.turn.id"))
	spans.child(wsTurn, "turn.queue_wait")
	wsContext := spans.child(wsTurn, "turn.context")
	assert.True(t, attr(wsContext, "stello.context.history_cached").GetBoolValue(), "the second turn uses the cached history")
	stream := spans.child(wsTurn, "llm.stream")
	require.NotEmpty(t, stream.Events)
	assert.Equal(t, "first_chunk", stream.Events[0].Name)
	spans.child(wsTurn, "turn.commit")
	cons := spans.child(wsTurn, "consolidate")
	assert.True(t, attr(cons, "stello.memory.auto").GetBoolValue())
	consCall := spans.child(cons, "llm.complete")
	assert.Equal(t, "openai", strAttr(consCall, "gen_ai.provider.name"))

	// Other requests have their spans too, each its own trace.
	create := spans.one("POST /spaces", nil)
	assert.Empty(t, create.ParentSpanId)
	assert.Equal(t, int64(http.StatusCreated), intAttr(create, "http.response.status_code"))
}

// TestModelErrorIsRecorded checks that a failed model call marks its span,
// the turn's and (a 502) the request's as failed.
func TestModelErrorIsRecorded(t *testing.T) {
	rc, flush := traced(t, func(url string) map[string]string {
		return map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url + "/v1/traces"}
	})

	mock := mockllm.New(mockllm.Config{})
	mock.Enqueue(mockllm.Reply{Status: http.StatusServiceUnavailable, ErrorMessage: "overloaded"})
	client := testutil.ModelClient(t, mock)
	st := testutil.NewStack(t, testutil.StackOptions{LLM: client})
	_, key := st.User(t, "tracer")
	sp, root := newTracedSpace(t, st, key)
	rest(t, st, http.MethodPost, "/spaces/"+sp.ID+"/sessions/"+root.ID+"/turn", key,
		map[string]any{"input": "fail, please"}, nil, http.StatusBadGateway, nil)

	st.Stop()
	flush()
	spans := rc.set(t)
	req := spans.one("POST /spaces/{spaceId}/sessions/{id}/turn", nil)
	assert.Equal(t, tracepb.Status_STATUS_CODE_ERROR, req.GetStatus().GetCode())
	assert.Equal(t, "502", strAttr(req, "error.type"))
	turn := spans.child(req, "turn")
	assert.Equal(t, tracepb.Status_STATUS_CODE_ERROR, turn.GetStatus().GetCode())
	assert.Equal(t, "failed", strAttr(turn, "stello.turn.state"))
	assert.Equal(t, "LLM_ERROR", strAttr(turn, "stello.error.code"))
	call := spans.child(turn, "llm.complete")
	assert.Equal(t, tracepb.Status_STATUS_CODE_ERROR, call.GetStatus().GetCode())
	assert.Equal(t, "503", strAttr(call, "error.type"))
	assert.Empty(t, spans.childrenOf(turn, "turn.commit"), "a failed turn commits nothing")
}

// TestSetupWithoutEnvironment checks that without the variables that ask
// for export (or with those that turn it off) Setup installs nothing: the
// global provider and propagator stay what they were, and nothing is sent.
func TestSetupWithoutEnvironment(t *testing.T) {
	rc := newReceiver(t)
	cases := map[string]map[string]string{
		"no variables":      {},
		"service name only": {"OTEL_SERVICE_NAME": "x", "OTEL_RESOURCE_ATTRIBUTES": "a=b"},
		"sdk disabled":      {"OTEL_EXPORTER_OTLP_ENDPOINT": rc.srv.URL, "OTEL_SDK_DISABLED": "true"},
		"exporter none":     {"OTEL_EXPORTER_OTLP_ENDPOINT": rc.srv.URL, "OTEL_TRACES_EXPORTER": "none"},
		"exporter console":  {"OTEL_EXPORTER_OTLP_ENDPOINT": rc.srv.URL, "OTEL_TRACES_EXPORTER": "console"},
	}
	for name, env := range cases {
		t.Run(name, func(t *testing.T) {
			clearOTEL(t)
			for k, v := range env {
				t.Setenv(k, v)
			}
			tp, prop := otel.GetTracerProvider(), otel.GetTextMapPropagator()
			shutdown, err := tracing.Setup(context.Background(), "stello", nil)
			require.NoError(t, err)
			assert.Equal(t, tp, otel.GetTracerProvider(), "the global provider is left alone")
			assert.Equal(t, prop, otel.GetTextMapPropagator(), "the global propagator is left alone")
			_, span := otel.Tracer("test").Start(context.Background(), "nothing")
			span.End()
			assert.NoError(t, shutdown(context.Background()))
		})
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	assert.Empty(t, rc.spans)
	assert.Empty(t, rc.bad)
}

// TestSetupRefusesGRPC checks that the gRPC protocol, which this binary
// does not speak, is an error rather than spans sent to the wrong port.
func TestSetupRefusesGRPC(t *testing.T) {
	clearOTEL(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	tp := otel.GetTracerProvider()
	_, err := tracing.Setup(context.Background(), "stello", nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL")
	assert.Equal(t, tp, otel.GetTracerProvider())

	// The per-signal variable wins over the general one.
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
	restoreGlobals(t)
	shutdown, err := tracing.Setup(context.Background(), "stello", nil)
	require.NoError(t, err)
	require.NoError(t, shutdown(context.Background()))
}

func TestEnabled(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		on      bool
		ignored []string
	}{
		{"nothing", nil, false, nil},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, true, nil},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, true, nil},
		{"exporter otlp, default endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, nil},
		{"exporter list", map[string]string{"OTEL_TRACES_EXPORTER": "console, OTLP"}, true, []string{"console"}},
		{"exporter none wins", map[string]string{"OTEL_TRACES_EXPORTER": "otlp,none"}, false, nil},
		{"exporter zipkin with endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false, []string{"zipkin"}},
		{"disabled", map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, false, nil},
		{"disabled false", map[string]string{"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clearOTEL(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			on, ignored := tracing.Enabled()
			assert.Equal(t, c.on, on)
			assert.Equal(t, c.ignored, ignored)
		})
	}
}

// TestTraceAcrossTheForwardHop: a request that reaches a process which
// does not own its space is one trace: the receiving process's server
// span, its forward hop (a client span) and, under the hop, the owner's
// server span and the turn it ran.
func TestTraceAcrossTheForwardHop(t *testing.T) {
	rc, flush := traced(t, func(url string) map[string]string { return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": url} })
	store := testutil.Store(t)
	owner := testutil.NewStack(t, testutil.StackOptions{Store: store})
	other := testutil.NewStack(t, testutil.StackOptions{Store: store})
	_, key := owner.User(t, "tracer")
	sp, root := newTracedSpace(t, owner, key) // the owner activates it

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4737"
	rest(t, other, http.MethodPost, "/spaces/"+sp.ID+"/sessions/"+root.ID+"/turn", key, map[string]any{"input": "across"},
		http.Header{"Traceparent": {"00-" + traceID + "-00f067aa0ba902b7-01"}}, http.StatusOK, nil)
	flush()

	spans := rc.set(t)
	hop := spans.one("forward", nil)
	assert.Equal(t, traceID, hex.EncodeToString(hop.TraceId), "one trace across the hop")
	assert.Equal(t, tracepb.Span_SPAN_KIND_CLIENT, hop.Kind)
	assert.Equal(t, owner.Member.NodeID(), strAttr(hop, "stello.owner.node"))
	// The receiving process's request span never reached a route of its
	// own: it is named by the part it matched before forwarding.
	first := spans.byID[hex.EncodeToString(hop.ParentSpanId)]
	require.NotNil(t, first, "the hop's parent was exported")
	assert.Equal(t, "POST /spaces/{spaceId}/*", first.Name)
	assert.Equal(t, "00f067aa0ba902b7", hex.EncodeToString(first.ParentSpanId), "the receiving process continues the caller's trace")
	second := spans.child(hop, "POST /spaces/{spaceId}/sessions/{id}/turn")
	assert.Equal(t, tracepb.Span_SPAN_KIND_SERVER, second.Kind, "the owner's request span is a child of the hop")
	turn := spans.child(second, "turn")
	spans.child(turn, "turn.commit")
}
