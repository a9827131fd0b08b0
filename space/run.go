package space

import (
	"context"
	"sync"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/stellohq/stello/session"
)

// Follower receives a turn's stream: text from an offset, then the
// outcome. Its functions are called with the run's lock held, in order, and
// must not block.
type Follower struct {
	// OnStart receives the turn's id before anything else. May be nil.
	OnStart func(turnID string)
	// OnDelta receives streamed text and the offset (in code points of the
	// whole streamed text) just after it. May be nil.
	OnDelta func(chunk string, offset int)
	// Then receives the outcome, once. May be nil.
	Then func(res session.TurnResult, err error)
}

// turnRun is a queued or running turn: its log row so far, the text
// streamed so far and its followers. The actor owns the scheduling fields;
// the stream fields are shared with the turn's task under mu.
type turnRun struct {
	log    session.TurnLog // ID, space, session, input, key, created; State owned by the actor
	node   *node
	stream bool // the model call streams (its submitter asked for deltas)

	// Owned by the actor.
	cancel       context.CancelFunc // set while running
	cancelled    bool               // a cancel was asked for
	cancelWaiter []func(session.TurnLog)

	// The turn's spans (nil when not traced): set on acceptance, the wait
	// ended when the turn starts, both ended by finish.
	span, wait trace.Span

	mu        sync.Mutex
	text      []byte
	cps       int // code points in text
	followers []Follower
	done      bool
	res       session.TurnResult
	err       error
}

// push appends streamed text and hands it to every follower.
func (r *turnRun) push(chunk string) {
	if chunk == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.text = append(r.text, chunk...)
	r.cps += utf8.RuneCountInString(chunk)
	for _, f := range r.followers {
		if f.OnDelta != nil {
			f.OnDelta(chunk, r.cps)
		}
	}
}

// follow adds a follower from code point offset from: the text streamed so
// far after from comes first as one chunk, then live deltas, then the
// outcome. It reports false when the run already finished (the caller then
// serves the stored outcome).
func (r *turnRun) follow(from int, f Follower) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return false
	}
	if f.OnStart != nil {
		f.OnStart(r.log.ID)
	}
	if from < r.cps && f.OnDelta != nil {
		f.OnDelta(string(r.text[byteOffset(r.text, from):]), r.cps)
	}
	r.followers = append(r.followers, f)
	return true
}

// finish records the outcome and tells every follower, once.
func (r *turnRun) finish(res session.TurnResult, err error) {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done, r.res, r.err = true, res, err
	fs := r.followers
	r.followers = nil
	r.text = nil
	r.mu.Unlock()
	r.endSpans(res, err)
	for _, f := range fs {
		if f.Then != nil {
			f.Then(res, err)
		}
	}
}

// byteOffset returns the byte index of code point n in b (len(b) past the
// end).
func byteOffset(b []byte, n int) int {
	i := 0
	for ; n > 0 && i < len(b); n-- {
		_, size := utf8.DecodeRune(b[i:])
		i += size
	}
	return i
}

// Suffix returns s from code point offset n.
func Suffix(s string, n int) string {
	return s[byteOffset([]byte(s), n):]
}
