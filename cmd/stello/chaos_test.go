package main

// Chaos tests: a real `stello serve` process, built from this package,
// under concurrent turns over REST, SSE and WebSocket, against the
// throwaway PostgreSQL. One kills the server with SIGKILL mid-load and
// restarts it; the other freezes PostgreSQL (SIGSTOP) mid-load and thaws
// it. Afterwards every turn a client saw succeed is stored exactly once, no
// turn is stored twice, and no half turn exists.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
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

// startStello runs the binary against dbURL with the fake model, slow
// enough that turns are in flight at any moment (startProc's defaults),
// with the default lease TTL, and waits until it listens. It is killed at
// cleanup if still running.
func startStello(t *testing.T, bin, dbURL string) *clusterProc {
	t.Helper()
	return startProc(t, bin, "chaos", "", "--database-url", dbURL, "--lease-ttl", "10s",
		"--log-level", "warn", "--shutdown-timeout", "5s")
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
	w := newWorld(key)
	w.populate(t, chaosClient(base, key), "chaos", 2)
	return w
}

// newWorld is an empty world of the user with key.
func newWorld(key string) *chaosWorld {
	return &chaosWorld{key: key, confirmed: map[string][2]string{}, sent: map[string]bool{}, outcomes: map[string]int{}}
}

// populate adds spaces spaces (labelled label 0, label 1, …), each with
// its root session and two forks, made through c.
func (w *chaosWorld) populate(t *testing.T, c *client.Client, label string, spaces int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range spaces {
		sp, err := c.CreateSpace(ctx, client.SpaceInput{Label: fmt.Sprintf("%s %d", label, i)})
		require.NoError(t, err, "create space")
		tree, err := c.Tree(ctx, sp.ID)
		require.NoError(t, err, "tree")
		w.sessions = append(w.sessions, [2]string{sp.ID, tree.ID})
		for j := range 2 {
			child, err := c.Fork(ctx, sp.ID, tree.ID, client.ForkOptions{Label: fmt.Sprintf("fork %d", j)})
			require.NoError(t, err, "fork")
			w.sessions = append(w.sessions, [2]string{sp.ID, child.ID})
		}
	}
}

// chaosClient is a client whose every request is bounded by chaosDeadline
// and whose streams never resume by themselves: a cut stream is an outcome
// the tests judge, not something to hide.
func chaosClient(base, key string) *client.Client {
	return client.New(base, key, client.WithHTTPClient(&http.Client{Timeout: chaosDeadline}), client.WithResume(0, 0))
}

// chaosCtx bounds one request to chaosDeadline.
func chaosCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), chaosDeadline)
}

// untilServed makes call, again while it is answered 503 UNAVAILABLE, for
// at most a minute. A killed process keeps its spaces' leases until its
// heartbeat is older than its --lease-ttl (10s), and until then the
// restarted process answers UNAVAILABLE for them (docs/operations.md).
func untilServed(call func(context.Context) error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := chaosCtx()
		err := call(ctx)
		cancel()
		if !errors.Is(err, client.ErrUnavailable) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
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
	c    *client.Client
	stop chan struct{}
	dead chan struct{}
	wg   sync.WaitGroup
}

func startLoad(w *chaosWorld, base string) *load {
	l := &load{w: w, c: chaosClient(base, w.key), stop: make(chan struct{}), dead: make(chan struct{})}
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

// outcome records how a turn ended: confirmed, refused with a code that
// says "not done, retry", or cut (a transport error).
func (l *load) outcome(who, input string, at [2]string, err error) (cut bool) {
	var apiErr *client.Error
	switch {
	case err == nil:
		l.w.confirm(input, at)
	case errors.As(err, &apiErr):
		if !chaosAllowed[apiErr.Code] {
			l.w.forbid("%s: %v", who, err)
		} else {
			l.w.note(apiErr.Code)
		}
	default:
		l.transportError(who, err)
		return true
	}
	return false
}

func (l *load) httpClient(kind string, n int, at [2]string) {
	for seq := 0; !l.stopped(); seq++ {
		input := fmt.Sprintf("chaos %s %d %d", kind, n, seq)
		who := fmt.Sprintf("%s client %d turn %q", kind, n, input)
		l.w.send(input)
		ctx, cancel := chaosCtx()
		var err error
		if kind == "sse" {
			err = sseTurn(ctx, l.c, at, input)
		} else {
			_, err = l.c.Turn(ctx, at[0], at[1], input)
		}
		cancel()
		if l.outcome(who, input, at, err) && l.serverDead() {
			return
		}
	}
}

// sseTurn streams a turn to its end event; a stream cut before its end or
// error event is a transport error.
func sseTurn(ctx context.Context, c *client.Client, at [2]string, input string) error {
	s, err := c.TurnStream(ctx, at[0], at[1], input)
	if err != nil {
		return err
	}
	defer s.Close()
	for ev, err := range s.Events() {
		if err != nil {
			return err
		}
		if ev.Type == client.EventEnd {
			return nil
		}
	}
	return errors.New("stream closed without end or error event")
}

func (l *load) wsClient(n int, at [2]string) {
	who := fmt.Sprintf("ws client %d", n)
	ctx, cancel := chaosCtx()
	conn, err := l.c.Dial(ctx, at[0])
	cancel()
	if err != nil {
		l.transportError(who+" dial", err)
		return
	}
	defer conn.Close()
	ctx, cancel = chaosCtx()
	_, err = conn.Enter(ctx, at[1])
	cancel()
	var apiErr *client.Error
	if errors.As(err, &apiErr) {
		l.w.forbid("%s: enter answered %v", who, err)
		return
	}
	if err != nil {
		l.transportError(who+" enter", err)
		return
	}
	for seq := 0; !l.stopped(); seq++ {
		input := fmt.Sprintf("chaos ws %d %d", n, seq)
		l.w.send(input)
		ctx, cancel := chaosCtx()
		if seq%2 == 0 {
			_, err = conn.Message(ctx, input)
		} else {
			err = wsStream(ctx, conn, input)
		}
		cancel()
		if l.outcome(fmt.Sprintf("%s turn %q", who, input), input, at, err) {
			return
		}
	}
}

// wsStream streams a turn over the WebSocket to its end.
func wsStream(ctx context.Context, conn *client.Conn, input string) error {
	for ev, err := range conn.Stream(ctx, input) {
		if err != nil {
			return err
		}
		if ev.Type == client.EventEnd {
			return nil
		}
	}
	return errors.New("stream ended without stream.end or error")
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
	c := chaosClient(base, w.key)
	users := map[string]int{}
	where := map[string][2]string{}
	for _, at := range w.sessions {
		var recs []client.Message
		if err := untilServed(func(ctx context.Context) (err error) {
			recs, err = c.Messages(ctx, at[0], at[1], 0, 0)
			return err
		}); err != nil {
			t.Fatalf("messages of %s: %v", at[1], err)
		}
		var meta *client.SessionMeta
		if err := untilServed(func(ctx context.Context) (err error) {
			meta, err = c.Session(ctx, at[0], at[1])
			return err
		}); err != nil {
			t.Fatalf("session %s: %v", at[1], err)
		}
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

// turnEverywhere runs one turn on every session, which must succeed.
func turnEverywhere(t *testing.T, w *chaosWorld, base, input string) {
	t.Helper()
	c := chaosClient(base, w.key)
	for _, at := range w.sessions {
		if err := untilServed(func(ctx context.Context) error {
			_, err := c.Turn(ctx, at[0], at[1], input)
			return err
		}); err != nil {
			t.Fatalf("turn on %s %q: %v", at[1], input, err)
		}
	}
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
	turnEverywhere(t, w, q.base, "after the restart")
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
	turnEverywhere(t, w, p.base, "after the pause")
}
