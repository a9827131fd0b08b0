package main

// Cluster tests: several `stello serve` processes, built from this package,
// over one throwaway PostgreSQL database, with short leases (--lease-ttl
// 2s). They check what docs/api.md ("Several processes, one database")
// promises: every write made through one process reads back through every
// other at once; a space has one owner, so its turns are serialised and its
// fork indexes unique; after the owner is killed another process serves
// its spaces within the lease TTL, at once after a graceful stop, and no
// turn answered 200 is lost or stored twice; an owner paused past its
// lease commits nothing afterwards and serves nothing stale; WebSockets
// work through a process that does not own their space, and every graceful
// stop closes them with 1001; a rolling restart loses nothing, and a
// stopping process answers every request it accepted; `stello cluster
// status` shows the processes; two processes share one embedded database.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
)

// clusterTTL is the lease TTL of every process in these tests.
const clusterTTL = 2 * time.Second

// clusterWait bounds each wait of these tests: generous, so that they
// assert that things happen, not how fast (the fail-over bound is asserted
// on its own).
const clusterWait = 30 * time.Second

func TestCluster(t *testing.T) {
	bin := buildStello(t)
	t.Run("ReadYourWritesThroughEveryProcess", func(t *testing.T) { clusterReadYourWrites(t, bin) })
	t.Run("KillAndStopOwnerUnderLoad", func(t *testing.T) { clusterFailover(t, bin) })
	t.Run("PausedOwnerIsFenced", func(t *testing.T) { clusterFencing(t, bin) })
	t.Run("PausedOwnerServesNoStaleReads", func(t *testing.T) { clusterStaleReads(t, bin) })
	t.Run("WebSocketThroughAnotherProcess", func(t *testing.T) { clusterWebSocket(t, bin) })
	t.Run("WebSocketForwarderStop", func(t *testing.T) { clusterWebSocketForwarderStop(t, bin) })
	t.Run("RollingRestart", func(t *testing.T) { clusterRollingRestart(t, bin) })
	t.Run("StopAnswersRequestsOnAcceptedConnections", func(t *testing.T) { clusterStopAnswersAccepted(t, bin) })
	t.Run("Status", func(t *testing.T) { clusterStatus(t, bin) })
	t.Run("EmbeddedDatabaseShared", func(t *testing.T) { clusterEmbedded(t, bin) })
}

// clusterProc is one `stello serve` child process.
type clusterProc struct {
	name   string
	addr   string // host:port it listens on
	base   string // http://addr, also its advertise URL
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{} // closed when the process exited
	err    error         // what Wait returned; set before done is closed
}

// startProc runs `stello serve` on addr ("" for a free port) with the fake
// model and the test lease TTL; args come after the defaults, so they
// override them. It waits until the process listens, and kills it at
// cleanup if it still runs.
func startProc(t *testing.T, bin, name, addr string, args ...string) *clusterProc {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	full := append([]string{"serve", "--addr", addr, "--llm", "fake",
		"--fake-latency", "30ms", "--fake-chunk-delay", "5ms", "--fake-reply-words", "12",
		"--consolidate-every", "0", "--session-queue", "64", "--lease-ttl", clusterTTL.String(),
		"--shutdown-timeout", "10s", "--log-level", "info"}, args...)
	p := &clusterProc{name: name, cmd: exec.Command(bin, full...), stdout: &syncBuffer{}, stderr: &syncBuffer{},
		done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	require.NoError(t, p.cmd.Start(), "start stello %s", name)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				p.err = fmt.Errorf("waiting for the process panicked: %v", v)
			}
			close(p.done)
		}()
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill() // also ends a stopped (SIGSTOP) process
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			t.Errorf("stello %s (pid %d) did not exit", name, p.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("stello %s stderr (tail):\n%s", name, tail(p.stderr.String(), 6000))
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if m := listeningRe.FindStringSubmatch(p.stdout.String()); m != nil {
			p.addr, p.base = m[1], "http://"+m[1]
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("stello %s exited before listening (%v):\n%s", name, p.err, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("stello %s did not listen in time:\n%s", name, p.stderr.String())
		}
	}
}

// startProcs starts one process per name over the database at url.
func startProcs(t *testing.T, bin, url string, names ...string) []*clusterProc {
	t.Helper()
	out := make([]*clusterProc, len(names))
	for i, n := range names {
		out[i] = startProc(t, bin, n, "", "--database-url", url)
	}
	return out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func (p *clusterProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig), "signal %v to %s", sig, p.name)
}

// wait waits for the process to exit and returns how it did.
func (p *clusterProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(time.Minute):
		t.Fatalf("stello %s did not exit within a minute:\n%s", p.name, tail(p.stderr.String(), 6000))
		return nil
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *clusterProc) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	_ = p.wait(t)
}

// term stops the process gracefully (SIGTERM), which must exit 0.
func (p *clusterProc) term(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	require.NoError(t, p.wait(t), "stello %s after SIGTERM", p.name)
}

// clusterUser creates a user directly in the database and returns its key.
// newCluster starts the named processes over a fresh database and returns
// its URL, the processes, a store on it and a user's API key.
func newCluster(t *testing.T, bin string, names ...string) (string, []*clusterProc, *pgstore.Store, string) {
	t.Helper()
	url := testutil.MigratedURL(t)
	procs := startProcs(t, bin, url, names...)
	st := openStore(t, url)
	return url, procs, st, clusterUser(t, st)
}

func clusterUser(t *testing.T, st *pgstore.Store) string {
	t.Helper()
	_, key, err := st.CreateUser(t.Context(), "cluster")
	require.NoError(t, err)
	return key
}

// testCtx is the test's context bounded by d.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// leaseOwner returns the advertise URL of the process that holds the
// space's lease, or "" when none does.
func leaseOwner(t *testing.T, st *pgstore.Store, spaceID string) string {
	t.Helper()
	var url string
	err := st.Pool().QueryRow(t.Context(), `SELECT n.advertise_url FROM space_leases l JOIN nodes n ON n.id = l.node_id
		WHERE l.space_id = $1`, spaceID).Scan(&url)
	if err != nil {
		return ""
	}
	return url
}

// nodeOf returns the membership row of the process advertising base.
func nodeOf(t *testing.T, st *pgstore.Store, base string) (pgstore.Node, bool) {
	t.Helper()
	nodes, err := st.Nodes(t.Context())
	require.NoError(t, err)
	for _, n := range nodes {
		if n.AdvertiseURL == base {
			return n, true
		}
	}
	return pgstore.Node{}, false
}

// waitAlive waits until the database counts the process alive (want) or
// dead (!want).
func waitAlive(t *testing.T, st *pgstore.Store, p *clusterProc, want bool) {
	t.Helper()
	eventually(t, clusterWait, func() bool {
		n, ok := nodeOf(t, st, p.base)
		return ok && n.Alive == want
	}, "stello %s alive=%v in the nodes table", p.name, want)
}

// eventually polls cond, in the test's goroutine, until it holds; it fails
// the test when d passed first.
func eventually(t *testing.T, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, fmt.Sprintf(format, args...))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitRefused waits until addr refuses connections and returns when it
// first did.
func waitRefused(t *testing.T, addr string) time.Time {
	t.Helper()
	deadline := time.Now().Add(clusterWait)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return time.Now()
		}
		_ = c.Close()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s still accepts connections", addr)
	return time.Time{}
}

// treeIDs returns every session id of a tree.
func treeIDs(n *client.TreeNode) []string {
	out := []string{n.ID}
	for _, c := range n.Children {
		out = append(out, treeIDs(c)...)
	}
	return out
}

// checkAlternating asserts that records are whole turns, user then
// assistant, and returns the user inputs in order.
func checkAlternating(t *testing.T, recs []client.Message, where string) []string {
	t.Helper()
	var inputs []string
	for i, r := range recs {
		want := "user"
		if i%2 == 1 {
			want = "assistant"
		}
		if !assert.Equal(t, want, r.Role, "%s: record %d (%q)", where, i, r.Content) {
			return inputs
		}
		if r.Role == "user" {
			inputs = append(inputs, r.Content)
		}
	}
	assert.Zero(t, len(recs)%2, "%s: %d records: a user input without its reply", where, len(recs))
	return inputs
}

// 1. Three processes: what is written through one reads back through every
// other at once; concurrent forks and turns through different processes
// are serialised by the one owner.
func clusterReadYourWrites(t *testing.T, bin string) {
	_, procs, st, key := newCluster(t, bin, "a", "b", "c")
	cs := make([]*client.Client, len(procs))
	for i, p := range procs {
		cs[i] = client.New(p.base, key)
	}
	ctx := testCtx(t, 2*time.Minute)

	sp, err := cs[0].CreateSpace(ctx, client.SpaceInput{Label: "shared", SystemPrompt: client.String("be brief")})
	require.NoError(t, err)
	for i, c := range cs {
		got, err := c.GetSpace(ctx, sp.ID)
		require.NoError(t, err, "through %s", procs[i].name)
		assert.Equal(t, "shared", got.Label)
	}
	require.Equal(t, procs[0].base, leaseOwner(t, st, sp.ID), "the first process to touch the space owns it")
	tree, err := cs[1].Tree(ctx, sp.ID)
	require.NoError(t, err)
	root := tree.ID

	// A fork through c (not the owner) is in the tree read through a and b.
	child, err := cs[2].Fork(ctx, sp.ID, root, client.ForkOptions{Label: "child"})
	require.NoError(t, err)
	for i, c := range cs {
		got, err := c.Tree(ctx, sp.ID)
		require.NoError(t, err)
		assert.ElementsMatch(t, []string{root, child.ID}, treeIDs(got), "tree through %s", procs[i].name)
		m, err := c.Session(ctx, sp.ID, child.ID)
		require.NoError(t, err)
		assert.Equal(t, "child", m.Label)
	}

	// A turn through a reads back through b and c.
	res, err := cs[0].Turn(ctx, sp.ID, child.ID, "hello from a")
	require.NoError(t, err)
	for i, c := range cs {
		recs, err := c.Messages(ctx, sp.ID, child.ID, 0, 0)
		require.NoError(t, err)
		require.Len(t, recs, 2, "records through %s", procs[i].name)
		assert.Equal(t, "hello from a", recs[0].Content)
		assert.Equal(t, res.Text(), recs[1].Content)
		m, err := c.Session(ctx, sp.ID, child.ID)
		require.NoError(t, err)
		assert.Equal(t, 1, m.TurnCount, "turnCount through %s", procs[i].name)
	}

	// A turn streamed over SSE through c (forwarded to a): its events
	// arrive as they are made, not all at the end, and it reads back
	// through every process.
	stream, err := cs[2].TurnStream(ctx, sp.ID, root, "streamed through c")
	require.NoError(t, err)
	var firstDelta, endAt time.Time
	var text string
	var end *client.Event
	for ev, err := range stream.Events() {
		require.NoError(t, err)
		switch ev.Type {
		case client.EventDelta:
			if firstDelta.IsZero() {
				firstDelta = time.Now()
			}
			text += ev.Chunk
		case client.EventEnd:
			endAt, end = time.Now(), &ev
		}
	}
	require.NoError(t, stream.Close())
	require.NotNil(t, end, "the stream ended with its result")
	assert.Equal(t, end.Result.Text(), text, "the deltas make the reply")
	// The fake model sends its 12 words 5ms apart: a proxy that buffered the
	// stream would deliver the first delta with the end.
	assert.GreaterOrEqual(t, endAt.Sub(firstDelta), 20*time.Millisecond, "the forwarded stream is flushed event by event")
	for i, c := range cs {
		recs, err := c.Messages(ctx, sp.ID, root, 0, 0)
		require.NoError(t, err)
		assert.Equal(t, []string{"streamed through c"}, checkAlternating(t, recs, "root through "+procs[i].name))
		if len(recs) == 2 {
			assert.Equal(t, text, recs[1].Content)
		}
	}

	// Prompt writes: a session's through b, the space's through c.
	_, err = cs[1].SetSlot(ctx, sp.ID, child.ID, client.SlotSystemPrompt, "be terse")
	require.NoError(t, err)
	_, err = cs[2].UpdateSpace(ctx, sp.ID, client.SpacePatch{SystemPrompt: client.String("be kind")})
	require.NoError(t, err)
	for i, c := range cs {
		v, err := c.Slot(ctx, sp.ID, child.ID, client.SlotSystemPrompt)
		require.NoError(t, err)
		if assert.NotNil(t, v) {
			assert.Equal(t, "be terse", *v, "child's system prompt through %s", procs[i].name)
		}
		v, err = c.Slot(ctx, sp.ID, root, client.SlotSystemPrompt)
		require.NoError(t, err)
		if assert.NotNil(t, v) {
			assert.Equal(t, "be kind", *v, "root's system prompt through %s", procs[i].name)
		}
		got, err := c.GetSpace(ctx, sp.ID)
		require.NoError(t, err)
		if assert.NotNil(t, got.SystemPrompt) {
			assert.Equal(t, "be kind", *got.SystemPrompt, "space's system prompt through %s", procs[i].name)
		}
	}

	// An archive through a is seen by b and c: the session reads archived
	// and refuses turns through every process.
	_, err = cs[0].Archive(ctx, sp.ID, child.ID)
	require.NoError(t, err)
	for i, c := range cs {
		m, err := c.Session(ctx, sp.ID, child.ID)
		require.NoError(t, err)
		assert.Equal(t, "archived", m.Status, "through %s", procs[i].name)
		_, err = c.Turn(ctx, sp.ID, child.ID, "too late")
		assert.ErrorIs(t, err, client.ErrSessionArchived, "through %s", procs[i].name)
	}

	// Concurrent forks of one parent through the three processes, on a
	// space no process has activated yet: they race for its lease too.
	sp2, err := cs[0].CreateSpace(ctx, client.SpaceInput{Label: "forks"})
	require.NoError(t, err)
	var root2 string
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT id::text FROM sessions WHERE space_id = $1 AND parent_id IS NULL",
		sp2.ID).Scan(&root2))
	require.Empty(t, leaseOwner(t, st, sp2.ID), "not activated yet")
	const perProc = 4
	type forked struct {
		meta *client.SessionMeta
		err  error
		via  string
	}
	results := make(chan forked, len(cs)*perProc)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range cs {
		for j := range perProc {
			wg.Go(func() {
				<-start
				m, err := c.Fork(ctx, sp2.ID, root2, client.ForkOptions{Label: fmt.Sprintf("%s fork %d", procs[i].name, j)})
				results <- forked{m, err, procs[i].name}
			})
		}
	}
	close(start)
	wg.Wait()
	close(results)
	byIndex := map[int]string{}
	var children []string
	for r := range results {
		if !assert.NoError(t, r.err, "fork through %s", r.via) {
			continue
		}
		if prev, dup := byIndex[r.meta.Index]; dup {
			t.Errorf("forks %q and %q of one parent both got index %d", prev, r.meta.Label, r.meta.Index)
		}
		byIndex[r.meta.Index] = r.meta.Label
		children = append(children, r.meta.ID)
	}
	rows, err := st.Pool().Query(ctx, "SELECT idx FROM sessions WHERE space_id = $1 AND parent_id = $2", sp2.ID, root2)
	require.NoError(t, err)
	var stored []int
	for rows.Next() {
		var idx int
		require.NoError(t, rows.Scan(&idx))
		stored = append(stored, idx)
	}
	require.NoError(t, rows.Err())
	assert.Len(t, stored, len(cs)*perProc, "forks stored")
	assert.Len(t, compactSorted(stored), len(stored), "stored sibling indexes are unique: %v", stored)
	for i, c := range cs {
		got, err := c.Tree(ctx, sp2.ID)
		require.NoError(t, err)
		assert.ElementsMatch(t, append([]string{root2}, children...), treeIDs(got), "tree through %s", procs[i].name)
	}

	// Concurrent turns on one session through the three processes run one
	// after the other: whole turns, and turnCount is the number of 200s.
	const turnsPerProc = 3
	var oks atomic.Int64
	var answered sync.Map // input → true when answered 200
	for i, c := range cs {
		for j := range turnsPerProc {
			wg.Go(func() {
				in := fmt.Sprintf("turn %s %d", procs[i].name, j)
				if _, err := c.Turn(ctx, sp2.ID, root2, in); err != nil {
					t.Errorf("turn %q through %s: %v", in, procs[i].name, err)
					return
				}
				oks.Add(1)
				answered.Store(in, true)
			})
		}
	}
	wg.Wait()
	for i, c := range cs {
		recs, err := c.Messages(ctx, sp2.ID, root2, 0, 0)
		require.NoError(t, err)
		inputs := checkAlternating(t, recs, "through "+procs[i].name)
		assert.Len(t, inputs, int(oks.Load()), "one user record per 200, through %s", procs[i].name)
		assert.Len(t, compactSorted(inputs), len(inputs), "no input stored twice")
		for _, in := range inputs {
			_, ok := answered.Load(in)
			assert.True(t, ok, "input %q stored but not answered 200", in)
		}
		m, err := c.Session(ctx, sp2.ID, root2)
		require.NoError(t, err)
		assert.Equal(t, int(oks.Load()), m.TurnCount, "turnCount through %s", procs[i].name)
	}
}

// compactSorted returns the distinct values of s, sorted.
func compactSorted[T int | string](s []T) []T {
	c := slices.Clone(s)
	slices.Sort(c)
	return slices.Compact(c)
}

// newClusterWorld creates, through c, spaces with a root session and two
// forks each; the load runs turns on every session.
func newClusterWorld(t *testing.T, key string, c *client.Client, spaces int) *chaosWorld {
	t.Helper()
	w := newWorld(key)
	w.populate(t, c, "cluster", spaces)
	return w
}

// worldSpaces returns the distinct space ids of a world.
func worldSpaces(w *chaosWorld) []string {
	var out []string
	for _, at := range w.sessions {
		out = append(out, at[0])
	}
	return compactSorted(out)
}

// lbLoad is clients behind a load balancer: each request goes to the next
// process in turn, and one whose connection is refused (a stopped
// process) goes to the next. Each client runs turns, and now and then a
// fork, on one session until stopped. The only failures allowed are
// answers with a retryable code (503 UNAVAILABLE, 429 BUSY), a connection
// broken by the death of a killed process (expectCut), and a connection
// closed without an answer by a process stopping gracefully (stopping;
// such a turn must not be stored: see checkDropped).
type lbLoad struct {
	w     *chaosWorld
	bases []string
	hc    *http.Client
	rr    atomic.Uint64
	stop  chan struct{}
	wg    sync.WaitGroup

	mu  sync.Mutex
	cut map[string]bool // killed processes: their broken connections are expected
	// stopping holds, per address, when the process there was told to
	// stop and (once known) when it exited.
	stopping map[string][2]time.Time
	dropped  []string // turns whose connection a stopping process closed unanswered
	oks      []lbOK   // turns answered 200
	forks    []lbFork // forks answered 201
}

// lbOK is a turn answered 200.
type lbOK struct {
	at        [2]string
	base      string // the process the request was sent to
	sent, got time.Time
}

// lbFork is a fork answered 201.
type lbFork struct {
	spaceID, parentID, childID string
}

func startLB(w *chaosWorld, bases []string, clients int) *lbLoad {
	l := &lbLoad{w: w, bases: bases, stop: make(chan struct{}), cut: map[string]bool{}, stopping: map[string][2]time.Time{},
		// No keep-alive: each request picks its process afresh, as a load
		// balancer's new connection would.
		hc: &http.Client{Timeout: chaosDeadline, Transport: &http.Transport{DisableKeepAlives: true}}}
	for i := range clients {
		at := w.sessions[i%len(w.sessions)]
		l.wg.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					w.forbid("client %d panicked: %v", i, v)
				}
			}()
			l.client(i, at)
		})
	}
	return l
}

func (l *lbLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// stopFrom says that the process at base is about to be stopped
// gracefully; stopUntil, that it exited.
func (l *lbLoad) stopFrom(base string) {
	l.mu.Lock()
	l.stopping[base] = [2]time.Time{time.Now()}
	l.mu.Unlock()
}

func (l *lbLoad) stopUntil(base string) {
	l.mu.Lock()
	l.stopping[base] = [2]time.Time{l.stopping[base][0], time.Now()}
	l.mu.Unlock()
}

// expectCut says that connections to base may break: it is being killed.
func (l *lbLoad) expectCut(base string) {
	l.mu.Lock()
	l.cut[base] = true
	l.mu.Unlock()
}

func (l *lbLoad) client(n int, at [2]string) {
	for seq := 0; !l.stopped(); seq++ {
		if seq%6 == 5 {
			l.fork(n, seq, at)
			continue
		}
		input := fmt.Sprintf("lb %d %d", n, seq)
		body, _ := json.Marshal(map[string]string{"input": input})
		l.w.send(input)
		base, status, b, sent, err := l.do(http.MethodPost, "/spaces/"+at[0]+"/sessions/"+at[1]+"/turn", body)
		who := fmt.Sprintf("turn %q through %s (sent %s, answered %s)", input, base, clock(sent), clock(time.Now()))
		if l.outcome(who, input, base, sent, status, http.StatusOK, b, err) {
			got := time.Now()
			l.w.confirm(input, at)
			l.mu.Lock()
			l.oks = append(l.oks, lbOK{at: at, base: base, sent: sent, got: got})
			l.mu.Unlock()
		}
	}
}

func (l *lbLoad) fork(n, seq int, at [2]string) {
	body, _ := json.Marshal(map[string]string{"label": fmt.Sprintf("lb fork %d %d", n, seq)})
	base, status, b, sent, err := l.do(http.MethodPost, "/spaces/"+at[0]+"/sessions/"+at[1]+"/fork", body)
	who := fmt.Sprintf("fork %d %d through %s (sent %s, answered %s)", n, seq, base, clock(sent), clock(time.Now()))
	if !l.outcome(who, "", base, sent, status, http.StatusCreated, b, err) {
		return
	}
	var m struct{ ID string }
	if err := json.Unmarshal(b, &m); err != nil || m.ID == "" {
		l.w.forbid("fork %d %d: answer %s", n, seq, b)
		return
	}
	l.mu.Lock()
	l.forks = append(l.forks, lbFork{spaceID: at[0], parentID: at[1], childID: m.ID})
	l.mu.Unlock()
}

// clock formats a time of day as the processes' logs do.
func clock(t time.Time) string { return t.UTC().Format("15:04:05.000") }

// outcome records what a request got and reports whether it succeeded.
// input is the turn's input ("" for a fork).
func (l *lbLoad) outcome(who, input, base string, sent time.Time, status, want int, body []byte, err error) bool {
	switch {
	case err != nil:
		l.mu.Lock()
		defer l.mu.Unlock()
		win, stopping := l.stopping[base]
		switch {
		case errors.Is(err, syscall.ECONNREFUSED) && l.stopped():
			l.w.note("connection refused") // do tried the next process until the load stopped
		case l.cut[base]:
			l.w.note("cut by the kill")
		case stopping && !sent.Before(win[0]) && (win[1].IsZero() || !sent.After(win[1])) && closedUnanswered(err):
			// Go's http.Server drops a request it reads once its
			// Shutdown began: see clusterStopAnswersAccepted. Only a
			// connection closed without an answer is that; a timeout is
			// a hang, whenever it happens.
			l.w.note("dropped by the stopping process")
			if input != "" {
				l.dropped = append(l.dropped, input)
			}
		default:
			l.w.forbid("%s: %v", who, err)
		}
		return false
	case status == want:
		return true
	}
	var e struct{ Code string }
	_ = json.Unmarshal(body, &e)
	switch {
	case status == http.StatusServiceUnavailable && e.Code == "UNAVAILABLE",
		status == http.StatusTooManyRequests && e.Code == "BUSY":
		l.w.note(e.Code)
	default:
		l.w.forbid("%s: status %d: %s", who, status, body)
	}
	return false
}

// closedUnanswered reports whether err is a connection the server closed
// (or reset) before answering.
func closedUnanswered(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// do sends a request to the next process, and on to the next while the
// connection is refused. It returns the process that took the request.
func (l *lbLoad) do(method, path string, body []byte) (base string, status int, b []byte, sent time.Time, err error) {
	for tries := 1; ; tries++ {
		base = l.bases[l.rr.Add(1)%uint64(len(l.bases))]
		req, err := http.NewRequest(method, base+path, strings.NewReader(string(body)))
		if err != nil {
			return base, 0, nil, time.Time{}, err
		}
		req.Header.Set("X-API-Key", l.w.key)
		req.Header.Set("Content-Type", "application/json")
		sent = time.Now()
		res, err := l.hc.Do(req)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) && !l.stopped() && tries < 1000 {
				l.w.note("connection refused")
				if tries%len(l.bases) == 0 {
					time.Sleep(20 * time.Millisecond) // every process refused: wait a moment
				}
				continue
			}
			return base, 0, nil, sent, err
		}
		b, err = io.ReadAll(res.Body)
		_ = res.Body.Close()
		return base, res.StatusCode, b, sent, err
	}
}

// firstOK returns when the first turn answered 200 on the space was
// received, among turns sent at or after since to a process other than
// not.
func (l *lbLoad) firstOK(spaceID, not string, since time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, ok := range l.oks {
		if ok.base == not || ok.sent.Before(since) || ok.at[0] != spaceID {
			continue
		}
		if first.IsZero() || ok.got.Before(first) {
			first = ok.got
		}
	}
	return first, !first.IsZero()
}

// failover waits until every one of spaces had a turn answered 200 through
// a process other than not, sent at or after since, and returns the
// longest time from from to such an answer.
func (l *lbLoad) failover(t *testing.T, spaces []string, not string, since, from time.Time) time.Duration {
	t.Helper()
	var longest time.Duration
	deadline := time.Now().Add(clusterWait)
	for _, id := range spaces {
		for {
			if first, ok := l.firstOK(id, not, since); ok {
				longest = max(longest, first.Sub(from))
				break
			}
			if time.Now().After(deadline) {
				l.w.mu.Lock()
				defer l.w.mu.Unlock()
				t.Fatalf("no turn on space %s answered 200 through another process within %v; outcomes %v, forbidden %v",
					id, clusterWait, l.w.outcomes, l.w.bad)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return longest
}

// end stops the clients and waits for them (each bounded by its request
// deadline).
func (l *lbLoad) end(t *testing.T) {
	t.Helper()
	close(l.stop)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(2 * chaosDeadline):
		t.Fatal("clients did not finish within their deadlines")
	}
	l.hc.CloseIdleConnections()
}

// checkForks checks that every fork answered 201 is stored under its
// parent and in the tree read through base, and that sibling indexes are
// unique.
func (l *lbLoad) checkForks(t *testing.T, st *pgstore.Store, c *client.Client) {
	t.Helper()
	require.NotEmpty(t, l.forks, "some forks answered 201")
	ctx := testCtx(t, time.Minute)
	trees := map[string][]string{}
	for _, f := range l.forks {
		if trees[f.spaceID] == nil {
			tree, err := c.Tree(ctx, f.spaceID)
			require.NoError(t, err)
			trees[f.spaceID] = treeIDs(tree)
		}
		assert.Contains(t, trees[f.spaceID], f.childID, "fork answered 201 is in the tree")
		var parent string
		err := st.Pool().QueryRow(ctx, "SELECT parent_id::text FROM sessions WHERE space_id = $1 AND id = $2",
			f.spaceID, f.childID).Scan(&parent)
		if assert.NoError(t, err, "fork %s answered 201 is stored", f.childID) {
			assert.Equal(t, f.parentID, parent)
		}
	}
	var dups int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM sessions WHERE parent_id IS NOT NULL
		GROUP BY space_id, parent_id, idx HAVING count(*) > 1) d`).Scan(&dups))
	assert.Zero(t, dups, "sibling indexes shared by several forks")
	t.Logf("%d forks answered 201", len(l.forks))
}

// checkDropped checks that no turn whose connection a stopping process
// closed without an answer was stored.
func (l *lbLoad) checkDropped(t *testing.T, st *pgstore.Store) {
	t.Helper()
	if len(l.dropped) == 0 {
		return
	}
	var n int
	require.NoError(t, st.Pool().QueryRow(t.Context(), "SELECT count(*) FROM records WHERE role = 'user' AND content = ANY($1)",
		l.dropped).Scan(&n))
	assert.Zero(t, n, "turns dropped unanswered by a stopping process %v are stored", l.dropped)
	t.Logf("turns dropped unanswered by a stopping process: %v", l.dropped)
}

func (l *lbLoad) checkNoForbidden(t *testing.T) {
	t.Helper()
	l.w.mu.Lock()
	defer l.w.mu.Unlock()
	for _, b := range l.w.bad {
		t.Errorf("forbidden outcome: %s", b)
	}
}

// 2. The owner is killed (SIGKILL) under concurrent turns: another process
// serves its spaces within the lease TTL plus a second. Then the new owner
// is stopped gracefully (SIGTERM): its leases are handed back as it exits.
// Every turn answered 200 is stored exactly once, and no turn half.
func clusterFailover(t *testing.T, bin string) {
	_, procs, st, key := newCluster(t, bin, "a", "b", "c")
	w := newClusterWorld(t, key, client.New(procs[0].base, key), 2)
	spaces := worldSpaces(w)
	for _, id := range spaces {
		require.Equal(t, procs[0].base, leaseOwner(t, st, id), "a owns the spaces it created and loaded")
	}
	bases := []string{procs[0].base, procs[1].base, procs[2].base}
	l := startLB(w, bases, 6)
	defer func() {
		if !l.stopped() {
			l.end(t)
		}
	}()
	waitConfirmed(t, w, 20)

	// SIGKILL the owner.
	l.expectCut(procs[0].base)
	killed := time.Now()
	procs[0].kill(t)
	dead := time.Now()
	failover := l.failover(t, spaces, procs[0].base, dead, killed)
	t.Logf("fail-over after SIGKILL (lease TTL %v): each space had a turn answered 200 through another process within %v of the kill",
		clusterTTL, failover.Round(time.Millisecond))
	assert.LessOrEqual(t, failover, clusterTTL+time.Second, "another process serves the spaces within the lease TTL plus a second")
	waitConfirmed(t, w, 20)

	// SIGTERM the new owner of the first space.
	owner := leaseOwner(t, st, spaces[0])
	var victim *clusterProc
	for _, p := range procs[1:] {
		if p.base == owner {
			victim = p
		}
	}
	require.NotNil(t, victim, "b or c owns the space after the kill (owner %q)", owner)
	var owned []string
	for _, id := range spaces {
		if leaseOwner(t, st, id) == victim.base {
			owned = append(owned, id)
		}
	}
	node, ok := nodeOf(t, st, victim.base)
	require.True(t, ok)
	l.stopFrom(victim.base)
	termed := time.Now()
	victim.signal(t, syscall.SIGTERM)
	closed := waitRefused(t, victim.addr)
	require.NoError(t, victim.wait(t), "stello %s after SIGTERM", victim.name)
	exited := time.Now()
	l.stopUntil(victim.base)
	// Its leases went with it as it left: none waits for the TTL.
	var leases, rows int
	require.NoError(t, st.Pool().QueryRow(t.Context(), `SELECT (SELECT count(*) FROM space_leases WHERE node_id = $1),
		(SELECT count(*) FROM nodes WHERE id = $1)`, node.ID).Scan(&leases, &rows))
	assert.Zero(t, leases, "leases of the stopped process")
	assert.Zero(t, rows, "membership row of the stopped process")
	failover = l.failover(t, owned, victim.base, closed, termed)
	t.Logf("fail-over after SIGTERM of %s (owned %d spaces): listener closed after %v, process exited after %v, each space had a turn answered 200 through another process within %v of the SIGTERM",
		victim.name, len(owned), closed.Sub(termed).Round(time.Millisecond), exited.Sub(termed).Round(time.Millisecond), failover.Round(time.Millisecond))
	assert.LessOrEqual(t, failover, clusterTTL+time.Second, "another process serves the spaces after a graceful stop")
	waitConfirmed(t, w, 20)
	l.end(t)

	l.checkNoForbidden(t)
	survivor := procs[1]
	if survivor == victim {
		survivor = procs[2]
	}
	checkStored(t, w, survivor.base)
	l.checkDropped(t, st)
	l.checkForks(t, st, client.New(survivor.base, key))
}

// 3. An owner paused (SIGSTOP) with a turn in flight, whose lease another
// process takes over, commits nothing once it runs again (SIGCONT): its
// turn fails, nothing of it is stored, and writes through it after that
// are not committed under its old lease.
func clusterFencing(t *testing.T, bin string) {
	url := testutil.MigratedURL(t)
	st := openStore(t, url)
	// a's model takes 6s to answer: its turn is mid-call when it is paused.
	a := startProc(t, bin, "a", "", "--database-url", url, "--fake-latency", "6s")
	b := startProc(t, bin, "b", "", "--database-url", url)
	key := clusterUser(t, st)
	ca, cb := client.New(a.base, key), client.New(b.base, key)
	ctx := testCtx(t, 2*time.Minute)

	sp, err := ca.CreateSpace(ctx, client.SpaceInput{Label: "fenced"})
	require.NoError(t, err)
	tree, err := ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	root := tree.ID
	require.Equal(t, a.base, leaseOwner(t, st, sp.ID))
	var epochBefore int64
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT epoch FROM space_leases WHERE space_id = $1", sp.ID).Scan(&epochBefore))

	// The turn starts on a (its stream is open) and waits for the model.
	ca0 := client.New(a.base, key, client.WithResume(0, 0))
	stream, err := ca0.TurnStream(ctx, sp.ID, root, "the fenced turn")
	require.NoError(t, err)
	defer stream.Close()
	turnID := stream.TurnID()
	require.NotEmpty(t, turnID)

	a.signal(t, syscall.SIGSTOP)
	paused := time.Now()
	waitAlive(t, st, a, false)
	// A request through b after a's TTL takes the space over.
	m, err := cb.Session(ctx, sp.ID, root)
	require.NoError(t, err)
	assert.Zero(t, m.TurnCount)
	require.Equal(t, b.base, leaseOwner(t, st, sp.ID), "b took the lease over")
	var epochAfter int64
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT epoch FROM space_leases WHERE space_id = $1", sp.ID).Scan(&epochAfter))
	assert.Greater(t, epochAfter, epochBefore, "a takeover gives a new epoch")
	_, err = cb.Turn(ctx, sp.ID, root, "a turn on the new owner")
	require.NoError(t, err)

	a.signal(t, syscall.SIGCONT)
	t.Logf("a was paused for %v", time.Since(paused).Round(time.Millisecond))
	// a's heartbeat is renewed: it runs as a live process again.
	waitAlive(t, st, a, true)

	// a's turn finishes its model call and cannot commit: its stream ends
	// with an error, never with an end event.
	var ended bool
	var streamErr error
	for ev, err := range stream.Events() {
		if err != nil {
			streamErr = err
			break
		}
		if ev.Type == client.EventEnd {
			ended = true
		}
	}
	assert.False(t, ended, "the paused owner's turn ended as committed")
	assert.Error(t, streamErr, "the paused owner's turn reports an error")
	t.Logf("the paused owner's turn ended with: %v", streamErr)

	// Nothing of it is stored: the records through the new owner and in
	// the database hold the new owner's turn only.
	recs, err := cb.Messages(ctx, sp.ID, root, 0, 0)
	require.NoError(t, err)
	inputs := checkAlternating(t, recs, "root through b")
	assert.Equal(t, []string{"a turn on the new owner"}, inputs)
	var stored, logged int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM records WHERE space_id = $1 AND content = 'the fenced turn'),
		(SELECT count(*) FROM turns WHERE space_id = $1 AND input = 'the fenced turn')`, sp.ID).Scan(&stored, &logged))
	assert.Zero(t, stored, "records of the fenced turn")
	assert.Zero(t, logged, "turn log rows of the fenced turn (its failure is written under the lost lease too)")
	m, err = cb.Session(ctx, sp.ID, root)
	require.NoError(t, err)
	assert.Equal(t, 1, m.TurnCount)

	// Writes sent to a now either fail or are made by the new owner, so
	// b's view (its memory) and the database agree.
	_, err = ca.Fork(ctx, sp.ID, root, client.ForkOptions{Label: "through a after the pause"})
	if err != nil {
		assert.ErrorIs(t, err, client.ErrUnavailable, "a fork through the fenced process")
	}
	_, err = ca.SetSlot(ctx, sp.ID, root, client.SlotSystemPrompt, "written through a")
	if err != nil {
		assert.ErrorIs(t, err, client.ErrUnavailable, "a prompt write through the fenced process")
	}
	tree, err = cb.Tree(ctx, sp.ID)
	require.NoError(t, err)
	rows, err := st.Pool().Query(ctx, "SELECT id::text FROM sessions WHERE space_id = $1", sp.ID)
	require.NoError(t, err)
	var inDB []string
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		inDB = append(inDB, id)
	}
	require.NoError(t, rows.Err())
	assert.ElementsMatch(t, inDB, treeIDs(tree), "sessions in the database and in the new owner's tree")
	var prompt *string
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT system_prompt FROM session_data WHERE space_id = $1 AND session_id = $2",
		sp.ID, root).Scan(&prompt))
	v, err := cb.Slot(ctx, sp.ID, root, client.SlotSystemPrompt)
	require.NoError(t, err)
	assert.Equal(t, prompt, v, "root's system prompt in the database and through the new owner")
	require.Equal(t, b.base, leaseOwner(t, st, sp.ID), "b still owns the space")
}

// 3b. An owner paused past its lease TTL, whose space another process took
// over and wrote to, must not answer reads from its stale memory once it
// runs again.
func clusterStaleReads(t *testing.T, bin string) {
	_, procs, st, key := newCluster(t, bin, "a", "b")
	a, b := procs[0], procs[1]
	ca, cb := client.New(a.base, key), client.New(b.base, key)
	ctx := testCtx(t, 2*time.Minute)

	sp, err := ca.CreateSpace(ctx, client.SpaceInput{Label: "stale"})
	require.NoError(t, err)
	tree, err := ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	_, err = ca.Turn(ctx, sp.ID, tree.ID, "before the pause")
	require.NoError(t, err)
	require.Equal(t, a.base, leaseOwner(t, st, sp.ID))

	a.signal(t, syscall.SIGSTOP)
	waitAlive(t, st, a, false)
	child, err := cb.Fork(ctx, sp.ID, tree.ID, client.ForkOptions{Label: "made by b"})
	require.NoError(t, err)
	_, err = cb.Turn(ctx, sp.ID, tree.ID, "after the takeover")
	require.NoError(t, err)
	require.Equal(t, b.base, leaseOwner(t, st, sp.ID))
	a.signal(t, syscall.SIGCONT)
	waitAlive(t, st, a, true)

	got, err := ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{tree.ID, child.ID}, treeIDs(got), "the tree read through a after it resumed")
	m, err := ca.Session(ctx, sp.ID, tree.ID)
	require.NoError(t, err)
	assert.Equal(t, 2, m.TurnCount, "the root's turnCount read through a after it resumed")
	assert.Equal(t, []string{child.ID}, m.Children, "the root's children read through a after it resumed")
	recs, err := ca.Messages(ctx, sp.ID, tree.ID, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"before the pause", "after the takeover"}, checkAlternating(t, recs, "root through a"),
		"the records read through a after it resumed")
}

// 4. A WebSocket through a process that does not own the space works as
// one to the owner: enter, a streamed turn, a fork, space events; deleting
// the space through a third process closes it with 4404; the owner's
// graceful stop closes it with 1001, and the client reconnects through any
// process.
func clusterWebSocket(t *testing.T, bin string) {
	_, procs, st, key := newCluster(t, bin, "a", "b", "c")
	a, b, c := procs[0], procs[1], procs[2]
	ca, cb, cc := client.New(a.base, key), client.New(b.base, key), client.New(c.base, key)
	ctx := testCtx(t, 2*time.Minute)

	sp, err := ca.CreateSpace(ctx, client.SpaceInput{Label: "ws"})
	require.NoError(t, err)
	tree, err := ca.Tree(ctx, sp.ID)
	require.NoError(t, err)
	require.Equal(t, a.base, leaseOwner(t, st, sp.ID))

	conn, err := cb.Dial(ctx, sp.ID)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Subscribe(ctx))
	boot, err := conn.Enter(ctx, tree.ID)
	require.NoError(t, err)
	assert.Equal(t, tree.ID, boot.Session.ID)
	var deltas int
	var text string
	var end *client.Event
	for ev, err := range conn.Stream(ctx, "streamed through b") {
		require.NoError(t, err)
		switch ev.Type {
		case client.EventDelta:
			deltas++
			text += ev.Chunk
		case client.EventEnd:
			end = &ev
		}
	}
	require.NotNil(t, end, "the stream ended with its result")
	assert.Positive(t, deltas)
	assert.Equal(t, end.Result.Text(), text, "the deltas make the reply")
	child, err := conn.Fork(ctx, client.ForkOptions{Label: "ws child"})
	require.NoError(t, err)
	var committed, created bool
	timeout := time.After(clusterWait)
	for !committed || !created {
		select {
		case m := <-conn.Events():
			if m.Type != client.MsgSpaceEvent {
				continue
			}
			switch {
			case m.Event == client.SpaceTurnCommitted && m.SessionID == tree.ID:
				committed = true
			case m.Event == client.SpaceSessionCreated && m.Session != nil && m.Session.ID == child.ID:
				created = true
			}
		case <-conn.Done():
			t.Fatalf("the connection ended: %v", conn.CloseError())
		case <-timeout:
			t.Fatalf("space events: turn.committed %v, session.created %v", committed, created)
		}
	}

	// Deleting the space through c closes the socket through b with 4404.
	require.NoError(t, cc.DeleteSpace(ctx, sp.ID))
	requireClosedWith(t, conn, 4404)

	// The owner's graceful stop closes a socket proxied through b with 1001.
	sp2, tree2 := ownedSpace(t, ctx, st, ca, a.base, "ws 2")
	conn2 := enteredConn(t, ctx, cb, sp2, tree2, "before the stop")
	termed := time.Now()
	a.signal(t, syscall.SIGTERM)
	requireClosedWith(t, conn2, 1001)
	require.NoError(t, a.wait(t), "stello a after SIGTERM")

	// The client reconnects through another process and goes on.
	var conn3 *client.Conn
	eventually(t, clusterWait, func() bool {
		cn, err := cb.Dial(ctx, sp2)
		if err != nil {
			require.ErrorIs(t, err, client.ErrUnavailable, "reconnecting through b")
			return false
		}
		conn3 = cn
		return true
	}, "reconnect through b")
	defer conn3.Close()
	_, err = conn3.Enter(ctx, tree2)
	require.NoError(t, err)
	_, err = conn3.Message(ctx, "after the stop")
	require.NoError(t, err)
	t.Logf("WebSocket fail-over after the owner's SIGTERM: a turn answered through another process %v after it",
		time.Since(termed).Round(time.Millisecond))
	owner := leaseOwner(t, st, sp2)
	require.Contains(t, []string{b.base, c.base}, owner)

	// Through c too (forwarded to the new owner, or served by c if c
	// took the space over).
	enteredConn(t, ctx, cc, sp2, tree2, "through c")

	// Every turn of the sockets is stored, once.
	msgs, err := cc.Messages(ctx, sp2, tree2, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"before the stop", "after the stop", "through c"}, checkAlternating(t, msgs, "ws 2 root"))
}

// 4b. The graceful stop of a process that forwards a WebSocket to the
// space's owner closes it with 1001 too, as any server shutdown does; the
// client reconnects through another process.
func clusterWebSocketForwarderStop(t *testing.T, bin string) {
	_, procs, st, key := newCluster(t, bin, "a", "b")
	a, b := procs[0], procs[1]
	ca, cb := client.New(a.base, key), client.New(b.base, key)
	ctx := testCtx(t, 2*time.Minute)

	sp, tree := ownedSpace(t, ctx, st, ca, a.base, "ws forwarder")
	conn := enteredConn(t, ctx, cb, sp, tree, "through b")

	b.signal(t, syscall.SIGTERM)
	requireClosedWith(t, conn, 1001)
	require.NoError(t, b.wait(t), "stello b after SIGTERM")

	enteredConn(t, ctx, ca, sp, tree, "through a")
}

// ownedSpace creates a space through c, checks that the process at owner
// took its lease, and returns the space's id and its root's.
func ownedSpace(t *testing.T, ctx context.Context, st *pgstore.Store, c *client.Client, owner, label string) (string, string) {
	t.Helper()
	sp, err := c.CreateSpace(ctx, client.SpaceInput{Label: label})
	require.NoError(t, err)
	tree, err := c.Tree(ctx, sp.ID)
	require.NoError(t, err)
	require.Equal(t, owner, leaseOwner(t, st, sp.ID))
	return sp.ID, tree.ID
}

// enteredConn opens a WebSocket on the space through c, enters the
// session and has one message answered; it is closed at cleanup.
func enteredConn(t *testing.T, ctx context.Context, c *client.Client, spaceID, sessionID, msg string) *client.Conn {
	t.Helper()
	conn, err := c.Dial(ctx, spaceID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	_, err = conn.Enter(ctx, sessionID)
	require.NoError(t, err)
	_, err = conn.Message(ctx, msg)
	require.NoError(t, err)
	return conn
}

// requireClosedWith waits for the server to close conn with code.
func requireClosedWith(t *testing.T, conn *client.Conn, code int) {
	t.Helper()
	select {
	case <-conn.Done():
	case <-time.After(clusterWait):
		t.Fatalf("the connection is still open; want it closed with %d", code)
	}
	ce := conn.CloseError()
	require.NotNil(t, ce, "the connection ended without a close frame; want %d", code)
	require.Equal(t, code, ce.Code, "close code (%s)", ce.Text)
}

// 5. A rolling restart under load: each process in turn is stopped
// (SIGTERM) and replaced by a new one on the same address, while clients
// behind a round-robin balancer run turns and forks. No request fails but
// with a retryable code, and every turn answered 200 is stored once.
func clusterRollingRestart(t *testing.T, bin string) {
	url, procs, st, key := newCluster(t, bin, "a", "b", "c")
	// One space owned by each process.
	w := newWorld(key)
	for _, p := range procs {
		w.populate(t, client.New(p.base, key), "cluster", 1)
	}
	bases := make([]string, len(procs))
	for i, p := range procs {
		bases[i] = p.base
	}
	l := startLB(w, bases, 9)
	defer func() {
		if !l.stopped() {
			l.end(t)
		}
	}()
	waitConfirmed(t, w, 20)

	for i, old := range procs {
		var owned []string
		for _, id := range worldSpaces(w) {
			if leaseOwner(t, st, id) == old.base {
				owned = append(owned, id)
			}
		}
		l.stopFrom(old.base)
		termed := time.Now()
		old.signal(t, syscall.SIGTERM)
		closed := waitRefused(t, old.addr)
		require.NoError(t, old.wait(t), "stello %s after SIGTERM", old.name)
		exited := time.Now()
		l.stopUntil(old.base)
		procs[i] = startProc(t, bin, old.name+"2", old.addr, "--database-url", url)
		restarted := time.Now()
		msg := fmt.Sprintf("rolling restart of %s (owned %d spaces): SIGTERM at %s, listener closed %v after it, exited after %v, replaced after %v",
			old.name, len(owned), clock(termed), closed.Sub(termed).Round(time.Millisecond), exited.Sub(termed).Round(time.Millisecond),
			restarted.Sub(termed).Round(time.Millisecond))
		if len(owned) > 0 {
			msg += fmt.Sprintf(", each of its spaces had a turn answered 200 through another process within %v of the SIGTERM",
				l.failover(t, owned, old.base, closed, termed).Round(time.Millisecond))
		}
		t.Log(msg)
		waitConfirmed(t, w, 20)
	}
	l.end(t)

	l.checkNoForbidden(t)
	checkStored(t, w, procs[0].base)
	l.checkDropped(t, st)
	l.checkForks(t, st, client.New(procs[1].base, key))
}

// 5b. A request on a connection the process accepted before its graceful
// stop began is answered (served, or 503 UNAVAILABLE), never dropped
// without an answer: neither a client nor a load balancer can tell a
// dropped request from one that ran. In a rolling restart under load this
// is the one failure seen besides refused connections (a request sent at
// the moment of the SIGTERM gets EOF).
func clusterStopAnswersAccepted(t *testing.T, bin string) {
	_, procs, _, key := newCluster(t, bin, "a", "b")
	a, b := procs[0], procs[1]
	ctx := testCtx(t, time.Minute)
	cb := client.New(b.base, key)
	sp, err := cb.CreateSpace(ctx, client.SpaceInput{Label: "stop"})
	require.NoError(t, err)
	tree, err := cb.Tree(ctx, sp.ID)
	require.NoError(t, err)

	// A connection to a, taken by a's accept loop (the process is idle: a
	// moment is plenty) before a is told to stop; the request is written
	// once a's listener is closed.
	conn, err := net.DialTimeout("tcp", a.addr, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	time.Sleep(200 * time.Millisecond)
	a.signal(t, syscall.SIGTERM)
	waitRefused(t, a.addr)
	body := `{"input":"sent as a stops"}`
	_, err = fmt.Fprintf(conn, "POST /spaces/%s/sessions/%s/turn HTTP/1.1\r\nHost: %s\r\nX-API-Key: %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", sp.ID, tree.ID, a.addr, key, len(body), body)
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(clusterWait)))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err, "an answer to a request on a connection accepted before the stop")
	defer res.Body.Close()
	rb, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	if res.StatusCode != http.StatusOK {
		assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "%s", rb)
		assert.Contains(t, string(rb), `"UNAVAILABLE"`)
	}
	require.NoError(t, a.wait(t), "stello a after SIGTERM")
}

// 6. `stello cluster status --json` lists the live processes with their
// addresses and how many spaces each owns; a killed one shows dead after
// its TTL; one stopped gracefully is gone.
func clusterStatus(t *testing.T, bin string) {
	url, procs, _, key := newCluster(t, bin, "a", "b", "c")
	ctx := testCtx(t, 2*time.Minute)
	// a owns one space, b two, c none.
	for i, owner := range []int{0, 1, 1} {
		c := client.New(procs[owner].base, key)
		sp, err := c.CreateSpace(ctx, client.SpaceInput{Label: fmt.Sprintf("status %d", i)})
		require.NoError(t, err)
		_, err = c.Tree(ctx, sp.ID)
		require.NoError(t, err)
	}
	status := func() map[string]nodeJSON {
		out := cliOK(t, "cluster", "status", "--json", "--database-url", url)
		var nodes []nodeJSON
		require.NoError(t, json.Unmarshal([]byte(out), &nodes), out)
		m := map[string]nodeJSON{}
		for _, n := range nodes {
			m[n.AdvertiseURL] = n
		}
		require.Len(t, m, len(nodes), "one row per address: %s", out)
		return m
	}
	nodes := status()
	require.Len(t, nodes, 3)
	for i, want := range []int{1, 2, 0} {
		n, ok := nodes[procs[i].base]
		require.True(t, ok, "stello %s is listed at its address %s", procs[i].name, procs[i].base)
		assert.True(t, n.Alive, "stello %s alive", procs[i].name)
		assert.Equal(t, want, n.Spaces, "spaces owned by %s", procs[i].name)
		assert.NotEmpty(t, n.ID)
		assert.Equal(t, clusterTTL.Milliseconds(), n.LeaseTTLMs)
		assert.Less(t, n.HeartbeatAgeMs, n.LeaseTTLMs)
	}

	// SIGKILL c: listed dead once its heartbeat is older than its TTL.
	killed := time.Now()
	procs[2].kill(t)
	eventually(t, clusterWait, func() bool { return !status()[procs[2].base].Alive }, "the killed process shows dead")
	t.Logf("a killed process shows dead %v after the kill", time.Since(killed).Round(time.Millisecond))
	nodes = status()
	assert.GreaterOrEqual(t, nodes[procs[2].base].HeartbeatAgeMs, clusterTTL.Milliseconds())
	assert.True(t, nodes[procs[0].base].Alive)
	assert.True(t, nodes[procs[1].base].Alive)
	text := cliOK(t, "cluster", "status", "--database-url", url)
	assert.Regexp(t, strings.ReplaceAll(procs[2].base, ".", `\.`)+`\s.*\sdead\s+0\n`, text)

	// SIGTERM b: it leaves the table with its leases.
	procs[1].term(t)
	nodes = status()
	assert.NotContains(t, nodes, procs[1].base, "a process stopped gracefully is not listed")
	assert.Len(t, nodes, 2)
	assert.Equal(t, 1, nodes[procs[0].base].Spaces)
}

// 7. Two processes on one --data-dir share its embedded PostgreSQL; the one
// that started it stops while the other serves, and the database stays up
// for it.
func clusterEmbedded(t *testing.T, bin string) {
	// Not t.TempDir(): when running as root, PostgreSQL runs as another
	// user, who cannot enter t.TempDir()'s 0700 parent.
	dir, err := os.MkdirTemp("", "stello-cluster-embedded-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	db := []string{"--data-dir", dir, "--database-url", ""}
	a := startProc(t, bin, "a", "", db...)
	b := startProc(t, bin, "b", "", db...)
	assert.Contains(t, a.stderr.String(), "started by this process")
	assert.Contains(t, b.stderr.String(), "already running")
	port, ok := runningPort(dir)
	require.True(t, ok, "postmaster.pid of a live server in the data dir")

	out := cliOK(t, "users", "create", "--name", "alice", "--json", "--data-dir", dir, "--database-url", "")
	var u map[string]string
	decodeLine(t, out, &u)
	key := u["apiKey"]
	require.NotEmpty(t, key, out)
	ca, cb := client.New(a.base, key), client.New(b.base, key)
	ctx := testCtx(t, 2*time.Minute)
	sp, err := cb.CreateSpace(ctx, client.SpaceInput{Label: "embedded"})
	require.NoError(t, err)
	tree, err := ca.Tree(ctx, sp.ID) // a owns it
	require.NoError(t, err)
	_, err = cb.Turn(ctx, sp.ID, tree.ID, "through b to a")
	require.NoError(t, err)

	// a, which started the database, stops; b keeps answering.
	a.term(t)
	assert.Contains(t, a.stderr.String(), "left running: another process still uses it")
	again, ok := runningPort(dir)
	require.True(t, ok, "the database is still running after a stopped")
	assert.Equal(t, port, again)
	require.NoError(t, cb.Ready(ctx), "b is ready")
	_, err = cb.Turn(ctx, sp.ID, tree.ID, "after a stopped")
	require.NoError(t, err, "a turn through b after a stopped")
	sp2, err := cb.CreateSpace(ctx, client.SpaceInput{Label: "after a stopped"})
	require.NoError(t, err)
	_, err = cb.Tree(ctx, sp2.ID)
	require.NoError(t, err)
	recs, err := cb.Messages(ctx, sp.ID, tree.ID, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"through b to a", "after a stopped"}, checkAlternating(t, recs, "embedded root"))

	// The last process to stop stops the database.
	b.term(t)
	_, ok = runningPort(dir)
	assert.False(t, ok, "the last process stopped the database")
}
