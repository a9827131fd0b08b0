package transport_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/llm/fake"
	"github.com/stellohq/stello/transport"
)

// Six turns sent back to back on one connection run and are stored in the
// order they were sent.
func TestWSTurnsRunInTheOrderSent(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{LLM: fake.New(fake.Config{})})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)
	for i := 1; i <= 6; i++ {
		wsSend(t, c, map[string]any{"type": "session.message", "id": fmt.Sprint(i), "input": fmt.Sprintf("turn %d", i)})
	}
	for i := 1; i <= 6; i++ {
		m := wsRead(t, c)
		require.Equal(t, "turn.complete", m.Type, m.raw)
		require.NotNil(t, m.ID)
		assert.Equal(t, fmt.Sprint(i), *m.ID, "answers come in the order sent")
	}
	recs := e.messages(t, e.rootID)
	require.Len(t, recs, 12)
	for i := 1; i <= 6; i++ {
		assert.Equal(t, fmt.Sprintf("turn %d", i), recs[2*(i-1)].Content)
	}
}

// Streams still open when the server gives up waiting at shutdown end
// with an UNAVAILABLE error event, not a bare close.
func TestSSEEndsWithErrorWhenTheServerAborts(t *testing.T) {
	t.Parallel()
	e := newTurnsEnv(t, testutil.StackOptions{}, nil)
	s := e.openSSE(t, "POST", e.path+"/turn", `{"input":"hold on"}`)
	startTurnID(t, s.next(t))
	e.gate.wait(t, 1)
	e.stack.Front.Abort()
	_, last := s.rest(t)
	assert.Equal(t, "error", last.name)
	assert.Contains(t, last.data, `"code":"UNAVAILABLE"`)
	e.gate.openAll() // the turn itself was not cancelled: let it finish
	require.Eventually(t, func() bool { return len(e.messages(t, e.c, e.spaceID, e.root)) == 2 }, 10*time.Second, 10*time.Millisecond)
}

// An SSE client that falls behind by more than the buffer bound is
// disconnected with an error event whose id is the offset it got (never a
// bare close); its turn still completes and is stored, and a resume from
// that id brings the rest.
func TestSSESlowClientIsDisconnectedAndTheTurnGoesOn(t *testing.T) {
	// Not parallel: 8 MiB through the mock under the race detector would
	// starve the package's timing tests.
	e := newTurnsEnv(t, testutil.StackOptions{Transport: transport.Options{SSEQueueBytes: 64 << 10, WSWriteTimeout: time.Minute}}, nil)
	// 8 MiB: more than the loopback socket buffers hold (4 MiB send, the
	// unread receive window far less), so the server's writes block.
	chunk := strings.Repeat("wörd ", 16<<10/6)
	var chunks []string
	for range 8 << 20 / len(chunk) {
		chunks = append(chunks, chunk)
	}
	long := strings.Join(chunks, "")
	e.mock.Enqueue(mockllm.Reply{Chunks: chunks})
	e.gate.openAll()
	// Read the start and stop reading: the server cannot write and the
	// buffer overflows.
	s := e.openSSE(t, "POST", e.path+"/turn", `{"input":"flood"}`)
	id := startTurnID(t, s.next(t))
	require.Eventually(t, func() bool { return e.getTurn(t, id).State == "completed" }, 60*time.Second, 50*time.Millisecond,
		"the turn is stored although its client stopped reading")
	// Now read: what the socket held, then the error event.
	got, last := s.rest(t)
	require.Equal(t, "error", last.name, "a slow client's stream ends with an error event")
	assert.Contains(t, last.data, `"code":"BUSY"`)
	assert.Contains(t, last.data, "resume")
	assert.Equal(t, strconv.Itoa(utf8.RuneCountInString(got)), last.id, "the error event's id is the offset the client has")
	assert.Less(t, len(got), len(long), "the stream was cut")
	rest, end := e.openSSE(t, "GET", e.path+"/turns/"+id+"/stream", "", "Last-Event-ID", last.id).rest(t)
	require.Equal(t, "end", end.name)
	assert.True(t, got+rest == long, "the text before the cut and the resumed text make the reply")
	assert.True(t, long == e.messages(t, e.c, e.spaceID, e.root)[1].Content)
}

func TestMethodNotAllowedListsAllow(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{})
	sp, root := e.space(t, e.c, map[string]any{"label": "allow"})
	r := e.c.do("DELETE", "/spaces/"+sp.ID+"/sessions/"+root+"/system-prompt", nil)
	restErr(t, r, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	assert.Equal(t, "GET, PUT", r.Header.Get("Allow"))
	r = e.c.do("PUT", "/spaces/"+sp.ID, nil)
	restErr(t, r, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	assert.Equal(t, "GET, PATCH, DELETE", r.Header.Get("Allow"), "only the methods of this path")
}

func TestWSKeySubprotocolWithoutStelloV1IsRefused(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	d := websocket.Dialer{Subprotocols: []string{"stello.key." + e.key}}
	_, res, err := d.Dial(e.url(e.spaceID), nil)
	require.Error(t, err)
	require.NotNil(t, res)
	assert.Equal(t, http.StatusBadRequest, res.StatusCode)
	d = websocket.Dialer{Subprotocols: []string{transport.Subprotocol, "stello.key." + e.key}}
	c, res, err := d.Dial(e.url(e.spaceID), nil)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, transport.Subprotocol, res.Header.Get("Sec-WebSocket-Protocol"))
}

// panicModel is a model client whose SDK panics.
type panicModel struct{}

func (panicModel) Complete(context.Context, llm.Request) (*llm.Response, error) { panic("sdk bug") }
func (panicModel) Stream(context.Context, llm.Request, func(llm.Delta) error) (*llm.Response, error) {
	panic("sdk bug")
}
func (panicModel) Name() string { return "panic/model" }

// A model client that panics fails only its turn: 500 INTERNAL without
// details (REST), an INTERNAL error event (SSE), HANDLER_ERROR (WebSocket);
// the panic is counted and the space goes on serving.
func TestModelPanicIsAnInternalErrorOfOneTurn(t *testing.T) {
	t.Parallel()
	e := newRESTEnv(t, testutil.StackOptions{LLM: panicModel{}})
	sp, root := e.space(t, e.c, map[string]any{"label": "p"})
	path := "/spaces/" + sp.ID + "/sessions/" + root
	msg := restErr(t, e.c.do("POST", path+"/turn", map[string]any{"input": "boom"}), http.StatusInternalServerError, "INTERNAL")
	assert.Equal(t, "internal error", msg)
	r := e.c.do("POST", path+"/turn", map[string]any{"input": "boom"}, "Accept", "text/event-stream")
	assert.Equal(t, http.StatusOK, r.Status)
	assert.Contains(t, string(r.Body), "event: error")
	assert.Contains(t, string(r.Body), `"code":"INTERNAL"`)
	assert.NotContains(t, string(r.Body), "sdk bug")
	assert.Equal(t, 2, e.stack.Guard.Count("task"))
	restOK[transport.Space](t, e.c.do("GET", "/spaces/"+sp.ID, nil), http.StatusOK)
	assert.Empty(t, e.messages(t, e.c, sp.ID, root))
}
