package transport

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/stellohq/stello/session"
)

// deltaBuffer collects streamed chunks from a turn's goroutine without ever
// blocking it; the consumer drains it when notified. Its size is bounded by
// the model's reply length.
type deltaBuffer struct {
	mu     sync.Mutex
	chunks []string
	notify chan struct{}
}

func newDeltaBuffer() *deltaBuffer { return &deltaBuffer{notify: make(chan struct{}, 1)} }

func (d *deltaBuffer) push(chunk string) {
	d.mu.Lock()
	d.chunks = append(d.chunks, chunk)
	d.mu.Unlock()
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

func (d *deltaBuffer) drain() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.chunks
	d.chunks = nil
	return c
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

type turnOutcome struct {
	res session.TurnResult
	err error
}

func (s *Server) streamTurn(w http.ResponseWriter, r *http.Request, input string) {
	buf := newDeltaBuffer()
	done := make(chan turnOutcome, 1)
	uid, sp, sid := userID(r), spaceID(r), sessionID(r)
	go func() {
		res, err := s.spaces.Turn(r.Context(), uid, sp, sid, input, buf.push)
		done <- turnOutcome{res, err}
	}()
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
	writeDeltas := func() error {
		for _, c := range buf.drain() {
			start()
			if err := writeEvent(w, "delta", map[string]string{"chunk": c}); err != nil {
				return err
			}
		}
		if started {
			return rc.Flush()
		}
		return nil
	}
	for {
		select {
		case <-buf.notify:
			if err := writeDeltas(); err != nil {
				return // client gone; the turn goes on
			}
		case o := <-done:
			if err := writeDeltas(); err != nil {
				return
			}
			if o.err != nil {
				if !started {
					s.writeError(w, r, o.err)
					return
				}
				ae := classify(o.err)
				_ = writeEvent(w, "error", ae)
				_ = rc.Flush()
				return
			}
			start()
			_ = writeEvent(w, "end", map[string]any{"result": toTurn(o.res)})
			_ = rc.Flush()
			return
		case <-r.Context().Done():
			return
		}
	}
}

func writeEvent(w http.ResponseWriter, event string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	return err
}
