package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// Subprotocol is the WebSocket subprotocol spoken by Stello.
const Subprotocol = "stello.v1"

// maxTurnsPerConn bounds the turns one connection may have in flight.
const maxTurnsPerConn = 16

// writeBufferPool is shared by all connections: a connection holds a write
// buffer only while it writes.
var writeBufferPool = &sync.Pool{}

var upgrader = websocket.Upgrader{
	// Every connection keeps its read buffer. 128 bytes hold a control
	// frame (gorilla's minimum); a longer message is read past the buffer,
	// straight into the message.
	ReadBufferSize:  128,
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
	sock    *wsSock // the TCP connection under ws; nil when not plain TCP

	mu       sync.Mutex
	queue    []outMsg
	queued   int // bytes in queue
	writing  bool
	closed   bool
	closeMsg []byte        // the close frame the writer still has to send
	pending  *closeReq     // a close asked for before the upgrade finished
	room     chan struct{} // signalled by the writer when the queue shrinks; made when the reader first waits for room

	entered  string // owned by the reader goroutine
	turns    atomic.Int32
	lastSeen atomic.Int64

	upgrade *trace.SpanContext // the upgrade request's span (when valid), linked from every message's
	span    trace.Span         // the message being handled, while it records; owned by the reader goroutine
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
	if _, viaProtocol := apiKey(r); viaProtocol && !offersSubprotocol(r, Subprotocol) {
		s.writeError(w, r, apiErr(http.StatusBadRequest, "BAD_REQUEST",
			"a key offered as the subprotocol stello.key.<key> must come with the subprotocol "+Subprotocol))
		return
	}
	c := &wsConn{s: s, spaceID: spaceID(r), userID: userID(r), keyHash: requestKeyHash(r),
		upgrade: upgradeSpan(r)}
	if err := s.spaces.Attach(r.Context(), c.userID, c.spaceID, c); err != nil {
		s.writeError(w, r, err)
		return
	}
	var hj *sockHijacker
	if _, ok := w.(http.Hijacker); ok {
		hj = &sockHijacker{ResponseWriter: w}
		w = hj
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.spaces.Detach(c.spaceID, c)
		return // the upgrader already answered with an HTTP error
	}
	ws.SetReadLimit(s.opts.WSMaxMessageBytes)
	c.lastSeen.Store(time.Now().UnixNano())
	ws.SetPongHandler(c.pong)
	c.mu.Lock()
	c.ws = ws
	if hj != nil {
		c.sock = hj.sock
	}
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
	// connection then holds one small stack (see wsSock).
	go c.readLoop()
}

// pong records that the peer answered a ping.
func (c *wsConn) pong(string) error {
	c.lastSeen.Store(time.Now().UnixNano())
	return nil
}

// offersSubprotocol reports whether the upgrade request offers proto.
func offersSubprotocol(r *http.Request, proto string) bool {
	for _, p := range websocket.Subprotocols(r) {
		if p == proto {
			return true
		}
	}
	return false
}

// readLoop reads until the peer goes away. A panic while handling a
// message is answered with an error to that message; the connection stays
// open. On a plain TCP connection it waits for the socket with a shallow
// stack, and once it has read something and gorilla holds nothing more, it
// hands over to a fresh goroutine and ends (see wsSock).
func (c *wsConn) readLoop() {
	handedOver := false
	defer func() {
		if !handedOver {
			c.teardown()
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			_ = c.s.guard.Caught("ws.reader", v)
		}
	}()
	deep := false // this goroutine went past the shallow wait: its stack may have grown
	for {
		if c.sock != nil && c.sock.drained() {
			if deep {
				handedOver = true
				go c.readLoop()
				return
			}
			if err := c.sock.wait(); err != nil {
				return
			}
			// Gorilla's own handlers, as its read path would call them.
			op, err := c.sock.control(func(p []byte) error { return c.ws.PingHandler()(string(p)) },
				func() { _ = c.ws.PongHandler()("") })
			if err != nil {
				return
			}
			if op != 0 {
				deep = op == opPing // answering wrote through gorilla
				continue
			}
			deep = true
		}
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		if c.sock != nil {
			c.sock.returned()
		}
		c.lastSeen.Store(time.Now().UnixNano())
		if !c.waitRoom() {
			return
		}
		c.handleSafe(data)
	}
}

// handleSafe handles one message, answering HANDLER_ERROR if it panics.
func (c *wsConn) handleSafe(data []byte) {
	defer func() {
		if v := recover(); v != nil {
			_ = c.s.guard.Caught("ws.handler", v)
			c.fail(messageID(data), "HANDLER_ERROR", "internal error") // marks the message's span failed
		}
		// The message's span ends here, after a panic's answer marked it.
		if c.span != nil {
			c.endMessageSpan(c.span)
		}
	}()
	c.handle(data)
}

// readHold is the queue length at which the reader waits: the answers of
// the turns in flight, which come without reading anything, must still fit.
func (c *wsConn) readHold() int {
	if n := c.s.opts.WSSendQueue - maxTurnsPerConn - 2; n > 1 {
		return n
	}
	return 1
}

// waitRoom holds the reader while the connection's outgoing queue is over
// half full, so a client that pipelines requests faster than it reads the
// answers is slowed down (its requests wait in the socket) instead of
// dropped. A client that reads nothing for the write timeout is dropped.
func (c *wsConn) waitRoom() bool {
	var timer *time.Timer
	for {
		c.mu.Lock()
		closed := c.closed
		full := len(c.queue) >= c.readHold() || c.queued >= c.s.opts.WSSendQueueBytes/2
		if full && c.room == nil {
			c.room = make(chan struct{}, 1)
		}
		room := c.room
		c.mu.Unlock()
		if closed {
			return false
		}
		if !full {
			if timer != nil {
				timer.Stop()
			}
			return true
		}
		if timer == nil {
			timer = time.NewTimer(c.s.opts.WSWriteTimeout)
		}
		select {
		case <-room:
		case <-timer.C:
			c.dropSlow()
			return false
		}
	}
}

func (c *wsConn) teardown() {
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

// closeGrace is how long a closed connection waits for the peer's close
// frame before the socket is closed.
const closeGrace = 2 * time.Second

// CloseWith closes the connection with a close frame. It never blocks: the
// frame is sent by the writer after the message it is writing (so a client
// that reads slowly still receives the code), then the peer has closeGrace
// to answer before the socket is closed.
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
	c.queued = 0
	c.closeMsg = websocket.FormatCloseMessage(code, reason)
	start := !c.writing
	c.writing = true
	room := c.room
	c.mu.Unlock()
	select {
	case room <- struct{}{}:
	default:
	}
	if start {
		go c.writeLoop()
	}
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
	id     json.RawMessage // the client's id of the message that started the stream
	turnID string          // deltas merge only within one turn
	offset int             // code points streamed up to the end of chunk
	chunk  []byte
}

// bytes returns the message's encoding; a delta is encoded into dst.
func (m outMsg) bytes(dst []byte) []byte {
	if m.delta == nil {
		return m.data
	}
	return appendDelta(dst, m.delta)
}

// appendDelta appends a stream.delta message: the fields of wsOut, in its
// order, without reflection (one is written per streamed chunk).
func appendDelta(dst []byte, d *pendingDelta) []byte {
	dst = append(dst, `{"type":"stream.delta"`...)
	if len(d.id) > 0 && string(d.id) != "null" {
		dst = append(dst, `,"id":`...)
		if bytes.ContainsAny(d.id, " \t\r\n") {
			// The id came from the decoder, so it is valid JSON; it is
			// echoed compacted, as encoding/json does.
			var b bytes.Buffer
			if json.Compact(&b, d.id) != nil {
				b.Reset()
				b.WriteString("null")
			}
			dst = append(dst, b.Bytes()...)
		} else {
			dst = append(dst, d.id...)
		}
	}
	dst = append(dst, `,"chunk":`...)
	dst = llm.AppendJSONString(dst, unsafe.String(unsafe.SliceData(d.chunk), len(d.chunk)))
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendInt(dst, int64(d.offset), 10)
	if d.turnID != "" {
		dst = append(dst, `,"turnId":`...)
		dst = llm.AppendJSONString(dst, d.turnID)
	}
	return append(dst, '}')
}

// send queues one message; a peer that lets its queue fill is dropped.
func (c *wsConn) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.s.log.Error("encode ws message", zap.Error(err))
		return
	}
	c.enqueue(outMsg{data: b}, nil)
}

// sendDelta queues a stream.delta, merging it into a delta of the same
// turn still waiting in the queue.
func (c *wsConn) sendDelta(id json.RawMessage, turnID string, chunk string, offset int) {
	c.enqueue(outMsg{}, &pendingDelta{id: id, turnID: turnID, offset: offset, chunk: []byte(chunk)})
}

func (c *wsConn) enqueue(m outMsg, d *pendingDelta) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	size := len(m.data)
	if d != nil {
		size = len(d.chunk)
	}
	if c.queued+size > c.s.opts.WSSendQueueBytes {
		c.mu.Unlock()
		c.dropSlow()
		return
	}
	if d != nil {
		if n := len(c.queue); n > 0 {
			if last := c.queue[n-1].delta; last != nil && last.turnID == d.turnID && string(last.id) == string(d.id) {
				last.chunk = append(last.chunk, d.chunk...)
				last.offset = d.offset
				c.queued += size
				c.mu.Unlock()
				return
			}
		}
		m = outMsg{delta: d}
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

// writeLoop writes queued messages, then the close frame if one was asked
// for, and exits when there is nothing left.
func (c *wsConn) writeLoop() {
	defer func() {
		if v := recover(); v != nil {
			_ = c.s.guard.Caught("ws.writer", v)
			_ = c.ws.Close()
		}
	}()
	var scratch []byte // delta encodings, reused while the writer runs
	for {
		c.mu.Lock()
		if c.closed {
			frame := c.closeMsg
			c.closeMsg = nil
			c.mu.Unlock() // writing stays true: no writer starts again
			if frame != nil {
				_ = c.ws.WriteControl(websocket.CloseMessage, frame, time.Now().Add(c.s.opts.WSWriteTimeout))
				_ = c.ws.SetReadDeadline(time.Now().Add(closeGrace))
			}
			return
		}
		if len(c.queue) == 0 {
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
		msg := m.bytes(scratch[:0])
		if m.delta != nil {
			scratch = msg
		}
		if m.delta != nil {
			c.queued -= len(m.delta.chunk)
		} else {
			c.queued -= len(m.data)
		}
		room := c.room
		c.mu.Unlock()
		select {
		case room <- struct{}{}:
		default:
		}
		_ = c.ws.SetWriteDeadline(time.Now().Add(c.s.opts.WSWriteTimeout))
		if err := c.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			c.mu.Lock()
			c.closed = true
			c.queue = nil
			c.mu.Unlock()
			_ = c.ws.Close() // the reader sees it and tears down
			return
		}
	}
}

type wsIn struct {
	Type           string               `json:"type"`
	ID             json.RawMessage      `json:"id"`
	SessionID      *string              `json:"sessionId"`
	Input          *string              `json:"input"`
	Options        *session.ForkOptions `json:"options"`
	IdempotencyKey string               `json:"idempotencyKey"`
	IfBusy         string               `json:"ifBusy"`
	TurnID         *string              `json:"turnId"`
	From           *int                 `json:"from"`
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
	Offset    *int            `json:"offset,omitempty"`
	TurnID    string          `json:"turnId,omitempty"`
	State     string          `json:"state,omitempty"`
	Event     string          `json:"event,omitempty"`
	Session   *SessionMeta    `json:"session,omitempty"`
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
	c.failSpan(code, msg)
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

// messageID returns the id of a raw message, if it has one.
func messageID(data []byte) json.RawMessage {
	var raw struct {
		ID json.RawMessage `json:"id"`
	}
	_ = json.Unmarshal(data, &raw)
	return raw.ID
}

func (c *wsConn) handle(data []byte) {
	var m wsIn
	if !json.Valid(data) {
		c.fail(nil, "PARSE_ERROR", "message is not valid JSON")
		return
	}
	if len(bytes.TrimSpace(data)) == 0 || bytes.TrimSpace(data)[0] != '{' {
		c.fail(nil, "BAD_REQUEST", "type is required: a message must be a JSON object with a type field")
		return
	}
	if err := decodeJSON(data, &m); err != nil {
		_, msg := wsCode(err)
		c.fail(messageID(data), "BAD_REQUEST", "invalid message: "+msg)
		return
	}
	if len(m.ID) > 0 && m.ID[0] != '"' && string(m.ID) != "null" {
		c.fail(nil, "BAD_REQUEST", "id must be a string")
		return
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	ctx, _ := c.messageSpan(m.Type) // ended by handleSafe
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
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
			c.fail(m.ID, "BUSY", "too many turns in flight on this connection; wait for an answer")
			return
		}
		c.startTurn(ctx, m.ID, c.entered, *m.Input, m.Type == "session.stream",
			space.TurnOptions{IdempotencyKey: m.IdempotencyKey, IfBusy: m.IfBusy})
	case "turn.attach":
		c.attachTurn(ctx, m)
	case "turn.cancel":
		if m.TurnID == nil || *m.TurnID == "" {
			c.fail(m.ID, "BAD_REQUEST", "turnId is required")
			return
		}
		sid := c.entered
		if m.SessionID != nil && *m.SessionID != "" {
			sid = *m.SessionID
		}
		if sid == "" {
			c.fail(m.ID, "NOT_ENTERED", "not in a session; send session.enter first or give sessionId")
			return
		}
		if _, err := c.s.spaces.CancelTurn(ctx, c.userID, c.spaceID, sid, *m.TurnID); err != nil {
			c.failErr(m.ID, err)
			return
		}
	case "space.subscribe":
		if err := c.s.spaces.Subscribe(ctx, c.userID, c.spaceID, c); err != nil {
			c.failErr(m.ID, err)
		}
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

// follower streams a turn to the connection: stream.start, deltas, then
// the outcome (stream.end or turn.complete, or an error with the turn id).
func (c *wsConn) follower(id json.RawMessage, sessionID string, stream bool, done func()) space.Follower {
	var turnID string // set by OnStart, before anything else is called
	f := space.Follower{
		OnStart: func(tid string) {
			turnID = tid
			if stream {
				o := out("stream.start", id)
				o.TurnID, o.SessionID = tid, sessionID
				c.send(o)
			}
		},
		Then: func(res session.TurnResult, err error) {
			if done != nil {
				defer done()
			}
			if err != nil {
				code, msg := wsCode(err)
				o := out("error", id)
				o.Message, o.Code, o.TurnID = msg, code, turnID
				c.send(o)
				return
			}
			typ := "turn.complete"
			if stream {
				typ = "stream.end"
			}
			o := out(typ, id)
			tr := toTurn(res)
			o.Result, o.TurnID = &tr, res.TurnID
			c.send(o)
		},
	}
	if stream {
		f.OnDelta = func(chunk string, offset int) { c.sendDelta(id, turnID, chunk, offset) }
	}
	return f
}

// startTurn hands a turn to the space from the reader goroutine, so turns
// sent on one connection to one session run in the order they were sent;
// the answer is queued when it comes. Closing the socket does not cancel
// the turn: it completes and is persisted; its answer is dropped.
func (c *wsConn) startTurn(ctx context.Context, id json.RawMessage, sessionID, input string, stream bool, o space.TurnOptions) {
	o.Follower = c.follower(id, sessionID, stream, func() { c.turns.Add(-1) })
	if _, err := c.s.spaces.SubmitTurn(ctx, c.userID, c.spaceID, sessionID, input, o); err != nil {
		c.turns.Add(-1)
		c.failErr(id, err)
	}
}

// attachTurn follows a turn of the entered session (or of sessionId) from
// an offset: what was streamed so far, then live deltas, then the end.
func (c *wsConn) attachTurn(ctx context.Context, m wsIn) {
	if m.TurnID == nil || *m.TurnID == "" {
		c.fail(m.ID, "BAD_REQUEST", "turnId is required")
		return
	}
	from := 0
	if m.From != nil {
		if *m.From < 0 {
			c.fail(m.ID, "BAD_REQUEST", "from must be a non-negative integer")
			return
		}
		from = *m.From
	}
	sid := c.entered
	if m.SessionID != nil && *m.SessionID != "" {
		sid = *m.SessionID
	}
	if sid == "" {
		c.fail(m.ID, "NOT_ENTERED", "not in a session; send session.enter first or give sessionId")
		return
	}
	if c.turns.Add(1) > maxTurnsPerConn {
		c.turns.Add(-1)
		c.fail(m.ID, "BUSY", "too many turns in flight on this connection; wait for an answer")
		return
	}
	if err := c.s.spaces.FollowTurn(ctx, c.userID, c.spaceID, sid, *m.TurnID, from, c.follower(m.ID, sid, true, func() { c.turns.Add(-1) })); err != nil {
		c.turns.Add(-1)
		c.failErr(m.ID, err)
	}
}

// Event implements space.Subscriber: it queues a space.event, never
// blocking (a subscriber that cannot keep up is dropped like any client).
func (c *wsConn) Event(ev space.SpaceEvent) {
	o := wsOut{Type: "space.event", Event: ev.Event, SessionID: ev.SessionID, TurnID: ev.TurnID}
	if ev.Session != nil {
		meta := toMeta(*ev.Session)
		o.Session = &meta
	}
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
			h.tick(every)
		}
	}
}

// tick pings every connection once and drops those that stopped answering.
func (h *pingHub) tick(every time.Duration) {
	defer func() {
		if v := recover(); v != nil {
			_ = h.s.guard.Caught("ws.ping", v)
		}
	}()
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
