package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/stellohq/stello/bench/mockllm"
	"github.com/stellohq/stello/client"
)

// resumeInput is the text a resume client sends: multi-byte characters
// (accents, CJK, Greek, emoji outside the Basic Multilingual Plane), which
// the model quotes in its reply, so offsets counted in code points differ
// from bytes and from UTF-16 units.
func resumeInput(n, round int) string {
	return fmt.Sprintf("Reprise %d·%d: café ☕ 日本語の文章 naïve 🎉 Ελληνικά über straße", n, round)
}

// resumeOutcome is one resumed stream.
type resumeOutcome struct {
	equal       bool          // reassembled text equals the stored finalContent
	offsetOK    bool          // event offsets (their ids) agree with the code points received
	afterEnd    bool          // the stream had ended before the drop point was reached
	toFirstByte time.Duration // drop → the catch-up delta, as the client delivers it
	toStart     time.Duration // drop → the resumed stream's start event, as the client delivers it
	dropAt      int           // code point offset resumed from
}

// resumeOne runs one streamed turn, drops its connection after a random
// number of delta events, resumes it from the offset of the last delta
// seen and checks the reassembled text against the turn as stored. The
// client never resumes by itself (newClient): the drop and the resume are
// this function's.
func resumeOne(ctx context.Context, c *client.Client, rng *rand.Rand, s benchSession, input string, expectDeltas int) (out resumeOutcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("resume client panicked: %v", p)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	first, err := c.TurnStream(ctx, s.space, s.session, input)
	if err != nil {
		return out, err
	}
	defer first.Close()
	turnID := first.TurnID()
	if turnID == "" {
		return out, errors.New("no Stello-Turn-Id header")
	}
	// Drop after keep deltas (0 … expectDeltas-2): once the next event has
	// arrived, so text past the last offset exists when the client
	// reconnects and the catch-up is never empty; that next event is lost
	// with the connection.
	keep := 0
	if expectDeltas > 1 {
		keep = rng.IntN(expectDeltas - 1)
	}
	var seen []client.Event // deltas received, in order
	cut := false
	for ev, err := range first.Events() {
		if err != nil {
			return out, fmt.Errorf("first stream: %w", err)
		}
		if ev.Type == client.EventStart {
			if ev.TurnID != turnID {
				return out, fmt.Errorf("start event names turn %q, not %s", ev.TurnID, turnID)
			}
			continue
		}
		if ev.Type == client.EventDelta && len(seen) < keep {
			seen = append(seen, ev)
			continue
		}
		if ev.Type == client.EventEnd {
			// The reply was shorter than expected: lose its last delta.
			out.afterEnd = true
			if len(seen) > 0 {
				seen = seen[:len(seen)-1]
			}
		}
		// Leaving the loop closes the connection: the drop.
		cut = true
		break
	}
	if !cut {
		return out, errors.New("first stream: closed before an end event")
	}
	var text strings.Builder
	from := 0 // the offset of the last delta kept: what Last-Event-ID carries
	for _, ev := range seen {
		text.WriteString(ev.Chunk)
		from = ev.Offset
	}
	out.dropAt = utf8.RuneCountInString(text.String())
	out.offsetOK = from == out.dropAt

	// The resume, as an EventSource does it: Last-Event-ID set to the last
	// offset seen (0, the start, when none was).
	dropped := time.Now()
	again, err := c.ResumeStream(ctx, s.space, s.session, turnID, from)
	if err != nil {
		return out, fmt.Errorf("resume: %w", err)
	}
	defer again.Close()
	offset := out.dropAt
	ended := false
	for ev, err := range again.Events() {
		if err != nil {
			return out, fmt.Errorf("resumed stream: %w", err)
		}
		switch ev.Type {
		case client.EventStart:
			out.toStart = time.Since(dropped)
			if ev.TurnID != turnID {
				return out, fmt.Errorf("resumed start event names turn %q, not %s", ev.TurnID, turnID)
			}
		case client.EventDelta:
			if out.toFirstByte == 0 {
				out.toFirstByte = time.Since(dropped)
			}
			text.WriteString(ev.Chunk)
			offset += utf8.RuneCountInString(ev.Chunk)
			if ev.Offset != offset {
				out.offsetOK = false
			}
		case client.EventEnd:
			if ev.Result == nil || ev.Result.TurnID != turnID {
				return out, fmt.Errorf("resumed end event does not name turn %s: %+v", turnID, ev.Result)
			}
			ended = true
		}
	}
	if !ended {
		return out, errors.New("resumed stream: closed before an end event")
	}
	if out.toFirstByte == 0 {
		return out, fmt.Errorf("resumed stream from %d had no catch-up delta", from)
	}
	// The turn as stored.
	stored, err := c.GetTurn(ctx, s.space, s.session, turnID)
	if err != nil {
		return out, fmt.Errorf("get turn: %w", err)
	}
	if stored.State != client.TurnCompleted || stored.Result == nil || stored.Result.Turn.FinalContent == nil {
		return out, fmt.Errorf("turn %s is %s with no finalContent", turnID, stored.State)
	}
	out.equal = text.String() == *stored.Result.Turn.FinalContent
	return out, nil
}

// resume runs resume clients, each on its own session, looping: stream a
// turn, drop the connection at a random delta, resume through
// GET …/turns/:turnId/stream with Last-Event-ID and compare the reassembled
// text with the stored finalContent.
func (r *runner) resume(ctx context.Context) (*Result, error) {
	c := r.cfg
	model := mockllm.Config{TTFT: 100 * time.Millisecond, TokensPerSecond: c.ResumeTokensPerSecond, ReplyTokens: c.ResumeReplyWords}
	saved := r.cfg.Model
	r.cfg.Model = "mock" // streams must be paced to be dropped mid-flight
	t, err := r.start(ctx, model, "--mailbox-size", "4096")
	r.cfg.Model = saved
	if err != nil {
		return nil, err
	}
	defer t.stop()
	a := newClient(t.url, t.key, c.ResumeClients)
	spaces := max(c.ResumeClients/10, 1)
	sess, err := setupSessions(ctx, fixed(a), spaces, c.ResumeClients)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	r.progress("resume: %d SSE clients for %s, model %d words at %.0f tokens/s", c.ResumeClients, c.Duration, c.ResumeReplyWords, c.ResumeTokensPerSecond)
	rec, firstByte, startLat := newRecorder(), newRecorder(), newRecorder()
	var equal, unequal, offsetBad, afterEnd, dropAtSum atomic.Int64
	var rounds = make([]int, c.ResumeClients)
	rngs := make([]*rand.Rand, c.ResumeClients)
	for i := range rngs {
		rngs[i] = rand.New(rand.NewPCG(uint64(i), 0x5e11))
	}
	const warmup = 2 * time.Second
	measureFrom := time.Now().Add(warmup)
	srv0, srvErr := cpuTime(t.pid)
	own0, _ := cpuTime(os.Getpid())
	elapsed := loop(ctx, c.ResumeClients, c.Duration, warmup, rec, func(ctx context.Context, i int) error {
		measured := !time.Now().Before(measureFrom)
		rounds[i]++
		o, err := resumeOne(ctx, a, rngs[i], sess[i], resumeInput(i, rounds[i]), c.ResumeReplyWords)
		if err != nil || !measured {
			return err
		}
		firstByte.ok(o.toFirstByte)
		startLat.ok(o.toStart)
		dropAtSum.Add(int64(o.dropAt))
		if o.equal {
			equal.Add(1)
		} else {
			unequal.Add(1)
		}
		if !o.offsetOK {
			offsetBad.Add(1)
		}
		if o.afterEnd {
			afterEnd.Add(1)
		}
		return nil
	})
	srv1, _ := cpuTime(t.pid)
	own1, _ := cpuTime(os.Getpid())
	res := &Result{Name: "resume", Settings: t.settings}
	res.Settings["clients"] = c.ResumeClients
	res.Settings["replyWords"], res.Settings["tokensPerSecond"] = c.ResumeReplyWords, c.ResumeTokensPerSecond
	s := rec.summary()
	fb := firstByte.summary()
	res.Throughput = round2(float64(s.N) / elapsed.Seconds())
	res.Unit = "resumed streams/s"
	res.P50Ms, res.P95Ms, res.P99Ms = fb.P50, fb.P95, fb.P99
	res.Errors = s.Error
	res.ErrorSamples = rec.errMsg
	n := equal.Load() + unequal.Load()
	pct := 0.0
	if n > 0 {
		pct = 100 * float64(equal.Load()) / float64(n)
	}
	st := startLat.summary()
	res.Extra = map[string]any{"clients": c.ResumeClients, "resumed": n, "equal": equal.Load(), "unequal": unequal.Load(),
		"equalPct": round2(pct), "offsetMismatches": offsetBad.Load(), "droppedAfterEnd": afterEnd.Load(),
		"resumeFirstByteP50Ms": fb.P50, "resumeFirstByteP99Ms": fb.P99, "resumeFirstByteMaxMs": fb.Max,
		"resumeStartP50Ms": st.P50, "resumeStartP99Ms": st.P99, "streamP50Ms": s.P50, "streamP99Ms": s.P99}
	// CPU share over the whole run (warm-up included) of the server and of
	// this process (clients and, spawned, the mock model): the resume
	// latency is mostly the run queue once they saturate the cores.
	wall := (elapsed + warmup).Seconds()
	if srvErr == nil && t.pid > 0 {
		res.Extra["serverCpuPct"] = round2(100 * (srv1 - srv0).Seconds() / wall)
	}
	res.Extra["benchCpuPct"] = round2(100 * (own1 - own0).Seconds() / wall)
	if n > 0 {
		res.Extra["meanDropAtCodePoints"] = round2(float64(dropAtSum.Load()) / float64(n))
	}
	res.Target = "100% equal, resume p99 ≤20ms, 0 errors"
	res.Met = boolp(n > 0 && unequal.Load() == 0 && offsetBad.Load() == 0 && fb.P99 <= 20 && res.Errors == 0)
	r.progress("resume: %d resumed, %.2f%% equal, drop → catch-up p50 %.2f ms p99 %.2f ms, errors %d", n, pct, fb.P50, fb.P99, res.Errors)
	return res, nil
}
