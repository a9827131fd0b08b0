package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/stellohq/stello/bench/mockllm"
)

// sseEvent is one Server-Sent Event as a client dispatches it (at the blank
// line that ends it).
type sseEvent struct {
	name, id, data string
	// at is when the event's first line was read: its first byte reached
	// the client.
	at time.Time
}

// sseReader parses a stream of Server-Sent Events.
type sseReader struct{ sc *bufio.Scanner }

func newSSEReader(b *http.Response) *sseReader {
	sc := bufio.NewScanner(b.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	return &sseReader{sc: sc}
}

// next returns the next complete event; a stream cut inside an event loses
// that event, as an EventSource would.
func (r *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	started := false
	for r.sc.Scan() {
		line := r.sc.Text()
		if !started {
			if line == "" {
				continue
			}
			started, ev.at = true, time.Now()
		}
		if line == "" {
			if ev.name == "" {
				ev.name = "message"
			}
			return ev, nil
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.name = value
		case "id":
			ev.id = value
		case "data":
			if ev.data != "" {
				ev.data += "\n"
			}
			ev.data += value
		}
	}
	if err := r.sc.Err(); err != nil {
		return sseEvent{}, err
	}
	return sseEvent{}, errors.New("stream closed before an end event")
}

// resumeInput is the text a resume client sends: multi-byte characters
// (accents, CJK, Greek, emoji outside the Basic Multilingual Plane), which
// the model quotes in its reply, so offsets counted in code points differ
// from bytes and from UTF-16 units.
func resumeInput(client, round int) string {
	return fmt.Sprintf("Reprise %d·%d: café ☕ 日本語の文章 naïve 🎉 Ελληνικά über straße", client, round)
}

// resumeOutcome is one resumed stream.
type resumeOutcome struct {
	equal       bool          // reassembled text equals the stored finalContent
	offsetOK    bool          // event ids agree with the code points received
	afterEnd    bool          // the stream had ended before the drop point was reached
	toFirstByte time.Duration // drop → first byte of the catch-up delta
	toStart     time.Duration // drop → first byte of the resumed stream's start event
	dropAt      int           // code point offset resumed from
}

// resumeOne runs one streamed turn, drops its connection after a random
// number of delta events, resumes it from the last event id seen and checks
// the reassembled text against the turn as stored.
func (a *api) resumeOne(ctx context.Context, rng *rand.Rand, s benchSession, input string, expectDeltas int) (out resumeOutcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("resume client panicked: %v", p)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	base := a.base + "/spaces/" + s.space + "/sessions/" + s.session
	b, _ := json.Marshal(map[string]any{"input": input})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/turn", bytes.NewReader(b))
	if err != nil {
		return out, err
	}
	req.Header.Set("X-API-Key", a.key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	resp, err := a.http.Do(req)
	if err != nil {
		return out, err
	}
	closed := false
	defer func() {
		if !closed {
			resp.Body.Close()
		}
	}()
	if resp.StatusCode != http.StatusOK {
		return out, &apiError{Status: resp.StatusCode}
	}
	turnID := resp.Header.Get("Stello-Turn-Id")
	if turnID == "" {
		return out, errors.New("no Stello-Turn-Id header")
	}
	// Drop after keep deltas (0 … expectDeltas-2): once the next event has
	// arrived, so text past the last id exists when the client reconnects and
	// the catch-up is never empty; that next event is lost with the
	// connection.
	keep := 0
	if expectDeltas > 1 {
		keep = rng.IntN(expectDeltas - 1)
	}
	rd := newSSEReader(resp)
	var text strings.Builder
	var seen []sseEvent // deltas received, in order
	lastID := ""
	for {
		ev, err := rd.next()
		if err != nil {
			return out, fmt.Errorf("first stream: %w", err)
		}
		switch ev.name {
		case "start":
			var st struct{ TurnID string }
			if err := json.Unmarshal([]byte(ev.data), &st); err != nil || st.TurnID != turnID {
				return out, fmt.Errorf("start event %q does not name turn %s", ev.data, turnID)
			}
			continue
		case "error":
			return out, fmt.Errorf("first stream: error event %s", ev.data)
		case "delta":
			if len(seen) < keep {
				seen = append(seen, ev)
				continue
			}
		case "end":
			// The reply was shorter than expected: lose its last delta.
			out.afterEnd = true
			if len(seen) > 0 {
				seen = seen[:len(seen)-1]
			}
		default:
			continue
		}
		break
	}
	for _, ev := range seen {
		var d struct{ Chunk string }
		if err := json.Unmarshal([]byte(ev.data), &d); err != nil {
			return out, fmt.Errorf("delta %q: %w", ev.data, err)
		}
		text.WriteString(d.Chunk)
		lastID = ev.id
	}
	out.offsetOK = lastID == "" || lastID == strconv.Itoa(utf8.RuneCountInString(text.String()))
	out.dropAt = utf8.RuneCountInString(text.String())

	// The drop, then the resume as an EventSource does it: Last-Event-ID
	// when an id was seen.
	dropped := time.Now()
	resp.Body.Close()
	closed = true
	req2, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/turns/"+turnID+"/stream", nil)
	if err != nil {
		return out, err
	}
	req2.Header.Set("X-API-Key", a.key)
	req2.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req2.Header.Set("Last-Event-ID", lastID)
	}
	resp2, err := a.http.Do(req2)
	if err != nil {
		return out, fmt.Errorf("resume: %w", err)
	}
	defer resp2.Body.Close()
	if resp2.StatusCode != http.StatusOK {
		return out, fmt.Errorf("resume: %w", &apiError{Status: resp2.StatusCode})
	}
	rd = newSSEReader(resp2)
	offset := out.dropAt
	var ended struct {
		Result struct {
			TurnID string
		}
	}
	for done := false; !done; {
		ev, err := rd.next()
		if err != nil {
			return out, fmt.Errorf("resumed stream: %w", err)
		}
		switch ev.name {
		case "start":
			out.toStart = ev.at.Sub(dropped)
			var st struct{ TurnID string }
			if err := json.Unmarshal([]byte(ev.data), &st); err != nil || st.TurnID != turnID {
				return out, fmt.Errorf("resumed start event %q does not name turn %s", ev.data, turnID)
			}
		case "delta":
			if out.toFirstByte == 0 {
				out.toFirstByte = ev.at.Sub(dropped)
			}
			var d struct{ Chunk string }
			if err := json.Unmarshal([]byte(ev.data), &d); err != nil {
				return out, fmt.Errorf("delta %q: %w", ev.data, err)
			}
			text.WriteString(d.Chunk)
			offset += utf8.RuneCountInString(d.Chunk)
			if ev.id != strconv.Itoa(offset) {
				out.offsetOK = false
			}
		case "error":
			return out, fmt.Errorf("resumed stream: error event %s", ev.data)
		case "end":
			if err := json.Unmarshal([]byte(ev.data), &ended); err != nil || ended.Result.TurnID != turnID {
				return out, fmt.Errorf("resumed end event %q does not name turn %s", ev.data, turnID)
			}
			done = true
		}
	}
	if out.toFirstByte == 0 {
		return out, fmt.Errorf("resumed stream from %s had no catch-up delta", lastID)
	}
	// The turn as stored.
	var stored struct {
		State  string
		Result struct {
			Turn struct{ FinalContent *string }
		}
	}
	if err := a.do(ctx, http.MethodGet, "/spaces/"+s.space+"/sessions/"+s.session+"/turns/"+turnID, nil, &stored); err != nil {
		return out, fmt.Errorf("get turn: %w", err)
	}
	if stored.State != "completed" || stored.Result.Turn.FinalContent == nil {
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
	a := newAPI(t.url, t.key, c.ResumeClients)
	spaces := max(c.ResumeClients/10, 1)
	sess, err := setupSessions(ctx, a, spaces, c.ResumeClients)
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
		o, err := a.resumeOne(ctx, rngs[i], sess[i], resumeInput(i, rounds[i]), c.ResumeReplyWords)
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
