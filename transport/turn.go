package transport

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/space"
)

// deltaBuffer collects streamed chunks from a turn's goroutine without ever
// blocking it; the consumer drains it when notified. It holds at most max
// bytes: past that the consumer is too slow, the buffer is marked
// overflowed and drops what comes, and the consumer gives up on the client
// (the turn itself goes on).
type deltaBuffer struct {
	mu         sync.Mutex
	chunks     []string
	size       int
	max        int
	overflowed bool
	notify     chan struct{}
}

func newDeltaBuffer(max int) *deltaBuffer {
	return &deltaBuffer{notify: make(chan struct{}, 1), max: max}
}

func (d *deltaBuffer) push(chunk string) {
	d.mu.Lock()
	if d.overflowed || d.size+len(chunk) > d.max {
		d.overflowed = true
		d.chunks = nil
		d.size = 0
	} else {
		d.chunks = append(d.chunks, chunk)
		d.size += len(chunk)
	}
	d.mu.Unlock()
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

// drain takes the waiting chunks; ok is false once the buffer overflowed.
func (d *deltaBuffer) drain() (chunks []string, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.chunks
	d.chunks = nil
	d.size = 0
	return c, !d.overflowed
}

type turnBody struct {
	Input *string `json:"input"`
}

func wantsSSE(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// turn runs a turn. A client that goes away does not cancel it: the turn
// completes and is persisted, and its result is dropped.
func (s *Server) turn(w http.ResponseWriter, r *http.Request) {
	var b turnBody
	if err := s.decode(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	if b.Input == nil || *b.Input == "" {
		s.writeError(w, r, badField("input", "is required and must be non-empty"))
		return
	}
	if !wantsSSE(r) {
		res, err := s.spaces.Turn(r.Context(), userID(r), spaceID(r), sessionID(r), *b.Input, nil)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, toTurn(res))
		return
	}
	s.streamTurn(w, r, *b.Input)
}

// streamTurn answers a turn as Server-Sent Events. Every stream ends with
// `end` or `error`; a client that stops reading is disconnected (bounded
// buffer, write deadline) without cancelling the turn.
func (s *Server) streamTurn(w http.ResponseWriter, r *http.Request, input string) {
	buf := newDeltaBuffer(s.opts.SSEQueueBytes)
	p, err := s.spaces.SubmitTurn(userID(r), spaceID(r), sessionID(r), input, space.TurnOptions{OnDelta: buf.push})
	if err != nil {
		s.writeError(w, r, err) // nothing was streamed yet: an ordinary JSON error
		return
	}
	rc := http.NewResponseController(w)
	started := false
	start := func() {
		if started {
			return
		}
		started = true
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
	}
	// flush writes what is waiting within the write deadline; false means
	// the client is gone or too slow.
	flush := func(events func() error) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.opts.WSWriteTimeout))
		if err := events(); err != nil {
			return false
		}
		if started && rc.Flush() != nil {
			return false
		}
		return true
	}
	writeDeltas := func() error {
		chunks, ok := buf.drain()
		if !ok {
			s.log.Info("dropping slow SSE client", zap.String("space", spaceID(r)))
			return errSlowClient
		}
		for _, c := range chunks {
			start()
			if err := writeEvent(w, "delta", map[string]string{"chunk": c}); err != nil {
				return err
			}
		}
		return nil
	}
	fail := func(err error) {
		if !started {
			s.writeError(w, r, err)
			return
		}
		flush(func() error { return writeEvent(w, "error", classify(err)) })
	}
	for {
		select {
		case <-buf.notify:
			if !flush(writeDeltas) {
				return // client gone or too slow; the turn goes on
			}
		case <-p.Done():
			res, err := p.Result()
			if !flush(writeDeltas) {
				return
			}
			if err != nil {
				fail(err)
				return
			}
			flush(func() error {
				start()
				return writeEvent(w, "end", map[string]any{"result": toTurn(res)})
			})
			return
		case <-s.aborting:
			fail(fmt.Errorf("%w: the server is shutting down; the turn may still complete", space.ErrUnavailable))
			return
		case <-r.Context().Done():
			return
		}
	}
}

var errSlowClient = errors.New("client too slow")

func writeEvent(w http.ResponseWriter, event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}
