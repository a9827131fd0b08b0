package transport

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/stellohq/stello/llm"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// deltaBuffer holds the text streamed to one SSE response and not yet
// written: the turn's task appends to it without ever blocking, the
// response's goroutine takes it all at once (so chunks that arrive while a
// write is in flight are coalesced into one event). It is bounded: when
// text is waiting and a chunk would take it past max bytes it overflows and
// the client is dropped. A chunk into an empty buffer is always taken: a
// resume's catch-up comes as one chunk, however long the text so far.
type deltaBuffer struct {
	mu         sync.Mutex
	text       []byte // waiting text
	offset     int    // code point offset just after text
	max        int
	overflowed bool
	notify     chan struct{}
}

func newDeltaBuffer(max int) *deltaBuffer {
	return &deltaBuffer{notify: make(chan struct{}, 1), max: max}
}

func (d *deltaBuffer) push(chunk string, offset int) {
	d.mu.Lock()
	if d.overflowed || (len(d.text) > 0 && len(d.text)+len(chunk) > d.max) {
		d.overflowed = true
		d.text = nil
	} else {
		d.text = append(d.text, chunk...)
		d.offset = offset
	}
	d.mu.Unlock()
	d.wake()
}

func (d *deltaBuffer) wake() {
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

// drain appends the waiting text to dst as one delta event and reports
// the offset after it; dst comes back unchanged when nothing waits (and the
// offset means nothing then), and ok is false once the buffer overflowed.
func (d *deltaBuffer) drain(dst []byte) (out []byte, offset int, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.overflowed {
		return dst, 0, false
	}
	if len(d.text) > 0 {
		dst = appendDeltaEvent(dst, d.offset, d.text)
		d.text = d.text[:0]
	}
	return dst, d.offset, true
}

// appendDeltaEvent appends `id: <offset>`, `event: delta` and the data
// {"chunk": text} of one SSE delta event.
func appendDeltaEvent(dst []byte, offset int, text []byte) []byte {
	dst = append(dst, "id: "...)
	dst = strconv.AppendInt(dst, int64(offset), 10)
	dst = append(dst, "\nevent: delta\ndata: {\"chunk\":"...)
	dst = llm.AppendJSONString(dst, unsafe.String(unsafe.SliceData(text), len(text)))
	return append(dst, "}\n\n"...)
}

// sseFollower is what an SSE response follows: the turn's id, its deltas
// and its outcome, handed over without blocking the turn.
type sseFollower struct {
	buf     *deltaBuffer
	mu      sync.Mutex
	turnID  string
	started chan struct{}
	done    chan struct{}
	res     session.TurnResult
	err     error
	once    sync.Once
}

func newSSEFollower(max int) *sseFollower {
	return &sseFollower{buf: newDeltaBuffer(max), started: make(chan struct{}), done: make(chan struct{})}
}

func (f *sseFollower) follower() space.Follower {
	return space.Follower{
		OnStart: func(id string) {
			f.mu.Lock()
			if f.turnID == "" {
				f.turnID = id
				close(f.started)
			}
			f.mu.Unlock()
		},
		OnDelta: f.buf.push,
		Then: func(res session.TurnResult, err error) {
			f.once.Do(func() {
				f.res, f.err = res, err
				close(f.done)
			})
		},
	}
}

type turnBody struct {
	Input *string `json:"input"`
}

func wantsSSE(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// turnOptions reads ifBusy and Idempotency-Key.
func turnOptions(r *http.Request) (space.TurnOptions, error) {
	o := space.TurnOptions{IfBusy: r.URL.Query().Get("ifBusy"), IdempotencyKey: r.Header.Get("Idempotency-Key")}
	if err := space.ValidateTurnOptions(o); err != nil {
		var fe *session.FieldError
		if errors.As(err, &fe) && fe.Field == "idempotencyKey" {
			fe.Field = "Idempotency-Key"
		}
		return o, err
	}
	return o, nil
}

// turn runs a turn. A client that goes away does not cancel it: the turn
// completes and is persisted, and its result is dropped.
func (s *Server) turn(w http.ResponseWriter, r *http.Request) {
	o, err := turnOptions(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var b turnBody
	if err := s.decode(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	if b.Input == nil || *b.Input == "" {
		s.writeError(w, r, badField("input", "is required and must be non-empty"))
		return
	}
	sse := wantsSSE(r)
	var f *sseFollower
	if sse {
		f = newSSEFollower(s.opts.SSEQueueBytes)
		o.Follower = f.follower()
	}
	p, err := s.spaces.SubmitTurn(r.Context(), userID(r), spaceID(r), sessionID(r), *b.Input, o)
	if err != nil {
		s.writeError(w, r, err) // nothing was streamed yet: an ordinary JSON error
		return
	}
	w.Header().Set("Stello-Turn-Id", p.ID)
	if !sse {
		res, err := p.Wait(r.Context())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, toTurn(res))
		return
	}
	s.streamSSE(w, r, f, sessionID(r), 0)
}

// getTurn answers GET …/turns/:turnId.
func (s *Server) getTurn(w http.ResponseWriter, r *http.Request) {
	l, err := s.spaces.GetTurn(r.Context(), userID(r), spaceID(r), sessionID(r), chi.URLParam(r, "turnId"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTurnObject(l))
}

// cancelTurn answers POST …/turns/:turnId/cancel with 202 and the turn as
// it ended.
func (s *Server) cancelTurn(w http.ResponseWriter, r *http.Request) {
	l, err := s.spaces.CancelTurn(r.Context(), userID(r), spaceID(r), sessionID(r), chi.URLParam(r, "turnId"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, toTurnObject(l))
}

// ParseOffset reads a resume offset (Last-Event-ID or ?from=): a
// non-negative decimal integer of at most 18 digits.
func ParseOffset(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	if len(v) > 18 {
		return 0, errors.New("too large")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, errors.New("not a non-negative integer")
		}
	}
	return strconv.Atoi(v)
}

// turnStream answers GET …/turns/:turnId/stream: the turn's stream from an
// offset (Last-Event-ID, else ?from=), live or from the turn log.
func (s *Server) turnStream(w http.ResponseWriter, r *http.Request) {
	field, v := "Last-Event-ID", r.Header.Get("Last-Event-ID")
	if v == "" {
		field, v = "from", r.URL.Query().Get("from")
	}
	from, err := ParseOffset(v)
	if err != nil {
		s.writeError(w, r, badField(field, "must be a non-negative integer (a code point offset)"))
		return
	}
	f := newSSEFollower(s.opts.SSEQueueBytes)
	if err := s.spaces.FollowTurn(r.Context(), userID(r), spaceID(r), sessionID(r), chi.URLParam(r, "turnId"), from, f.follower()); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.streamSSE(w, r, f, sessionID(r), from)
}

// streamSSE writes a followed turn as Server-Sent Events: start, deltas
// with their offsets as ids, then end or error. Every stream ends with
// `end` or `error`; a client that stops reading is disconnected (bounded
// buffer, write deadline) without cancelling the turn.
func (s *Server) streamSSE(w http.ResponseWriter, r *http.Request, f *sseFollower, sessionID string, from int) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	offset := from
	// flush writes within the write deadline; false: the client is gone or
	// too slow.
	var renewAt time.Time
	flush := func(events func() error) bool {
		renewWriteDeadline(&renewAt, time.Now(), s.opts.WSWriteTimeout, rc.SetWriteDeadline)
		if err := events(); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	var out []byte // one delta event at a time, reused
	slow := false  // the client fell more than the buffer behind
	writeDeltas := func() error {
		var ok bool
		var after int
		out, after, ok = f.buf.drain(out[:0])
		if !ok {
			slow = true
			return errSlowClient
		}
		if len(out) == 0 {
			return nil
		}
		offset = after
		_, err := w.Write(out)
		return err
	}
	// dropSlow ends the stream of a client that fell more than the buffer
	// behind: its writes went through, so it gets an error event whose id
	// is the offset it has, to resume from. The turn goes on.
	dropSlow := func() {
		s.log.Info("dropping slow SSE client", zap.String("space", spaceID(r)), zap.Int("offset", offset))
		flush(func() error {
			return writeEvent(w, "error", strconv.Itoa(offset), apiErr(http.StatusTooManyRequests, "BUSY", fmt.Sprintf(
				"this stream fell more than %d bytes of text behind its turn and was closed; the turn goes on: resume it from offset %d (this event's id)",
				s.opts.SSEQueueBytes, offset)))
		})
	}
	// flushDeltas writes the text waiting; false: the stream is over.
	flushDeltas := func() bool {
		if flush(writeDeltas) {
			return true
		}
		if slow {
			dropSlow()
		}
		return false
	}
	<-f.started // set before SubmitTurn or FollowTurn returned
	// The start event goes out with whatever text is already there (a
	// resumed stream's catch-up), in one write.
	if !flush(func() error {
		if err := writeEvent(w, "start", strconv.Itoa(from), map[string]string{"turnId": f.turnID, "sessionId": sessionID}); err != nil {
			return err
		}
		return writeDeltas()
	}) {
		if slow {
			dropSlow()
		}
		return
	}
	fail := func(err error) {
		flush(func() error { return writeEvent(w, "error", strconv.Itoa(offset), classify(err)) })
	}
	for {
		select {
		case <-f.buf.notify:
			if !flushDeltas() {
				return // client gone or too slow; the turn goes on
			}
		case <-f.done:
			if !flushDeltas() {
				return
			}
			if f.err != nil {
				fail(f.err)
				return
			}
			flush(func() error {
				return writeEvent(w, "end", strconv.Itoa(offset), map[string]any{"result": toTurn(f.res)})
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

// renewWriteDeadline gives a connection's writes at least timeout to
// complete, renewing the deadline at most once per tenth of timeout (and at
// least once a second): each renewal is a runtime timer update, which per
// streamed event was a few percent of the server's CPU. The deadline is
// set that period further out, so a write has between timeout and timeout
// plus the period. renewAt is the caller's state (monotonic time, so a
// step of the wall clock does not skip renewals).
func renewWriteDeadline(renewAt *time.Time, now time.Time, timeout time.Duration, set func(time.Time) error) {
	if now.Before(*renewAt) {
		return
	}
	period := min(timeout/10, time.Second)
	_ = set(now.Add(timeout + period))
	*renewAt = now.Add(period)
}

func writeEvent(w http.ResponseWriter, event, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if id != "" {
		_, err = fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", id, event, b)
	} else {
		_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
	}
	return err
}
