package transport_test

import (
	"fmt"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/transport"
)

// unknown is a message the server answers with UNKNOWN_TYPE and its id.
func unknown(id string) []byte { return []byte(`{"type":"no.such","id":"` + id + `"}`) }

// wsRaw writes bytes straight to the connection's socket.
func wsRaw(t *testing.T, c *websocket.Conn, b []byte) {
	t.Helper()
	require.NoError(t, c.NetConn().SetWriteDeadline(time.Now().Add(wsWait)))
	_, err := c.NetConn().Write(b)
	require.NoError(t, err)
}

// wsAnswered reads the answers to unknown(id) for each id, in order.
func wsAnswered(t *testing.T, c *websocket.Conn, ids ...string) {
	t.Helper()
	for _, id := range ids {
		m := wsRead(t, c)
		require.Equal(t, "error", m.Type, m.raw)
		require.Equal(t, "UNKNOWN_TYPE", m.Code, m.raw)
		require.NotNil(t, m.ID, m.raw)
		require.Equal(t, id, *m.ID)
	}
}

// wsPonged checks that the pong the client's reads delivered carries
// payload. The answers read after the ping were written after the pong.
func wsPonged(t *testing.T, pongs <-chan string, payload string) {
	t.Helper()
	select {
	case p := <-pongs:
		assert.Equal(t, payload, p)
	default:
		t.Fatal("the ping was not answered")
	}
}

// idle leaves the connection alone long enough for its reader to wait on
// the socket, with garbage collections (which shrink stacks) in between.
func idle() {
	for range 3 {
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
	}
}

// Several messages, a ping and a pong arriving in one write (so the server
// reads them at once), one of them fragmented around the pong, are all
// read and answered in order, the ping with a pong carrying its payload;
// a message sent after a long idle period is read too.
func TestWSReadsEverythingThatArrivesAtOnce(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	c := e.dial(t, e.spaceID)
	pongs := make(chan string, 4)
	c.SetPongHandler(func(s string) error { pongs <- s; return nil })
	idle()

	msgB := unknown("b")
	var b []byte
	b = append(b, transport.MaskedFrame(true, websocket.TextMessage, unknown("a"))...)
	b = append(b, transport.MaskedFrame(true, websocket.PingMessage, []byte("p1"))...)
	b = append(b, transport.MaskedFrame(false, websocket.TextMessage, msgB[:7])...)
	b = append(b, transport.MaskedFrame(true, websocket.PongMessage, nil)...)
	b = append(b, transport.MaskedFrame(true, 0, msgB[7:])...)
	b = append(b, transport.MaskedFrame(true, websocket.TextMessage, unknown("c"))...)
	wsRaw(t, c, b)
	wsAnswered(t, c, "a", "b", "c")
	wsPonged(t, pongs, "p1")

	idle()
	wsSend(t, c, string(unknown("d")))
	wsAnswered(t, c, "d")
	wsEnter(t, c, e.rootID)
	idle()
	m := wsCall(t, c, map[string]any{"type": "session.leave", "id": "leave"})
	assert.Equal(t, "session.left", m.Type, m.raw)
}

// Frames that arrive a few bytes at a time, with 16- and 64-bit lengths,
// are read whole; pings between them are answered.
func TestWSReadsFramesSplitAcrossWrites(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	c := e.dial(t, e.spaceID)
	pongs := make(chan string, 4)
	c.SetPongHandler(func(s string) error { pongs <- s; return nil })
	long := func(id string, n int) []byte {
		return []byte(`{"type":"no.such","id":"` + id + `"` + strings.Repeat(" ", n) + `}`)
	}
	var b []byte
	b = append(b, transport.MaskedFrame(true, websocket.TextMessage, unknown("a"))...)
	b = append(b, transport.MaskedFrame(true, websocket.PingMessage, []byte("p2"))...)
	b = append(b, transport.MaskedFrame(true, websocket.TextMessage, long("b", 300))...)
	b = append(b, transport.MaskedFrame(true, websocket.TextMessage, long("c", 70000))...)
	for off := 0; off < len(b); {
		n := min(1+off%3, len(b)-off)
		if off > 300 {
			n = min(4096, len(b)-off)
		}
		wsRaw(t, c, b[off:off+n])
		off += n
		time.Sleep(time.Millisecond)
	}
	wsAnswered(t, c, "a", "b", "c")
	wsPonged(t, pongs, "p2")
}

// A client's close frame is answered with a close frame, after a long idle
// period too, and the connection is released.
func TestWSClientCloseAfterIdle(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	c := e.dial(t, e.spaceID)
	wsEnter(t, c, e.rootID)
	idle()
	require.NoError(t, c.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(wsWait)))
	ce := wsReadClose(t, c)
	assert.Equal(t, websocket.CloseNormalClosure, ce.Code)
	require.Eventually(t, func() bool { return e.conns(e.spaceID) == 0 }, wsWait, 10*time.Millisecond)
}

// opaqueListener hands out connections that are not *net.TCPConn, as a
// TLS listener or a proxy's would.
type opaqueListener struct{ net.Listener }

type opaqueConn struct{ net.Conn }

func (l opaqueListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return opaqueConn{c}, nil
}

// Over a connection that is not plain TCP the server reads in gorilla's
// read path: messages, pings and a message after a long idle period are
// all answered.
func TestWSOverNonTCPConnection(t *testing.T) {
	t.Parallel()
	e := newWSEnv(t, testutil.StackOptions{})
	srv := httptest.NewUnstartedServer(e.stack.HTTP.Config.Handler)
	srv.Listener = opaqueListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/spaces/" + e.spaceID + "/ws"
	c, _, err := websocket.DefaultDialer.Dial(url, map[string][]string{"X-API-Key": {e.key}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	pongs := make(chan string, 4)
	c.SetPongHandler(func(s string) error { pongs <- s; return nil })

	wsEnter(t, c, e.rootID)
	var b []byte
	for i := range 3 {
		b = append(b, transport.MaskedFrame(true, websocket.TextMessage, unknown(fmt.Sprint(i)))...)
	}
	b = append(b, transport.MaskedFrame(true, websocket.PingMessage, []byte("p3"))...)
	wsRaw(t, c, b)
	wsAnswered(t, c, "0", "1", "2")
	idle()
	wsSend(t, c, string(unknown("after")))
	wsAnswered(t, c, "after")
	wsPonged(t, pongs, "p3")
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return e.conns(e.spaceID) == 0 }, wsWait, 10*time.Millisecond)
}

// An idle reader on a plain TCP connection waits on the socket itself,
// not inside gorilla's read path (where its stack would stay grown): the
// goroutine dump shows every idle reader in wsSock.wait, none in
// gorilla's NextReader. Not parallel: no other test's connections are open.
func TestWSIdleReadersWaitOnTheSocket(t *testing.T) {
	e := newWSEnv(t, testutil.StackOptions{})
	const n = 3
	for i := range n {
		c := e.dial(t, e.spaceID)
		wsSend(t, c, string(unknown(fmt.Sprint(i))))
		wsAnswered(t, c, fmt.Sprint(i))
	}
	idle()
	var onSocket, inGorilla int
	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<22)
		dump := string(buf[:runtime.Stack(buf, true)])
		onSocket, inGorilla = 0, 0
		for _, g := range strings.Split(dump, "\n\n") {
			if !strings.Contains(g, "transport.(*wsConn).readLoop") {
				continue
			}
			if strings.Contains(g, "transport.(*wsSock).wait") {
				onSocket++
			}
			if strings.Contains(g, "websocket.(*Conn).NextReader") {
				inGorilla++
			}
		}
		return onSocket == n && inGorilla == 0
	}, 5*time.Second, 50*time.Millisecond, "readers waiting on the socket, in gorilla")
	assert.Equal(t, n, onSocket)
	assert.Zero(t, inGorilla)
}
