package space

import (
	"context"
	"fmt"
)

// commitFn is the database half of a write; it runs as a task with a
// deadline of its own, never the caller's.
type commitFn func(ctx context.Context) (any, error)

// applyFn updates the actor's memory after the commit succeeded and returns
// the caller's answer.
type applyFn func(s *spaceActor, committed any) (any, error)

// writeOp is one write to a space: checked against the actor's memory when
// its turn comes (writes of a space run one at a time, in arrival order),
// committed by a task, then applied to memory. Reads go on meanwhile.
type writeOp struct {
	userID  string
	prepare func(s *spaceActor) (commitFn, applyFn, error)
	reply   chan result
}

func (w *writeOp) answer(v any, err error) {
	select {
	case w.reply <- result{v, err}:
	default:
	}
}

// writeDone reports a committed (or failed) write.
type writeDone struct {
	w     *writeOp
	apply applyFn
	v     any
	err   error
}

func (s *spaceActor) enqueueWrite(w *writeOp) {
	s.writes = append(s.writes, w)
	s.work++
	if !s.writing {
		s.nextWrite()
	}
}

// nextWrite starts the next write whose checks pass; a write that fails
// its checks is answered at once.
func (s *spaceActor) nextWrite() {
	for len(s.writes) > 0 {
		w := s.writes[0]
		s.writes[0] = nil
		s.writes = s.writes[1:]
		commit, apply, err := w.prepare(s)
		if err != nil {
			s.work--
			w.answer(nil, err)
			continue
		}
		if commit == nil { // nothing to write
			s.work--
			v, err := apply(s, nil)
			w.answer(v, err)
			continue
		}
		s.writing = true
		timeout := s.m.opts.WriteTimeout
		s.task(func(ctx context.Context) any {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			v, err := commit(ctx)
			return &writeDone{w: w, apply: apply, v: v, err: err}
		}, func(err error) any { return &writeDone{w: w, err: err} })
		return
	}
	s.writes = nil
	s.writing = false
}

func (s *spaceActor) finishWrite(d *writeDone) {
	s.work--
	s.writing = false
	v, err := d.v, d.err
	if err == nil && d.apply != nil {
		v, err = d.apply(s, v)
	}
	d.w.answer(v, err)
	if s.a.Stopping() {
		return
	}
	s.nextWrite()
}

// write runs a write on the space's actor and waits for its answer: ctx
// bounds the wait only; the write itself completes (or not) on its own
// deadline, and the actor's memory always matches what was committed.
func (m *Manager) write(ctx context.Context, userID, spaceID string, prepare func(s *spaceActor) (commitFn, applyFn, error)) (any, error) {
	if err := checkSpaceID(spaceID); err != nil {
		return nil, err
	}
	w := &writeOp{userID: userID, prepare: prepare, reply: make(chan result, 1)}
	if err := m.sys.Send(spaceID, w); err != nil {
		return nil, mapSendErr(err)
	}
	select {
	case r := <-w.reply:
		return r.v, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the space: %w", ctx.Err())
	}
}

func writeTyped[T any](ctx context.Context, m *Manager, userID, spaceID string, prepare func(s *spaceActor) (commitFn, applyFn, error)) (T, error) {
	v, err := m.write(ctx, userID, spaceID, prepare)
	if err != nil {
		var zero T
		return zero, err
	}
	return v.(T), nil
}
