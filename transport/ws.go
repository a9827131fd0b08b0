package transport

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/stellohq/stello/session"
)

// Subprotocol is the WebSocket subprotocol spoken by Stello.
const Subprotocol = "stello.v1"

// maxTurnsPerConn bounds the turns one connection may have in flight.
const maxTurnsPerConn = 16

// writeBufferPool is shared by all connections: a connection holds a write
// buffer only while it writes.
var writeBufferPool = &sync.Pool{}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  512,
	WriteBufferSize: 4096,
	WriteBufferPool: writeBufferPool,
	Subprotocols:    []string{Subprotocol},
	// Auth is by API key, never by cookie, so any origin may connect.
	CheckOrigin: func(*http.Request) bool { return true },
}

// wsConn is one WebSocket connection. Only its reader goroutine runs while
// it is idle; a writer goroutine exists only while messages are queued.
type wsConn struct {
	s       *Server
	spaceID string
	userID  string
	keyHash [32]byte // SHA-256 of the API key it was opened with
	ws      *websocket.Conn
	gone    chan struct{} // closed when the reader ends

	mu      sync.Mutex
	queue   []outMsg
	queued  int // bytes in queue
	writing bool
	closed  bool
	pending *closeReq // a close asked for before the upgrade finished

	entered  string // owned by the reader goroutine
	turns    atomic.Int32
	lastSeen atomic.Int64
}

type closeReq struct {
	code   int
	reason string
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, "UNAVAILABLE", "shutting down"))
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		s.writeError(w, r, apiErr(http.StatusBadRequest, "BAD_REQUEST", "expected a WebSocket upgrade request"))
		return
	}
	c := &wsConn{s: s, spaceID: spaceID(r), userID: userID(r), keyHash: requestKeyHash(r), gone: make(chan struct{})}
	if err := s.spaces.Attach(r.Context(), c.userID, c.spaceID, c); err != nil {
		s.writeError(w, r, err)
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.spaces.Detach(c.spaceID, c)
		return // the upgrader already answered with an HTTP error
	}
	ws.SetReadLimit(s.opts.WSMaxMessageBytes)
	c.lastSeen.Store(time.Now().UnixNano())
	ws.SetPongHandler(func(string) error {
		c.lastSeen.Store(time.Now().UnixNano())
		return nil
	})
	c.mu.Lock()
	c.ws = ws
	pending := c.pending
	c.mu.Unlock()
	s.conns.Store(c, struct{}{})
	s.wsActive.Inc()
	s.wsTotal.Inc()
	if pending != nil {
		c.CloseWith(pending.code, pending.reason)
	} else if s.closing.Load() {
		// Close ran between the closing check above and conns.Store.
		c.CloseWith(websocket.CloseGoingAway, "server shutting down")
	}
	s.hub.ensure()
	// Read on a fresh goroutine and let the HTTP handler's goroutine, whose
	// stack grew through the router and the upgrade, end: an idle
	// connection then holds one small stack.
	go c.readLoop()
}

// readLoop runs until the peer goes away.
func (c *wsConn) readLoop() {
	defer c.teardown()
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		c.lastSeen.Store(time.Now().UnixNano())
		c.handle(data)
	}
}

func (c *wsConn) teardown() {
	close(c.gone)
	c.mu.Lock()
	c.closed = true
	c.queue = nil
	c.mu.Unlock()
	_ = c.ws.Close()
	if _, ok := c.s.conns.LoadAndDelete(c); ok {
		c.s.wsActive.Dec()
	}
	c.s.spaces.Detach(c.spaceID, c)
}

// CloseWith sends a close frame and closes the connection.
func (c *wsConn) CloseWith(code int, reason string) {
	c.mu.Lock()
	if c.ws == nil {
		c.pending = &closeReq{code, reason}
		c.mu.Unlock()
		return
	}
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.queue = nil
	c.mu.Unlock()
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	_ = c.ws.Close()
}

// outMsg is a queued message: encoded bytes, or a streamed delta whose
// chunk may still grow.
type outMsg struct {
	data  []byte
	delta *pendingDelta
}

// pendingDelta collects consecutive stream.delta chunks of one turn that
// the writer has not taken yet: a client reading slower than the model
// writes gets fewer, larger deltas instead of a longer queue.
type pendingDelta struct {
	id    json.RawMessage
	chunk []byte
}

func (m outMsg) bytes() []byte {
	if m.delta == nil {
		return m.data
	}
	o := out("stream.delta", m.delta.id)
	chunk := string(m.delta.chunk)
	o.Chunk = &chunk
	b, _ := json.Marshal(o)
	return b
}

// send queues one message; a peer that lets its queue fill is dropped.
func (c *wsConn) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.s.log.Error("encode ws message", zap.Error(err))
		return
	}
	c.enqueue(outMsg{data: b}, nil, "")
}

// sendDelta queues a stream.delta, merging it into a delta of the same
// turn still waiting in the queue.
func (c *wsConn) sendDelta(id json.RawMessage, chunk string) {
	c.enqueue(outMsg{}, id, chunk)
}

func (c *wsConn) enqueue(m outMsg, deltaID json.RawMessage, chunk string) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	size := len(m.data) + len(chunk)
	if c.queued+size > c.s.opts.WSSendQueueBytes {
		c.mu.Unlock()
		c.dropSlow()
		return
	}
	if deltaID != nil || m.data == nil {
		if n := len(c.queue); n > 0 {
			if last := c.queue[n-1].delta; last != nil && string(last.id) == string(deltaID) {
				last.chunk = append(last.chunk, chunk...)
				c.queued += size
				c.mu.Unlock()
				return
			}
		}
		m = outMsg{delta: &pendingDelta{id: deltaID, chunk: []byte(chunk)}}
	}
	if len(c.queue) >= c.s.opts.WSSendQueue {
		c.mu.Unlock()
		c.dropSlow()
		return
	}
	c.queue = append(c.queue, m)
	c.queued += size
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		go c.writeLoop()
	}
}

// dropSlow disconnects a peer that does not read what it is sent.
func (c *wsConn) dropSlow() {
	c.s.log.Info("dropping slow WebSocket client", zap.String("space", c.spaceID))
	c.CloseWith(websocket.ClosePolicyViolation, "client too slow")
}

func (c *wsConn) writeLoop() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.closed {
			c.writing = false
			c.queue = nil
			c.queued = 0
			c.mu.Unlock()
			return
		}
		m := c.queue[0]
		c.queue[0] = outMsg{}
		c.queue = c.queue[1:]
		// Encoding under the lock: a delta taken off the queue no longer grows.
		msg := m.bytes()
		if m.delta != nil {
			c.queued -= len(m.delta.chunk)
		} else {
			c.queued -= len(m.data)
		}
		c.mu.Unlock()
		_ = c.ws.SetWriteDeadline(time.Now().Add(c.s.opts.WSWriteTimeout))
		if err := c.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			c.CloseWith(websocket.CloseAbnormalClosure, "write failed")
			_ = c.ws.Close()
			return
		}
	}
}

type wsIn struct {
	Type      string               `json:"type"`
	ID        json.RawMessage      `json:"id"`
	SessionID *string              `json:"sessionId"`
	Input     *string              `json:"input"`
	Options   *session.ForkOptions `json:"options"`
}

// wsOut is every server → client message; a type sets only its fields.
type wsOut struct {
	Type      string          `json:"type"`
	ID        json.RawMessage `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Bootstrap *Bootstrap      `json:"bootstrap,omitempty"`
	Child     *SessionMeta    `json:"child,omitempty"`
	Result    *TurnResult     `json:"result,omitempty"`
	Chunk     *string         `json:"chunk,omitempty"`
	Message   string          `json:"message,omitempty"`
	Code      string          `json:"code,omitempty"`
}

// out starts an outgoing message echoing the client's id.
func out(typ string, id json.RawMessage) wsOut {
	if string(id) == "null" {
		id = nil
	}
	return wsOut{Type: typ, ID: id}
}

func (c *wsConn) fail(id json.RawMessage, code, msg string) {
	o := out("error", id)
	o.Message, o.Code = msg, code
	c.send(o)
}

func (c *wsConn) failErr(id json.RawMessage, err error) {
	code, msg := wsCode(err)
	if code == "HANDLER_ERROR" && !errors.Is(err, context.Canceled) {
		c.s.log.Warn("ws handler error", zap.String("space", c.spaceID), zap.Error(err))
	}
	c.fail(id, code, msg)
}

func (c *wsConn) handle(data []byte) {
	var m wsIn
	if err := json.Unmarshal(data, &m); err != nil {
		var raw map[string]json.RawMessage
		if json.Unmarshal(data, &raw) != nil {
			c.fail(nil, "PARSE_ERROR", "message is not valid JSON")
			return
		}
		c.fail(raw["id"], "BAD_REQUEST", "invalid message: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch m.Type {
	case "session.enter":
		if c.entered != "" {
			c.fail(m.ID, "ALREADY_ENTERED", "already entered session "+c.entered+"; send session.leave first")
			return
		}
		if m.SessionID == nil || *m.SessionID == "" {
			c.fail(m.ID, "BAD_REQUEST", "sessionId is required")
			return
		}
		b, err := c.s.spaces.Enter(ctx, c.userID, c.spaceID, *m.SessionID)
		if err != nil {
			c.failErr(m.ID, err)
			return
		}
		c.entered = b.Session.ID
		o := out("session.entered", m.ID)
		bs := toBootstrap(b)
		o.SessionID, o.Bootstrap = b.Session.ID, &bs
		c.send(o)
	case "session.leave":
		if c.entered == "" {
			c.fail(m.ID, "NOT_ENTERED", "not in a session; send session.enter first")
			return
		}
		left := c.entered
		c.entered = ""
		o := out("session.left", m.ID)
		o.SessionID = left
		c.send(o)
	case "session.message", "session.stream":
		if c.entered == "" {
			c.fail(m.ID, "NOT_ENTERED", "not in a session; send session.enter first")
			return
		}
		if m.Input == nil || *m.Input == "" {
			c.fail(m.ID, "BAD_REQUEST", "input is required and must be non-empty")
			return
		}
		if c.turns.Add(1) > maxTurnsPerConn {
			c.turns.Add(-1)
			c.fail(m.ID, "BUSY", "too many turns in flight on this connection")
			return
		}
		go c.runTurn(m.ID, c.entered, *m.Input, m.Type == "session.stream")
	case "session.fork":
		if c.entered == "" {
			c.fail(m.ID, "NOT_ENTERED", "not in a session; send session.enter first")
			return
		}
		if m.Options == nil {
			c.fail(m.ID, "BAD_REQUEST", "options is required")
			return
		}
		v, err := c.s.spaces.Fork(ctx, c.userID, c.spaceID, c.entered, *m.Options)
		if err != nil {
			c.failErr(m.ID, err)
			return
		}
		o := out("session.forked", m.ID)
		child := toMeta(v)
		o.Child = &child
		c.send(o)
	case "":
		c.fail(m.ID, "BAD_REQUEST", "type is required")
	default:
		c.fail(m.ID, "UNKNOWN_TYPE", "unknown message type "+m.Type)
	}
}

// runTurn runs one turn for the connection. Closing the socket does not
// cancel the turn: it completes and is persisted; its result is dropped.
func (c *wsConn) runTurn(id json.RawMessage, sessionID, input string, stream bool) {
	defer c.turns.Add(-1)
	var onDelta func(string)
	if stream {
		if id == nil {
			id = json.RawMessage{} // non-nil: marks the message as a delta
		}
		onDelta = func(chunk string) { c.sendDelta(id, chunk) }
	}
	// The wait for the result ends when the connection does; the turn goes on.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.gone:
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := c.s.spaces.Turn(ctx, c.userID, c.spaceID, sessionID, input, onDelta)
	if err != nil {
		if ctx.Err() == nil {
			c.failErr(id, err)
		}
		return
	}
	typ := "turn.complete"
	if stream {
		typ = "stream.end"
	}
	o := out(typ, id)
	tr := toTurn(res)
	o.Result = &tr
	c.send(o)
}

// pingHub pings every connection from one goroutine and drops peers that
// stopped answering, so an idle connection needs no goroutine of its own
// beyond its reader.
type pingHub struct {
	s       *Server
	once    sync.Once
	stopped chan struct{}
	stopMu  sync.Once
}

func newPingHub(s *Server) *pingHub { return &pingHub{s: s, stopped: make(chan struct{})} }

func (h *pingHub) ensure() { h.once.Do(func() { go h.run() }) }

func (h *pingHub) stop() { h.stopMu.Do(func() { close(h.stopped) }) }

func (h *pingHub) run() {
	every := h.s.opts.WSPingInterval
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.stopped:
			return
		case <-t.C:
			stale := time.Now().Add(-2 * every).UnixNano()
			h.s.conns.Range(func(c *wsConn, _ struct{}) bool {
				if c.lastSeen.Load() < stale {
					c.CloseWith(websocket.CloseGoingAway, "ping timeout")
					return true
				}
				_ = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
				return true
			})
		}
	}
}
