package main

// Chaos tests: a real `stello serve` process, built from this package,
// under concurrent turns over REST, SSE and WebSocket, against the
// throwaway PostgreSQL. One kills the server with SIGKILL mid-load and
// restarts it; the other freezes PostgreSQL (SIGSTOP) mid-load and thaws
// it. Afterwards every turn a client saw succeed is stored exactly once, no
// turn is stored twice, and no half turn exists.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
)

// chaosDeadline bounds every client request: generous, so that the tests
// assert that requests end, not how fast.
const chaosDeadline = 30 * time.Second

// buildStello builds the stello binary into a temporary directory.
func buildStello(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command builds the server under test: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "stello")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// stelloProc is a `stello serve` child process.
type stelloProc struct {
	cmd    *exec.Cmd
	base   string // http://host:port
	stderr *syncBuffer
	done   chan struct{}
}

// startStello runs the binary against dbURL with the fake model, slow
// enough that turns are in flight at any moment, and waits until it listens.
// It is killed at cleanup if still running.
func startStello(t *testing.T, bin, dbURL string) *stelloProc {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--database-url", dbURL, "--llm", "fake",
		"--fake-latency", "30ms", "--fake-chunk-delay", "5ms", "--fake-reply-words", "12",
		"--consolidate-every", "0", "--session-queue", "64", "--log-level", "warn", "--shutdown-timeout", "5s")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &stelloProc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start stello: %v", err)
	}
	addr := make(chan string, 1)
	go func() {
		defer func() { _ = recover() }()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listeningRe.FindStringSubmatch(sc.Text() + "\n"); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			t.Errorf("stello process %d did not exit", cmd.Process.Pid)
		}
	})
	select {
	case a := <-addr:
		p.base = "http://" + a
	case <-p.done:
		t.Fatalf("stello exited before listening:\n%s", p.stderr.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("stello did not listen in time:\n%s", p.stderr.String())
	}
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *stelloProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatal("killed stello did not exit")
	}
}

// chaosWorld is the data the load runs on: one user, spaces with a root
// session and forks, and the record of what clients saw.
type chaosWorld struct {
	key      string
	sessions [][2]string // space id, session id

	mu        sync.Mutex
	confirmed map[string][2]string // input → where it was confirmed stored
	sent      map[string]bool      // every input sent
	bad       []string             // outcomes the contract forbids
	outcomes  map[string]int       // outcome counts, for the log
}

func (w *chaosWorld) note(outcome string) {
	w.mu.Lock()
	w.outcomes[outcome]++
	w.mu.Unlock()
}

func (w *chaosWorld) confirm(input string, at [2]string) {
	w.mu.Lock()
	w.confirmed[input] = at
	w.outcomes["ok"]++
	w.mu.Unlock()
}

func (w *chaosWorld) confirmedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.confirmed)
}

func (w *chaosWorld) send(input string) {
	w.mu.Lock()
	w.sent[input] = true
	w.mu.Unlock()
}

func (w *chaosWorld) forbid(format string, a ...any) {
	w.mu.Lock()
	w.bad = append(w.bad, fmt.Sprintf(format, a...))
	w.mu.Unlock()
}

// newChaosWorld creates the user directly in the database and the spaces
// and forks over REST.
func newChaosWorld(t *testing.T, dbURL, base string) *chaosWorld {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := pgstore.Open(ctx, dbURL, pgstore.PoolOptions{MaxConns: 2})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	_, key, err := st.CreateUser(ctx, "chaos")
	st.Close()
	if err != nil {
		t.Fatalf("create user: %v", err)
	}
	w := &chaosWorld{key: key, confirmed: map[string][2]string{}, sent: map[string]bool{}, outcomes: map[string]int{}}
	for i := 0; i < 2; i++ {
		var sp struct{ ID string }
		chaosJSON(t, w.key, http.MethodPost, base+"/spaces", fmt.Sprintf(`{"label":"chaos %d"}`, i), http.StatusCreated, &sp)
		var tree struct{ ID string }
		chaosJSON(t, w.key, http.MethodGet, base+"/spaces/"+sp.ID+"/sessions", "", http.StatusOK, &tree)
		w.sessions = append(w.sessions, [2]string{sp.ID, tree.ID})
		for j := 0; j < 2; j++ {
			var child struct{ ID string }
			chaosJSON(t, w.key, http.MethodPost, base+"/spaces/"+sp.ID+"/sessions/"+tree.ID+"/fork",
				fmt.Sprintf(`{"label":"fork %d"}`, j), http.StatusCreated, &child)
			w.sessions = append(w.sessions, [2]string{sp.ID, child.ID})
		}
	}
	return w
}

var chaosHTTP = &http.Client{Timeout: chaosDeadline}

// chaosJSON sends a request and decodes the answer, which must have status want.
func chaosJSON(t *testing.T, key, method, url, body string, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	res, err := chaosHTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, url, res.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, b)
		}
	}
}

// chaosAllowed are the error answers a turn may get while the server or its
// database is in trouble: documented codes that say "not done, retry".
var chaosAllowed = map[string]bool{"UNAVAILABLE": true, "TIMEOUT": true, "BUSY": true}

// load runs turns from REST, SSE and WebSocket clients until stop is closed.
// When the server dies (dead is closed first), transport errors end a
// client quietly; otherwise they are forbidden outcomes.
type load struct {
	w    *chaosWorld
	base string
	stop chan struct{}
	dead chan struct{}
	wg   sync.WaitGroup
}

func startLoad(w *chaosWorld, base string) *load {
	l := &load{w: w, base: base, stop: make(chan struct{}), dead: make(chan struct{})}
	kinds := []string{"rest", "rest", "sse", "sse", "ws", "ws"}
	for i, kind := range kinds {
		at := w.sessions[i%len(w.sessions)]
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() {
				if r := recover(); r != nil {
					w.forbid("client %s-%d panicked: %v", kind, i, r)
				}
			}()
			switch kind {
			case "rest", "sse":
				l.httpClient(kind, i, at)
			case "ws":
				l.wsClient(i, at)
			}
		}()
	}
	return l
}

func (l *load) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *load) serverDead() bool {
	select {
	case <-l.dead:
		return true
	default:
		return false
	}
}

// transportError records a client-side failure to talk to the server.
func (l *load) transportError(who string, err error) {
	if l.serverDead() {
		l.w.note("cut by kill")
		return
	}
	l.w.forbid("%s: %v", who, err)
}

func (l *load) httpClient(kind string, n int, at [2]string) {
	url := l.base + "/spaces/" + at[0] + "/sessions/" + at[1] + "/turn"
	for seq := 0; !l.stopped(); seq++ {
		input := fmt.Sprintf("chaos %s %d %d", kind, n, seq)
		who := fmt.Sprintf("%s client %d turn %q", kind, n, input)
		body, _ := json.Marshal(map[string]string{"input": input})
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("X-API-Key", l.w.key)
		if kind == "sse" {
			req.Header.Set("Accept", "text/event-stream")
		}
		l.w.send(input)
		res, err := chaosHTTP.Do(req)
		if err != nil {
			l.transportError(who, err)
			if l.serverDead() {
				return
			}
			continue
		}
		b, err := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if err != nil && res.StatusCode != http.StatusOK {
			l.transportError(who, err)
			continue
		}
		switch {
		case res.StatusCode == http.StatusOK && kind == "rest":
			l.w.confirm(input, at)
		case res.StatusCode == http.StatusOK:
			l.sseOutcome(who, input, at, b, err)
		default:
			var e struct{ Code string }
			_ = json.Unmarshal(b, &e)
			if !chaosAllowed[e.Code] {
				l.w.forbid("%s: status %d: %s", who, res.StatusCode, b)
			} else {
				l.w.note(e.Code)
			}
		}
	}
}

// sseOutcome reads a complete or cut event stream.
func (l *load) sseOutcome(who, input string, at [2]string, body []byte, readErr error) {
	var last, data string
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			last = v
		} else if v, ok := strings.CutPrefix(line, "data: "); ok {
			data = v
		}
	}
	switch last {
	case "end":
		l.w.confirm(input, at)
	case "error":
		var e struct{ Code string }
		_ = json.Unmarshal([]byte(data), &e)
		if !chaosAllowed[e.Code] {
			l.w.forbid("%s: stream error %s", who, data)
		} else {
			l.w.note(e.Code)
		}
	default:
		if readErr == nil {
			readErr = fmt.Errorf("stream closed without end or error event")
		}
		l.transportError(who, readErr)
	}
}

func (l *load) wsClient(n int, at [2]string) {
	who := fmt.Sprintf("ws client %d", n)
	u := "ws" + strings.TrimPrefix(l.base, "http") + "/spaces/" + at[0] + "/ws"
	d := websocket.Dialer{HandshakeTimeout: chaosDeadline}
	c, _, err := d.Dial(u, http.Header{"X-API-Key": {l.w.key}})
	if err != nil {
		l.transportError(who+" dial", err)
		return
	}
	defer c.Close()
	call := func(msg map[string]string) (map[string]any, error) {
		_ = c.SetWriteDeadline(time.Now().Add(chaosDeadline))
		if err := c.WriteJSON(msg); err != nil {
			return nil, err
		}
		_ = c.SetReadDeadline(time.Now().Add(chaosDeadline))
		for {
			var m map[string]any
			if err := c.ReadJSON(&m); err != nil {
				return nil, err
			}
			switch m["type"] {
			case "stream.start", "stream.delta", "space.event":
				continue
			}
			return m, nil
		}
	}
	m, err := call(map[string]string{"type": "session.enter", "id": "enter", "sessionId": at[1]})
	if err != nil {
		l.transportError(who+" enter", err)
		return
	}
	if m["type"] != "session.entered" {
		l.w.forbid("%s: enter answered %v", who, m)
		return
	}
	for seq := 0; !l.stopped(); seq++ {
		typ := "session.message"
		if seq%2 == 1 {
			typ = "session.stream"
		}
		input := fmt.Sprintf("chaos ws %d %d", n, seq)
		l.w.send(input)
		m, err := call(map[string]string{"type": typ, "id": input, "input": input})
		if err != nil {
			l.transportError(fmt.Sprintf("%s turn %q", who, input), err)
			return
		}
		switch m["type"] {
		case "turn.complete", "stream.end":
			l.w.confirm(input, at)
		case "error":
			code, _ := m["code"].(string)
			if !chaosAllowed[code] {
				l.w.forbid("%s turn %q: %v", who, input, m)
			} else {
				l.w.note(code)
			}
		default:
			l.w.forbid("%s turn %q: unexpected answer %v", who, input, m)
		}
	}
}

// end stops the load and waits for every client (each bounded by its
// request deadline).
func (l *load) end(t *testing.T) {
	t.Helper()
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * chaosDeadline):
		t.Fatal("clients did not finish within their deadlines")
	}
}

// checkStored checks, through the server at base, that every confirmed turn
// is stored exactly once in the session it was sent to, that no input is
// stored twice, and that every session holds whole turns only: user,
// assistant, user, assistant…, with turnCount the number of user records.
func checkStored(t *testing.T, w *chaosWorld, base string) {
	t.Helper()
	users := map[string]int{}
	where := map[string][2]string{}
	for _, at := range w.sessions {
		var recs []struct{ Role, Content string }
		chaosJSON(t, w.key, http.MethodGet, base+"/spaces/"+at[0]+"/sessions/"+at[1]+"/messages", "", http.StatusOK, &recs)
		var meta struct{ TurnCount int }
		chaosJSON(t, w.key, http.MethodGet, base+"/spaces/"+at[0]+"/sessions/"+at[1], "", http.StatusOK, &meta)
		nUser := 0
		for i, r := range recs {
			want := "user"
			if i%2 == 1 {
				want = "assistant"
			}
			if r.Role != want {
				t.Errorf("session %s: record %d is %s %q, want a %s record (half turn?)", at[1], i, r.Role, r.Content, want)
				break
			}
			if r.Role == "user" {
				nUser++
				users[r.Content]++
				where[r.Content] = at
			}
		}
		if len(recs)%2 != 0 {
			t.Errorf("session %s: %d records, a user input without its reply", at[1], len(recs))
		}
		if meta.TurnCount != nUser {
			t.Errorf("session %s: turnCount %d, but %d user records", at[1], meta.TurnCount, nUser)
		}
	}
	for in, n := range users {
		if n > 1 {
			t.Errorf("input %q stored %d times", in, n)
		}
		if !w.sent[in] {
			t.Errorf("input %q stored but never sent", in)
		}
	}
	for in, at := range w.confirmed {
		if users[in] != 1 {
			t.Errorf("turn %q was confirmed to its client but is stored %d times", in, users[in])
		} else if where[in] != at {
			t.Errorf("turn %q was sent to %v but stored in %v", in, at, where[in])
		}
	}
	t.Logf("sent %d turns, %d confirmed, %d stored; outcomes %v", len(w.sent), len(w.confirmed), len(users), w.outcomes)
}

// waitConfirmed waits until at least n turns were confirmed since the call.
func waitConfirmed(t *testing.T, w *chaosWorld, n int) {
	t.Helper()
	w.mu.Lock()
	start := len(w.confirmed)
	w.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		got := len(w.confirmed) - start
		w.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("fewer than %d turns confirmed within a minute; outcomes %v, forbidden %v", n, w.outcomes, w.bad)
}

func TestChaosKillMidLoadAndRestart(t *testing.T) {
	bin := buildStello(t)
	dbURL := testutil.MigratedURL(t)
	p := startStello(t, bin, dbURL)
	w := newChaosWorld(t, dbURL, p.base)

	l := startLoad(w, p.base)
	waitConfirmed(t, w, 30)
	close(l.dead)
	p.kill(t)
	l.end(t)
	for _, b := range w.bad {
		t.Errorf("before the kill: %s", b)
	}

	q := startStello(t, bin, dbURL)
	checkStored(t, w, q.base)

	// The restarted server takes turns on every session again.
	for _, at := range w.sessions {
		chaosJSON(t, w.key, http.MethodPost, q.base+"/spaces/"+at[0]+"/sessions/"+at[1]+"/turn",
			`{"input":"after the restart"}`, http.StatusOK, nil)
	}
}

func TestChaosDatabasePausedMidLoad(t *testing.T) {
	bin := buildStello(t)
	dbURL := testutil.MigratedURL(t)
	p := startStello(t, bin, dbURL)
	w := newChaosWorld(t, dbURL, p.base)

	l := startLoad(w, p.base)
	waitConfirmed(t, w, 20)
	resume, err := pgtest.Pause(t)
	if err == pgtest.ErrNoPrivateServer {
		l.end(t)
		t.Skip("needs the private test PostgreSQL, which it pauses; unset " + pgtest.EnvURL)
	}
	if err != nil {
		l.end(t)
		t.Fatal(err)
	}
	// Proof that the database is frozen: once turns that committed just
	// before the pause have answered, no turn completes until it thaws.
	time.Sleep(time.Second)
	frozenAt := w.confirmedCount()
	time.Sleep(4 * time.Second)
	if n := w.confirmedCount() - frozenAt; n != 0 {
		t.Errorf("%d turns completed while PostgreSQL was paused: the pause did not freeze it", n)
	}
	resume()
	// The same process serves again, without a restart.
	waitConfirmed(t, w, 20)
	l.end(t)
	for _, b := range w.bad {
		t.Errorf("forbidden outcome: %s", b)
	}
	checkStored(t, w, p.base)
	for _, at := range w.sessions {
		chaosJSON(t, w.key, http.MethodPost, p.base+"/spaces/"+at[0]+"/sessions/"+at[1]+"/turn",
			`{"input":"after the pause"}`, http.StatusOK, nil)
	}
}
