package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Incoming WebSocket message types.
const (
	MsgEntered      = "session.entered"
	MsgLeft         = "session.left"
	MsgTurnComplete = "turn.complete"
	MsgStreamStart  = "stream.start"
	MsgStreamDelta  = "stream.delta"
	MsgStreamEnd    = "stream.end"
	MsgForked       = "session.forked"
	MsgError        = "error"
	MsgSpaceEvent   = "space.event"
)

// Space event names (ServerMessage.Event of a space.event).
const (
	SpaceSessionCreated  = "session.created"
	SpaceSessionArchived = "session.archived"
	SpaceSessionUpdated  = "session.updated"
	SpaceTurnCommitted   = "turn.committed"
	SpaceMemoryUpdated   = "memory.updated"
	SpaceInsightUpdated  = "insight.updated"
)

// ServerMessage is any message from the server; Type says which fields
// are set.
type ServerMessage struct {
	Type      string       `json:"type"`
	ID        string       `json:"id,omitempty"`
	SessionID string       `json:"sessionId,omitempty"`
	Bootstrap *Bootstrap   `json:"bootstrap,omitempty"` // session.entered
	Result    *TurnResult  `json:"result,omitempty"`    // turn.complete, stream.end
	TurnID    string       `json:"turnId,omitempty"`    // stream.*, turn.complete, error, space.event
	Chunk     string       `json:"chunk,omitempty"`     // stream.delta
	Offset    int          `json:"offset,omitempty"`    // stream.delta
	Child     *SessionMeta `json:"child,omitempty"`     // session.forked
	Message   string       `json:"message,omitempty"`   // error
	Code      string       `json:"code,omitempty"`      // error
	Event     string       `json:"event,omitempty"`     // space.event
	Session   *SessionMeta `json:"session,omitempty"`   // space.event
}

// Err returns the *Error of an error message, else nil.
func (m ServerMessage) Err() error {
	if m.Type != MsgError {
		return nil
	}
	return &Error{Code: m.Code, Message: m.Message, TurnID: m.TurnID}
}

// clientMessage is any message to the server.
type clientMessage struct {
	Type           string       `json:"type"`
	ID             string       `json:"id,omitempty"`
	SessionID      string       `json:"sessionId,omitempty"`
	Input          string       `json:"input,omitempty"`
	IdempotencyKey string       `json:"idempotencyKey,omitempty"`
	IfBusy         IfBusy       `json:"ifBusy,omitempty"`
	Options        *ForkOptions `json:"options,omitempty"`
	TurnID         string       `json:"turnId,omitempty"`
	From           *int         `json:"from,omitempty"`
}

// Conn is a WebSocket connection to one space. Requests (Enter, Message,
// Stream, Fork, Attach…) may be made from several goroutines; their
// answers are matched by message id. Messages that answer no request
// (space events after Subscribe) arrive on Events.
type Conn struct {
	ws     *websocket.Conn
	wmu    sync.Mutex
	nextID atomic.Int64

	mu      sync.Mutex
	pending map[string]*waiter

	events     chan ServerMessage // made on first use: most connections never get one
	eventsOnce sync.Once
	closing    chan struct{} // closed by Close: the reader stops waiting on events
	closed     chan struct{}
	err        error // why the reader ended; set before closed is closed
	once       sync.Once
}

type waiter struct {
	ch   chan *ServerMessage
	gone chan struct{} // closed when the requester stopped listening
}

// Dial opens a WebSocket to a space. The key goes in the X-API-Key header;
// a missing or bad key, another user's space or no such space is an
// *Error with status 401, 403 or 404.
func (c *Client) Dial(ctx context.Context, spaceID string) (*Conn, error) {
	u := "ws" + strings.TrimPrefix(c.base, "http") + spacePath(spaceID) + "/ws"
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	if c.dialer != nil {
		d = *c.dialer
	}
	d.Subprotocols = []string{"stello.v1"}
	ws, res, err := d.DialContext(ctx, u, http.Header{"X-API-Key": {c.key}})
	if err != nil {
		if res != nil {
			defer res.Body.Close()
			if res.StatusCode >= 400 {
				return nil, readError(res)
			}
		}
		return nil, fmt.Errorf("stello: dial %s: %w", u, err)
	}
	conn := &Conn{ws: ws, pending: map[string]*waiter{}, closing: make(chan struct{}), closed: make(chan struct{})}
	go conn.readLoop()
	return conn, nil
}

// readLoop routes incoming messages until the connection ends.
func (c *Conn) readLoop() {
	var end error
	defer func() {
		if v := recover(); v != nil {
			end = fmt.Errorf("stello: websocket reader panicked: %v", v)
		}
		c.err = end
		close(c.closed)
		_ = c.ws.Close()
	}()
	for {
		m := new(ServerMessage)
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			end = fmt.Errorf("stello: websocket closed: %w", err)
			return
		}
		if err := json.Unmarshal(data, m); err != nil {
			continue // not a message of this API
		}
		c.mu.Lock()
		w := c.pending[m.ID]
		c.mu.Unlock()
		if m.ID != "" && w != nil {
			select {
			case w.ch <- m:
			case <-w.gone:
			case <-c.closing: // Close must never wait on a caller that stopped reading
				end = errors.New("stello: websocket closed by the client")
				return
			}
			continue
		}
		select {
		case c.eventsChan() <- *m:
		case <-c.closing:
			end = errors.New("stello: websocket closed by the client")
			return
		}
	}
}

// CloseError returns the close frame the server ended the connection with
// (e.g. 4404 when the space was deleted), once the connection ended.
func (c *Conn) CloseError() *websocket.CloseError {
	select {
	case <-c.closed:
	default:
		return nil
	}
	var ce *websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce
	}
	return nil
}

// Done is closed when the connection ended.
func (c *Conn) Done() <-chan struct{} { return c.closed }

// Events delivers the messages that answer no request: space events after
// Subscribe, and errors the server sent without an id. Read it when you
// subscribed: while it is full, the connection stops reading.
func (c *Conn) Events() <-chan ServerMessage { return c.eventsChan() }

// eventsChan returns the events channel, making it on first use: its
// buffer of 256 messages would otherwise weigh on every idle connection.
func (c *Conn) eventsChan() chan ServerMessage {
	c.eventsOnce.Do(func() { c.events = make(chan ServerMessage, 256) })
	return c.events
}

// Close closes the connection. Running turns are not cancelled.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.closing)
		c.wmu.Lock()
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		c.wmu.Unlock()
	})
	select {
	case <-c.closed:
	case <-time.After(2 * time.Second):
		_ = c.ws.Close()
		<-c.closed
	}
	return nil
}

func (c *Conn) write(ctx context.Context, m clientMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("stello: encode message: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(deadline)
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		return fmt.Errorf("stello: send %s: %w", m.Type, err)
	}
	return nil
}

// exchange sends m with a fresh id and yields its answers until the
// consumer stops.
func (c *Conn) exchange(ctx context.Context, m clientMessage) iter.Seq2[ServerMessage, error] {
	return func(yield func(ServerMessage, error) bool) {
		m.ID = "c" + strconv.FormatInt(c.nextID.Add(1), 10)
		w := &waiter{ch: make(chan *ServerMessage, 64), gone: make(chan struct{})}
		c.mu.Lock()
		c.pending[m.ID] = w
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			delete(c.pending, m.ID)
			c.mu.Unlock()
			close(w.gone)
		}()
		if err := c.write(ctx, m); err != nil {
			yield(ServerMessage{}, err)
			return
		}
		for {
			select {
			case msg := <-w.ch:
				if !yield(*msg, nil) {
					return
				}
			case <-c.closed:
				yield(ServerMessage{}, c.err)
				return
			case <-ctx.Done():
				yield(ServerMessage{}, fmt.Errorf("stello: %s: %w", m.Type, ctx.Err()))
				return
			}
		}
	}
}

// call sends m and returns its one answer of type want, or its error.
func (c *Conn) call(ctx context.Context, m clientMessage, want string) (ServerMessage, error) {
	for msg, err := range c.exchange(ctx, m) {
		if err != nil {
			return ServerMessage{}, err
		}
		if e := msg.Err(); e != nil {
			return msg, e
		}
		if msg.Type == want {
			return msg, nil
		}
	}
	return ServerMessage{}, fmt.Errorf("stello: %s: no answer", m.Type)
}

// Enter enters a session; the connection's turns and forks then go to it.
func (c *Conn) Enter(ctx context.Context, sessionID string) (*Bootstrap, error) {
	m, err := c.call(ctx, clientMessage{Type: "session.enter", SessionID: sessionID}, MsgEntered)
	if err != nil {
		return nil, err
	}
	return m.Bootstrap, nil
}

// Leave leaves the entered session.
func (c *Conn) Leave(ctx context.Context) error {
	_, err := c.call(ctx, clientMessage{Type: "session.leave"}, MsgLeft)
	return err
}

func turnMessage(typ, input string, opts []TurnOption) clientMessage {
	var o turnOpts
	for _, f := range opts {
		f(&o)
	}
	return clientMessage{Type: typ, Input: input, IdempotencyKey: o.key, IfBusy: o.ifBusy}
}

// Message runs a turn in the entered session and returns its result.
func (c *Conn) Message(ctx context.Context, input string, opts ...TurnOption) (*TurnResult, error) {
	m, err := c.call(ctx, turnMessage("session.message", input, opts), MsgTurnComplete)
	if err != nil {
		return nil, err
	}
	if m.Result != nil && m.Result.TurnID == "" {
		m.Result.TurnID = m.TurnID
	}
	return m.Result, nil
}

// Stream runs a streamed turn in the entered session and yields its
// events, as TurnStream does over SSE.
func (c *Conn) Stream(ctx context.Context, input string, opts ...TurnOption) iter.Seq2[Event, error] {
	return c.events2(ctx, turnMessage("session.stream", input, opts))
}

// Attach follows a turn's stream from offset from (0: from the start).
func (c *Conn) Attach(ctx context.Context, turnID string, from int) iter.Seq2[Event, error] {
	return c.events2(ctx, clientMessage{Type: "turn.attach", TurnID: turnID, From: &from})
}

// events2 turns stream.* answers into Events.
func (c *Conn) events2(ctx context.Context, m clientMessage) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		var turnID string
		offset := 0
		for msg, err := range c.exchange(ctx, m) {
			if err != nil {
				yield(Event{}, err)
				return
			}
			if msg.TurnID != "" {
				turnID = msg.TurnID
			}
			switch msg.Type {
			case MsgError:
				yield(Event{}, msg.Err())
				return
			case MsgStreamStart:
				if !yield(Event{Type: EventStart, TurnID: turnID, SessionID: msg.SessionID, Offset: offset}, nil) {
					return
				}
			case MsgStreamDelta:
				offset += len([]rune(msg.Chunk))
				if msg.Offset > 0 {
					offset = msg.Offset
				}
				if !yield(Event{Type: EventDelta, TurnID: turnID, Chunk: msg.Chunk, Offset: offset}, nil) {
					return
				}
			case MsgStreamEnd:
				if msg.Result != nil && msg.Result.TurnID == "" {
					msg.Result.TurnID = turnID
				}
				yield(Event{Type: EventEnd, TurnID: turnID, Offset: offset, Result: msg.Result}, nil)
				return
			}
		}
	}
}

// Fork forks the entered session.
func (c *Conn) Fork(ctx context.Context, o ForkOptions) (*SessionMeta, error) {
	m, err := c.call(ctx, clientMessage{Type: "session.fork", Options: &o}, MsgForked)
	if err != nil {
		return nil, err
	}
	return m.Child, nil
}

// Cancel asks the server to cancel a turn. It returns once the request is
// sent; whoever waits on the turn then gets CANCELLED (unless it committed
// first). An error about the request itself arrives on Events.
func (c *Conn) Cancel(ctx context.Context, turnID string) error {
	return c.write(ctx, clientMessage{Type: "turn.cancel", TurnID: turnID})
}

// Subscribe opts in to the space's events, which then arrive on Events.
func (c *Conn) Subscribe(ctx context.Context) error {
	return c.write(ctx, clientMessage{Type: "space.subscribe"})
}
