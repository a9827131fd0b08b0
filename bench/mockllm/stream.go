package mockllm

import (
	"io"
	"net/http"
	"time"
	"unicode/utf8"
)

// argFragment is the target size of a streamed tool-call arguments fragment.
const argFragment = 16

var doneEvent = []byte("data: [DONE]\n\n")

// streamer writes one server-sent-events answer.
type streamer struct {
	w    io.Writer
	fl   http.Flusher // nil when the writer cannot flush
	st   *state
	done <-chan struct{}
	// next is when the next token is due; interval is the pacing step.
	next     time.Time
	interval time.Duration
	first    bool
}

// emit writes v as one "data:" event and flushes.
func (sw *streamer) emit(v any) bool {
	if err := sw.st.encode("data: ", v, "\n\n"); err != nil {
		return false
	}
	return sw.write(sw.st.out.Bytes())
}

func (sw *streamer) write(b []byte) bool {
	if _, err := sw.w.Write(b); err != nil {
		return false
	}
	if sw.fl != nil {
		sw.fl.Flush()
	}
	return true
}

// step waits until the next token is due: the first token is due at the
// TTFT deadline, each later one interval after its predecessor. Deadlines are
// absolute so write time does not slow the rate down.
func (sw *streamer) step() bool {
	if sw.first {
		sw.first = false
	} else {
		sw.next = sw.next.Add(sw.interval)
	}
	if sw.interval <= 0 {
		select {
		case <-sw.done:
			return false
		default:
			return true
		}
	}
	return sw.st.sleep(sw.done, time.Until(sw.next))
}

// stream answers a as text/event-stream: role chunk, content chunks,
// tool-call deltas, finish chunk, optional usage chunk, [DONE].
func (s *Server) stream(w http.ResponseWriter, st *state, done <-chan struct{}, a *answer, includeUsage bool) {
	h := w.Header()
	h["Content-Type"] = hvEventStream
	h["Cache-Control"] = hvNoCache
	h["X-Accel-Buffering"] = hvNo
	h.Set("X-Request-Id", a.id)
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	sw := &streamer{w: w, fl: fl, st: st, done: done, interval: s.interval, first: true}
	sw.next = time.Now().Add(s.cfg.TTFT)
	if !st.sleep(done, time.Until(sw.next)) {
		return
	}

	st.ck = chunk{ID: a.id, Object: "chat.completion.chunk", Created: a.created, Model: a.model, Choices: st.cc[:]}
	c := &st.cc[0]
	*c = chunkChoice{}

	// Role chunk, like OpenAI: {"role":"assistant","content":""}.
	st.text = ""
	c.Delta = delta{Role: "assistant", Content: &st.text}
	if !sw.emit(&st.ck) {
		return
	}

	content := func(t string) bool {
		if !sw.step() {
			return false
		}
		st.text = t
		c.Delta = delta{Content: &st.text}
		return sw.emit(&st.ck)
	}
	if len(a.chunks) > 0 {
		for _, t := range a.chunks {
			if !content(t) {
				return
			}
		}
	} else {
		for pos := 0; pos < len(a.content); {
			end := nextToken(a.content, pos)
			if !content(a.content[pos:end]) {
				return
			}
			pos = end
		}
	}

	if a.endEarly {
		return
	}
	for i, tc := range a.toolCalls {
		if !sw.step() {
			return
		}
		st.td[0] = toolCallDelta{Index: i, ID: tc.ID, Type: "function", Function: functionDelta{Name: tc.Name}}
		c.Delta = delta{ToolCalls: st.td[:]}
		if !sw.emit(&st.ck) {
			return
		}
		ok := true
		forEachFragment(tc.Arguments, func(frag string) bool {
			if ok = sw.step(); !ok {
				return false
			}
			st.td[0] = toolCallDelta{Index: i, Function: functionDelta{Arguments: frag}}
			ok = sw.emit(&st.ck)
			return ok
		})
		if !ok {
			return
		}
	}

	st.finish = a.finish
	c.Delta = delta{}
	c.FinishReason = &st.finish
	if !sw.emit(&st.ck) {
		return
	}
	if includeUsage {
		st.us = a.usage
		st.ck.Choices = st.cc[:0] // "choices":[]
		st.ck.Usage = &st.us
		if !sw.emit(&st.ck) {
			return
		}
	}
	sw.write(doneEvent)
}

// forEachFragment splits args into at least two fragments (the last may be
// empty when args is too short to split), cut on UTF-8 boundaries, and calls
// fn for each until it returns false.
func forEachFragment(args string, fn func(string) bool) {
	size := argFragment
	if len(args) <= 2*argFragment {
		size = max((len(args)+1)/2, 1)
	}
	n := 0
	for pos := 0; pos < len(args); {
		end := min(pos+size, len(args))
		for end < len(args) && !utf8.RuneStart(args[end]) {
			end++
		}
		if !fn(args[pos:end]) {
			return
		}
		n++
		pos = end
	}
	for ; n < 2; n++ {
		if !fn("") {
			return
		}
	}
}
