package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	sse "github.com/tmaxmax/go-sse"
)

// EventType names a streamed turn event.
type EventType string

// The events of a streamed turn, over SSE and WebSocket alike.
const (
	EventStart EventType = "start" // the turn's id; first
	EventDelta EventType = "delta" // a piece of the reply
	EventEnd   EventType = "end"   // the result; last
)

// Event is one event of a streamed turn. A failed turn ends its stream
// with an *Error instead of an EventEnd.
type Event struct {
	Type      EventType
	TurnID    string // start (and, over WebSocket, every event)
	SessionID string // start
	// Chunk is the text of a delta.
	Chunk string
	// Offset counts the code points of streamed text delivered up to and
	// including this event: resuming from it continues right after.
	Offset int
	// Result is the turn's result, on EventEnd.
	Result *TurnResult
}

// Stream is a turn streamed as Server-Sent Events. When the connection
// drops before the turn ended, the stream resumes by itself through
// GET …/turns/:turnId/stream with Last-Event-ID, so Events yields every
// delta once, in order, whatever the network did.
type Stream struct {
	c         *Client
	ctx       context.Context
	spaceID   string
	sessionID string
	body      io.ReadCloser
	header    http.Header

	turnID  string
	offset  int
	started bool
	resumes int
	result  *TurnResult
	used    bool
}

// TurnStream starts a turn streamed as Server-Sent Events. Errors before
// the stream started (a bad input, an archived session, a busy queue) are
// returned here; later ones end Events. Close the stream when done.
func (c *Client) TurnStream(ctx context.Context, spaceID, sessionID, input string, opts ...TurnOption) (*Stream, error) {
	res, err := c.send(ctx, turnRequest(spaceID, sessionID, input, opts, true), http.StatusOK)
	if err != nil {
		return nil, err
	}
	return &Stream{c: c, ctx: ctx, spaceID: spaceID, sessionID: sessionID, body: res.Body, header: res.Header,
		turnID: res.Header.Get("Stello-Turn-Id")}, nil
}

// ResumeStream follows a turn's stream from offset from (0: from the
// start), while it runs or after it finished.
func (c *Client) ResumeStream(ctx context.Context, spaceID, sessionID, turnID string, from int) (*Stream, error) {
	s := &Stream{c: c, ctx: ctx, spaceID: spaceID, sessionID: sessionID, turnID: turnID, offset: from}
	body, err := s.open()
	if err != nil {
		return nil, err
	}
	s.body = body
	return s, nil
}

// open asks for the turn's stream from the current offset.
func (s *Stream) open() (io.ReadCloser, error) {
	h := http.Header{"Accept": {"text/event-stream"}, "Last-Event-Id": {strconv.Itoa(s.offset)}}
	res, err := s.c.send(s.ctx, request{method: "GET", path: turnPath(s.spaceID, s.sessionID, s.turnID) + "/stream", header: h}, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return res.Body, nil
}

// TurnID returns the turn's id, once known (from the Stello-Turn-Id header
// or the start event).
func (s *Stream) TurnID() string { return s.turnID }

// Result returns the turn's result once Events has yielded EventEnd.
func (s *Stream) Result() *TurnResult { return s.result }

// Resumes returns how many times the stream resumed after a dropped
// connection.
func (s *Stream) Resumes() int { return s.resumes }

// Close releases the connection. It does not cancel the turn.
func (s *Stream) Close() error {
	if s.body != nil {
		return s.body.Close()
	}
	return nil
}

// maxEvent bounds one SSE event (a catch-up delta holds the whole reply so
// far).
const maxEvent = 16 << 20

// Events yields the turn's events: EventStart, EventDelta…, EventEnd; a
// failed turn ends with an *Error (errors.Is(err, ErrCancelled) for a
// cancelled one). A dropped connection, or one the server closed because
// it fell too far behind the turn (an error event BUSY), is resumed from
// the last offset received, at most WithResume times; a repeated start is
// not yielded again. Events may be ranged over once.
func (s *Stream) Events() iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if s.used {
			yield(Event{}, fmt.Errorf("stello: a stream's events can be read once"))
			return
		}
		s.used = true
		defer s.Close()
		wait := s.c.wait
		for {
			done, stop, readErr := s.read(yield)
			if done || stop {
				return
			}
			// The connection ended before the turn did: resume.
			if err := s.ctx.Err(); err != nil {
				yield(Event{}, fmt.Errorf("stello: stream: %w", err))
				return
			}
			if s.turnID == "" || s.resumes >= s.c.resume {
				if readErr == nil {
					readErr = errStreamEnded
				}
				yield(Event{}, fmt.Errorf("stello: stream of turn %q broke after %d resumptions: %w", s.turnID, s.resumes, readErr))
				return
			}
			s.resumes++
			t := time.NewTimer(wait)
			select {
			case <-s.ctx.Done():
				t.Stop()
				yield(Event{}, fmt.Errorf("stello: stream: %w", s.ctx.Err()))
				return
			case <-t.C:
			}
			wait = min(2*wait, 5*time.Second)
			_ = s.body.Close()
			body, err := s.open()
			if err != nil {
				if e, ok := err.(*Error); ok && e.Status < 500 {
					yield(Event{}, err) // the turn is not there: resuming cannot help
					return
				}
				s.body = io.NopCloser(&failReader{err})
				continue
			}
			s.body = body
		}
	}
}

// failReader fails every read, so a failed reconnection counts as one
// more broken connection.
type failReader struct{ err error }

func (f *failReader) Read([]byte) (int, error) { return 0, f.err }

// read yields the events of the current connection. done: the turn ended
// (end or error yielded); stop: the consumer stopped.
func (s *Stream) read(yield func(Event, error) bool) (done, stop bool, err error) {
	for ev, rerr := range sse.Read(s.body, &sse.ReadConfig{MaxEventSize: maxEvent}) {
		if rerr != nil {
			return false, false, rerr
		}
		out, terminal, perr := s.parse(ev)
		if perr != nil {
			yield(Event{}, perr)
			return true, false, nil
		}
		if out == nil {
			continue
		}
		if terminal != nil {
			if e, ok := terminal.(*Error); ok && e.Code == "BUSY" && s.started {
				// The connection fell too far behind the turn and the
				// server closed it; the turn goes on: resume.
				return false, false, e
			}
			yield(Event{}, terminal)
			return true, false, nil
		}
		if !yield(*out, nil) {
			return false, true, nil
		}
		if out.Type == EventEnd {
			return true, false, nil
		}
	}
	return false, false, nil
}

// parse decodes one SSE event: out nil means nothing to yield; terminal
// is the turn's error.
func (s *Stream) parse(ev sse.Event) (out *Event, terminal error, err error) {
	switch ev.Type {
	case "start":
		var p struct {
			TurnID    string `json:"turnId"`
			SessionID string `json:"sessionId"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &p); err != nil {
			return nil, nil, fmt.Errorf("stello: bad start event: %w", err)
		}
		if p.TurnID != "" {
			s.turnID = p.TurnID
		}
		if s.started {
			return nil, nil, nil // a resumed connection starts again
		}
		s.started = true
		return &Event{Type: EventStart, TurnID: s.turnID, SessionID: p.SessionID, Offset: s.offset}, nil, nil
	case "delta":
		var p struct {
			Chunk string `json:"chunk"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &p); err != nil {
			return nil, nil, fmt.Errorf("stello: bad delta event: %w", err)
		}
		s.offset = s.eventOffset(ev, s.offset+utf8.RuneCountInString(p.Chunk))
		return &Event{Type: EventDelta, TurnID: s.turnID, Chunk: p.Chunk, Offset: s.offset}, nil, nil
	case "end":
		var p struct {
			Result TurnResult `json:"result"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &p); err != nil {
			return nil, nil, fmt.Errorf("stello: bad end event: %w", err)
		}
		if p.Result.TurnID == "" {
			p.Result.TurnID = s.turnID
		}
		s.offset = s.eventOffset(ev, s.offset)
		s.result = &p.Result
		return &Event{Type: EventEnd, TurnID: s.turnID, Offset: s.offset, Result: &p.Result}, nil, nil
	case "error":
		e := &Error{}
		if err := json.Unmarshal([]byte(ev.Data), e); err != nil || e.Code == "" {
			e = &Error{Code: "INTERNAL", Message: "malformed error event: " + ev.Data}
		}
		if e.TurnID == "" {
			e.TurnID = s.turnID
		}
		s.offset = s.eventOffset(ev, s.offset)
		return &Event{}, e, nil
	}
	return nil, nil, nil // unknown events are ignored, as SSE clients do
}

// eventOffset is the event's id when it has one, else the counted offset.
func (s *Stream) eventOffset(ev sse.Event, counted int) int {
	if n, err := strconv.Atoi(ev.LastEventID); err == nil && n >= 0 && ev.LastEventID != "" {
		return n
	}
	return counted
}
