package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/transport"
)

// env is a real stack, a user, a client and a space with its root
// session. (The responses themselves are checked against the OpenAPI
// document by the transport package's tests.)
type env struct {
	st   *testutil.Stack
	c    *client.Client
	key  string
	root string
	sp   *client.Space
}

func newEnv(t *testing.T, o testutil.StackOptions, opts ...client.Option) *env {
	t.Helper()
	st := testutil.NewStack(t, o)
	_, key := st.User(t, "alice")
	c := client.New(st.URL, key, opts...)
	sp, err := c.CreateSpace(ctx(t), client.SpaceInput{Label: "test", SystemPrompt: client.String("Be brief.")})
	require.NoError(t, err)
	tree, err := c.Tree(ctx(t), sp.ID)
	require.NoError(t, err)
	return &env{st: st, c: c, key: key, root: tree.ID, sp: sp}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestSpaces(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	assert.Equal(t, "test", e.sp.Label)
	assert.Equal(t, "Be brief.", *e.sp.SystemPrompt)

	two, err := e.c.CreateSpace(c, client.SpaceInput{Label: "two", Config: json.RawMessage(`{"model":"x"}`)})
	require.NoError(t, err)
	assert.JSONEq(t, `{"model":"x"}`, string(two.Config))
	list, err := e.c.ListSpaces(c)
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, []string{e.sp.ID, two.ID}, []string{list[0].ID, list[1].ID})

	got, err := e.c.GetSpace(c, two.ID)
	require.NoError(t, err)
	assert.Equal(t, "two", got.Label)
	up, err := e.c.UpdateSpace(c, e.sp.ID, client.SpacePatch{Label: client.String("renamed"), ClearSystemPrompt: true})
	require.NoError(t, err)
	assert.Equal(t, "renamed", up.Label)
	assert.Nil(t, up.SystemPrompt)

	require.NoError(t, e.c.DeleteSpace(c, two.ID))
	_, err = e.c.GetSpace(c, two.ID)
	assert.ErrorIs(t, err, client.ErrNotFound)
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusNotFound, ae.Status)
	assert.Equal(t, "NOT_FOUND", ae.Code)
	assert.NotEmpty(t, ae.Message)

	_, err = e.c.CreateSpace(c, client.SpaceInput{})
	assert.ErrorIs(t, err, client.ErrBadRequest)
	assert.Contains(t, err.Error(), "label")

	_, bobKey := e.st.User(t, "bob")
	bob := client.New(e.st.URL, bobKey)
	_, err = bob.GetSpace(c, e.sp.ID)
	assert.ErrorIs(t, err, client.ErrForbidden)
	_, err = client.New(e.st.URL, "sk-nope").ListSpaces(c)
	assert.ErrorIs(t, err, client.ErrUnauthorized)
	assert.False(t, errors.Is(err, client.ErrForbidden))
}

func TestOperations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	require.NoError(t, e.c.Health(c))
	require.NoError(t, e.c.Ready(c))
	doc, err := e.c.OpenAPI(c)
	require.NoError(t, err)
	assert.Contains(t, string(doc), `"openapi": "3.1.0"`)
	m, err := e.c.Metrics(c)
	require.NoError(t, err)
	assert.Contains(t, m, "stello_http_requests_total")
	e.st.Front.Close()
	assert.ErrorIs(t, e.c.Ready(c), client.ErrUnavailable)
}

func TestSessionsForkArchiveSlots(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	S := e.sp.ID

	root, err := e.c.Session(c, S, e.root)
	require.NoError(t, err)
	assert.Equal(t, "main", root.Role)

	_, err = e.c.Turn(c, S, e.root, "remember 42")
	require.NoError(t, err)
	child, err := e.c.Fork(c, S, e.root, client.ForkOptions{Label: "child", Scope: client.String("tests"), Context: "inherit"})
	require.NoError(t, err)
	assert.Equal(t, e.root, *child.ParentID)
	assert.Equal(t, "tests", *child.Scope)
	tree, err := e.c.Tree(c, S)
	require.NoError(t, err)
	require.Len(t, tree.Children, 1)
	assert.Equal(t, child.ID, tree.Children[0].ID)

	msgs, err := e.c.Messages(c, S, child.ID, 0, 0)
	require.NoError(t, err)
	require.Len(t, msgs, 2, "inherited records")
	assert.Equal(t, "remember 42", msgs[0].Content)
	page, err := e.c.Messages(c, S, child.ID, 1, 1)
	require.NoError(t, err)
	require.Len(t, page, 1)
	assert.Equal(t, "assistant", page[0].Role)

	for _, slot := range []client.Slot{client.SlotSystemPrompt, client.SlotConsolidatePrompt, client.SlotIntegratePrompt} {
		v, err := e.c.SetSlot(c, S, child.ID, slot, "p "+string(slot))
		require.NoError(t, err)
		assert.Equal(t, "p "+string(slot), *v)
		got, err := e.c.Slot(c, S, child.ID, slot)
		require.NoError(t, err)
		assert.Equal(t, "p "+string(slot), *got)
	}
	ins, err := e.c.Slot(c, S, child.ID, client.SlotInsight)
	require.NoError(t, err)
	assert.Nil(t, ins)

	mem, err := e.c.Consolidate(c, S, child.ID)
	require.NoError(t, err)
	require.NotNil(t, mem)
	got, err := e.c.Slot(c, S, child.ID, client.SlotMemory)
	require.NoError(t, err)
	assert.Equal(t, *mem, *got)
	in, err := e.c.Integrate(c, S)
	require.NoError(t, err)
	assert.NotEmpty(t, in.Synthesis)
	require.Len(t, in.Insights, 1)
	assert.Equal(t, child.ID, in.Insights[0].SessionID)

	arch, err := e.c.Archive(c, S, child.ID)
	require.NoError(t, err)
	assert.Equal(t, "archived", arch.Status)
	_, err = e.c.Turn(c, S, child.ID, "hi")
	assert.ErrorIs(t, err, client.ErrSessionArchived)
	_, err = e.c.Archive(c, S, e.root)
	assert.ErrorIs(t, err, client.ErrConflict)
	_, err = e.c.Session(c, S, "00000000-0000-0000-0000-000000000000")
	assert.ErrorIs(t, err, client.ErrNotFound)
}

func TestTurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	res, err := e.c.Turn(ctx(t), e.sp.ID, e.root, "hello")
	require.NoError(t, err)
	assert.Equal(t, "Echo: hello", res.Text())
	assert.Regexp(t, `^[0-9a-f-]{36}$`, res.TurnID, "the result carries its turn id")
	_, err = e.c.Turn(ctx(t), e.sp.ID, e.root, "")
	assert.ErrorIs(t, err, client.ErrBadRequest)
}

// collect ranges over a stream's events.
func collect(t *testing.T, s *client.Stream) (types []client.EventType, text string, err error) {
	t.Helper()
	for ev, e := range s.Events() {
		if e != nil {
			return types, text, e
		}
		types = append(types, ev.Type)
		text += ev.Chunk
	}
	return types, text, nil
}

func TestTurnStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	s, err := e.c.TurnStream(ctx(t), e.sp.ID, e.root, "stream this reply")
	require.NoError(t, err)
	types, text, err := collect(t, s)
	require.NoError(t, err)
	assert.Equal(t, "Echo: stream this reply", text)
	require.NotEmpty(t, types)
	assert.Equal(t, client.EventEnd, types[len(types)-1])
	assert.Equal(t, "Echo: stream this reply", s.Result().Text())
	assert.Equal(t, client.EventStart, types[0], "the first event is start")
	assert.NotEmpty(t, s.TurnID(), "the turn id is known")
	assert.Equal(t, 0, s.Resumes())

	_, err = e.c.TurnStream(ctx(t), e.sp.ID, "00000000-0000-0000-0000-000000000000", "x")
	assert.ErrorIs(t, err, client.ErrNotFound, "errors before the stream are returned at once")
}

// cutOnce is a transport that cuts the first SSE answer of a turn after
// its first delta, as a dropped connection would.
type cutOnce struct {
	next http.RoundTripper
	cut  atomic.Bool
}

func (c *cutOnce) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := c.next.RoundTrip(req)
	if err != nil || !strings.HasSuffix(req.URL.Path, "/turn") || !strings.Contains(res.Header.Get("Content-Type"), "event-stream") {
		return res, err
	}
	if c.cut.CompareAndSwap(false, true) {
		res.Body = &cutBody{body: res.Body}
	}
	return res, nil
}

// cutBody passes the stream through until the end of its first delta
// event, then reports the connection as reset.
type cutBody struct {
	body io.ReadCloser
	seen strings.Builder
	done bool
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("connection reset by peer (test)")
	}
	n, err := b.body.Read(p)
	b.seen.Write(p[:n])
	s := b.seen.String()
	if i := strings.Index(s, "event: delta"); i >= 0 {
		if j := strings.Index(s[i:], "\n\n"); j >= 0 {
			keep := n - (len(s) - (i + j + 2))
			b.done = true
			return keep, nil
		}
	}
	return n, err
}

func (b *cutBody) Close() error { return b.body.Close() }

func TestTurnStreamResumesAfterDrop(t *testing.T) {
	t.Parallel()
	st := testutil.NewStack(t, testutil.StackOptions{LLM: fake.New(fake.Config{ChunkDelay: 20 * time.Millisecond})})
	_, key := st.User(t, "alice")
	cut := &cutOnce{next: http.DefaultTransport}
	c := client.New(st.URL, key, client.WithHTTPClient(&http.Client{Transport: cut}), client.WithResume(3, 10*time.Millisecond))
	sp, err := c.CreateSpace(ctx(t), client.SpaceInput{Label: "resume"})
	require.NoError(t, err)
	tree, err := c.Tree(ctx(t), sp.ID)
	require.NoError(t, err)

	s, err := c.TurnStream(ctx(t), sp.ID, tree.ID, "one two three four five")
	require.NoError(t, err)
	types, text, err := collect(t, s)
	require.True(t, cut.cut.Load(), "the connection was cut")
	require.NoError(t, err)
	assert.Equal(t, "Echo: one two three four five", text, "every piece once, in order")
	assert.Equal(t, 1, s.Resumes())
	assert.Equal(t, client.EventEnd, types[len(types)-1])
	n := 0
	for _, ty := range types {
		if ty == client.EventStart {
			n++
		}
	}
	assert.Equal(t, 1, n, "one start event")
}

// A stream whose reader falls more than the server's buffer behind is
// closed by the server with an error event BUSY; the turn goes on and the
// stream resumes from the offset it had, so the reader still gets every
// piece once.
func TestTurnStreamResumesAfterFallingBehind(t *testing.T) {
	// Not parallel: 8 MiB through the mock under the race detector would
	// starve the package's other tests.
	mock := mockllm.New(mockllm.Config{})
	// 8 MiB: more than the loopback socket buffers hold.
	chunk := strings.Repeat("wörd ", 16<<10/6)
	var chunks []string
	for range 8 << 20 / len(chunk) {
		chunks = append(chunks, chunk)
	}
	long := strings.Join(chunks, "")
	mock.Enqueue(mockllm.Reply{Chunks: chunks})
	e := newEnv(t, testutil.StackOptions{LLM: testutil.ModelClient(t, mock),
		Transport: transport.Options{SSEQueueBytes: 64 << 10, WSWriteTimeout: time.Minute}},
		client.WithResume(3, 10*time.Millisecond))
	c := ctx(t)
	s, err := e.c.TurnStream(c, e.sp.ID, e.root, "flood")
	require.NoError(t, err)
	var text strings.Builder
	paused := false
	for ev, err := range s.Events() {
		require.NoError(t, err)
		if ev.Type == client.EventDelta {
			text.WriteString(ev.Chunk)
		}
		if !paused {
			// Stop reading until the turn is stored: the server cannot
			// write, and the stream falls behind.
			paused = true
			require.Eventually(t, func() bool {
				tr, err := e.c.GetTurn(c, e.sp.ID, e.root, s.TurnID())
				return err == nil && tr.State == client.TurnCompleted
			}, time.Minute, 50*time.Millisecond)
		}
	}
	assert.GreaterOrEqual(t, s.Resumes(), 1, "the stream resumed after the server closed it")
	assert.True(t, text.String() == long, "every piece once, in order (%d of %d bytes)", text.Len(), len(long))
	require.NotNil(t, s.Result())
}

func TestGetCancelResumeTurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	res, err := e.c.Turn(c, e.sp.ID, e.root, "kept")
	require.NoError(t, err)
	require.NotEmpty(t, res.TurnID, "the turn id is needed below")

	tu, err := e.c.GetTurn(c, e.sp.ID, e.root, res.TurnID)
	require.NoError(t, err)
	assert.Equal(t, client.TurnCompleted, tu.State)
	assert.Equal(t, "kept", tu.Input)
	assert.Equal(t, "Echo: kept", tu.Result.Text())

	s, err := e.c.ResumeStream(c, e.sp.ID, e.root, res.TurnID, 6)
	require.NoError(t, err)
	_, text, err := collect(t, s)
	require.NoError(t, err)
	assert.Equal(t, "kept", text, "the reply from code point 6 on")

	// A committed turn is never undone.
	tu, err = e.c.CancelTurn(c, e.sp.ID, e.root, res.TurnID)
	require.NoError(t, err)
	assert.Equal(t, client.TurnCompleted, tu.State)
	_, err = e.c.GetTurn(c, e.sp.ID, e.root, "00000000-0000-0000-0000-000000000000")
	assert.ErrorIs(t, err, client.ErrNotFound)
}

func TestCancelRunningTurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{LLM: fake.New(fake.Config{Latency: 10 * time.Second})})
	c := ctx(t)
	s, err := e.c.TurnStream(c, e.sp.ID, e.root, "never finishes")
	require.NoError(t, err)
	defer s.Close()
	var turnID string
	for ev, err := range s.Events() {
		if turnID == "" {
			require.NoError(t, err)
			require.Equal(t, client.EventStart, ev.Type)
			turnID = ev.TurnID
			tu, cerr := e.c.CancelTurn(c, e.sp.ID, e.root, turnID)
			require.NoError(t, cerr)
			assert.Equal(t, client.TurnCancelled, tu.State)
			continue
		}
		require.ErrorIs(t, err, client.ErrCancelled, "the stream ends with CANCELLED")
	}
	msgs, err := e.c.Messages(c, e.sp.ID, e.root, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, msgs, "nothing of a cancelled turn is stored")
}

func TestTurnOptions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	a, err := e.c.Turn(c, e.sp.ID, e.root, "once", client.WithIdempotencyKey("k-1"))
	require.NoError(t, err)
	b, err := e.c.Turn(c, e.sp.ID, e.root, "once", client.WithIdempotencyKey("k-1"))
	require.NoError(t, err)
	assert.Equal(t, a.TurnID, b.TurnID, "a repeat gets the stored result")
	msgs, err := e.c.Messages(c, e.sp.ID, e.root, 0, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, 2, "the model ran once")
	_, err = e.c.Turn(c, e.sp.ID, e.root, "other input", client.WithIdempotencyKey("k-1"))
	assert.ErrorIs(t, err, client.ErrConflict)

	_, err = e.c.Turn(c, e.sp.ID, e.root, "idle", client.WithIfBusy(client.IfBusyReject))
	require.NoError(t, err, "an idle session runs the turn")
	_, err = e.c.Turn(c, e.sp.ID, e.root, "x", client.WithIfBusy("sometimes"))
	assert.ErrorIs(t, err, client.ErrBadRequest)
}

func TestWebSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	conn, err := e.c.Dial(c, e.sp.ID)
	require.NoError(t, err)
	defer conn.Close()

	_, err = conn.Message(c, "too early")
	assert.ErrorIs(t, err, client.ErrNotEntered)
	bs, err := conn.Enter(c, e.root)
	require.NoError(t, err)
	assert.Equal(t, e.root, bs.Session.ID)
	_, err = conn.Enter(c, e.root)
	assert.ErrorIs(t, err, client.ErrAlreadyEntered)

	res, err := conn.Message(c, "hi")
	require.NoError(t, err)
	assert.Equal(t, "Echo: hi", res.Text())

	var text string
	var last client.Event
	for ev, err := range conn.Stream(c, "streamed here") {
		require.NoError(t, err)
		text += ev.Chunk
		last = ev
	}
	assert.Equal(t, "Echo: streamed here", text)
	assert.Equal(t, client.EventEnd, last.Type)
	assert.Equal(t, "Echo: streamed here", last.Result.Text())

	child, err := conn.Fork(c, client.ForkOptions{Label: "ws child"})
	require.NoError(t, err)
	assert.Equal(t, e.root, *child.ParentID)
	require.NoError(t, conn.Leave(c))
	_, err = conn.Enter(c, "00000000-0000-0000-0000-000000000000")
	assert.ErrorIs(t, err, client.ErrNotFound)

	_, err = client.New(e.st.URL, "sk-nope").Dial(c, e.sp.ID)
	assert.ErrorIs(t, err, client.ErrUnauthorized)
}

func TestWebSocketTurnObjects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	conn, err := e.c.Dial(c, e.sp.ID)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Enter(c, e.root)
	require.NoError(t, err)

	var turnID string
	var types []client.EventType
	for ev, err := range conn.Stream(c, "with ids") {
		require.NoError(t, err)
		types = append(types, ev.Type)
		if turnID == "" {
			turnID = ev.TurnID
		}
	}
	require.NotEmpty(t, types)
	assert.Equal(t, client.EventStart, types[0], "stream.start comes first")
	require.NotEmpty(t, turnID, "stream messages carry the turn id")

	var text string
	for ev, err := range conn.Attach(c, turnID, 6) {
		require.NoError(t, err)
		text += ev.Chunk
	}
	assert.Equal(t, "with ids", text, "attach resumes from the offset")
}

func TestWebSocketSubscribe(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	conn, err := e.c.Dial(c, e.sp.ID)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Subscribe(c))
	// The subscription is in once a request sent after it is answered.
	_, err = conn.Enter(c, e.root)
	require.NoError(t, err)

	child, err := e.c.Fork(c, e.sp.ID, e.root, client.ForkOptions{Label: "via REST"})
	require.NoError(t, err)
	select {
	case m := <-conn.Events():
		assert.Equal(t, client.MsgSpaceEvent, m.Type)
		assert.Equal(t, client.SpaceSessionCreated, m.Event)
		require.NotNil(t, m.Session)
		assert.Equal(t, child.ID, m.Session.ID)
	case <-time.After(10 * time.Second):
		t.Fatal("no space event for a fork made through REST")
	}
}

func TestWebSocketSpaceDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.StackOptions{})
	c := ctx(t)
	conn, err := e.c.Dial(c, e.sp.ID)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, e.c.DeleteSpace(c, e.sp.ID))
	select {
	case <-conn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection stayed open after the space was deleted")
	}
	require.NotNil(t, conn.CloseError())
	assert.Equal(t, 4404, conn.CloseError().Code)
}

// TestWithDialerAndHTTPClient: REST calls and streams go through the given
// HTTP client's transport, WebSockets through a copy of the given dialer
// (which still negotiates stello.v1, whatever subprotocols the dialer
// names).
func TestWithDialerAndHTTPClient(t *testing.T) {
	t.Parallel()
	st := testutil.NewStack(t, testutil.StackOptions{})
	_, key := st.User(t, "alice")
	counting := func(n *atomic.Int32) func(context.Context, string, string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
	var httpDials, wsDials atomic.Int32
	tr := &http.Transport{MaxIdleConnsPerHost: 8, DialContext: counting(&httpDials)}
	t.Cleanup(tr.CloseIdleConnections)
	d := &websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 1024, NetDialContext: counting(&wsDials), Subprotocols: []string{"other"}}
	c := client.New(st.URL, key, client.WithHTTPClient(&http.Client{Transport: tr}), client.WithDialer(d))

	sp, err := c.CreateSpace(ctx(t), client.SpaceInput{Label: "options"})
	require.NoError(t, err)
	tree, err := c.Tree(ctx(t), sp.ID)
	require.NoError(t, err)
	s, err := c.TurnStream(ctx(t), sp.ID, tree.ID, "through the transport")
	require.NoError(t, err)
	_, text, err := collect(t, s)
	require.NoError(t, err)
	assert.Equal(t, "Echo: through the transport", text)
	assert.Positive(t, httpDials.Load(), "REST and SSE go through the given transport")
	assert.Zero(t, wsDials.Load())

	conn, err := c.Dial(ctx(t), sp.ID)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Enter(ctx(t), tree.ID)
	require.NoError(t, err)
	res, err := conn.Message(ctx(t), "over the dialer")
	require.NoError(t, err)
	assert.Equal(t, "Echo: over the dialer", res.Text())
	assert.EqualValues(t, 1, wsDials.Load(), "the WebSocket went through the given dialer")
	assert.Equal(t, []string{"other"}, d.Subprotocols, "the caller's dialer is not changed")
}
