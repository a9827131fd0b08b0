package console_test

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
)

// Forks, archives and turns made elsewhere (here through the REST API)
// appear in the tree without a reload, from the space events.
func TestConsoleTreeFollowsSpaceEvents(t *testing.T) {
	st, key := newStack(t, testutil.StackOptions{})
	api := newREST(t, st.URL, key)
	sp := api.space(client.SpaceInput{Label: "Live"})
	root := api.tree(sp.ID)
	p := newPage(t)
	p.open(st.URL, key)
	p.wait("the root in the tree", nodeExpr("Live")+`?.getAttribute('aria-current') === 'true'`)
	p.wait("subscribed to the space events", `document.getElementById('live').dataset.state === 'live'`)
	p.eval(`window.__sameDocument = true`, nil)

	child, err := api.c.Fork(api.ctx(), sp.ID, root.ID, client.ForkOptions{Label: "From the API"})
	api.must("fork", err)
	p.wait("the REST fork in the tree", `document.querySelector('#tree li[aria-level="2"] .node-label')?.textContent === 'From the API'`)

	_, err = api.c.Turn(api.ctx(), sp.ID, child.ID, "counted")
	api.must("turn", err)
	p.wait("the turn counted", nodeExpr("From the API")+`?.querySelector('.count').textContent === '1'`)

	_, err = api.c.Archive(api.ctx(), sp.ID, child.ID)
	api.must("archive", err)
	p.wait("the archive in the tree", nodeExpr("From the API")+`?.dataset.status === 'archived'`)

	// A turn on the session on screen, made elsewhere, shows its messages.
	_, err = api.c.Turn(api.ctx(), sp.ID, root.ID, "from elsewhere")
	api.must("turn", err)
	p.wait("the other client's turn on screen", `[...document.querySelectorAll('#messages .msg-user .body')].some(e => e.textContent === 'from elsewhere')`)

	var same bool
	p.eval(`window.__sameDocument === true`, &same)
	if !same {
		t.Fatal("the page was reloaded")
	}
}

// Cancel stops a running turn: the page says CANCELLED and nothing of the
// turn is stored.
func TestConsoleCancelsARunningTurn(t *testing.T) {
	st, key := newStack(t, testutil.StackOptions{LLM: fake.New(fake.Config{Latency: 50 * time.Millisecond, ChunkDelay: 150 * time.Millisecond, ReplyWords: 400})})
	api := newREST(t, st.URL, key)
	sp := api.space(client.SpaceInput{Label: "Cancel"})
	root := api.tree(sp.ID)
	p := newPage(t)
	p.open(st.URL, key)
	p.wait("the root selected", nodeExpr("Cancel")+`?.getAttribute('aria-current') === 'true'`)
	p.do("send a long turn", chromedp.SendKeys(chromedp.ID("input"), "write a long essay"), pressEnter(false))
	p.wait("the reply streaming, cancel offered", `document.querySelector('.msg.streaming .body')?.textContent.length > 0 && !document.getElementById('cancel').hidden && !document.getElementById('cancel').disabled`)
	p.do("cancel", chromedp.Click(chromedp.ID("cancel")))
	p.wait("the turn cancelled", `document.querySelector('.msg-assistant.failed')?.dataset.code === 'CANCELLED'`)
	p.wait("Send back in its slot", `!document.getElementById('send').hidden && document.getElementById('cancel').hidden`)
	if m := api.messages(sp.ID, root.ID); len(m) != 0 {
		t.Fatalf("a cancelled turn left messages: %+v", m)
	}
}

// dropProxy forwards to the server and breaks the first streamed turn's
// connection after a few deltas; it records the resume requests.
type dropProxy struct {
	mu      sync.Mutex
	dropped bool
	resumes []string // Last-Event-ID of each resume request
}

var errDropped = errors.New("connection dropped by the test proxy")

// cutBody passes through the SSE body until it has passed n delta events,
// then fails as a broken connection would.
type cutBody struct {
	io.ReadCloser
	n    int
	seen int
	buf  []byte
}

func (c *cutBody) Read(b []byte) (int, error) {
	if c.seen >= c.n {
		return 0, errDropped
	}
	k, err := c.ReadCloser.Read(b)
	c.buf = append(c.buf, b[:k]...)
	c.seen = bytes.Count(c.buf, []byte("event: delta\n"))
	return k, err
}

// A reply whose connection drops mid-stream resumes from the last offset
// through the resume endpoint and ends whole, each word once.
func TestConsoleResumesADroppedStream(t *testing.T) {
	st, key := newStack(t, testutil.StackOptions{LLM: fake.New(fake.Config{Latency: 50 * time.Millisecond, ChunkDelay: 60 * time.Millisecond, ReplyWords: 40})})
	api := newREST(t, st.URL, key)
	sp := api.space(client.SpaceInput{Label: "Resume"})
	root := api.tree(sp.ID)

	target, _ := url.Parse(st.URL)
	dp := &dropProxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0)
	rp.ModifyResponse = func(res *http.Response) error {
		r := res.Request
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/turn") && strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
			dp.mu.Lock()
			first := !dp.dropped
			dp.dropped = true
			dp.mu.Unlock()
			if first {
				res.Body = &cutBody{ReadCloser: res.Body, n: 3}
			}
		}
		return nil
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/stream") && strings.Contains(r.URL.Path, "/turns/") {
			dp.mu.Lock()
			dp.resumes = append(dp.resumes, r.Header.Get("Last-Event-ID"))
			dp.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	p := newPage(t)
	p.open(front.URL, key)
	p.wait("the root selected", nodeExpr("Resume")+`?.getAttribute('aria-current') === 'true'`)
	p.do("send", chromedp.SendKeys(chromedp.ID("input"), "tell me everything"), pressEnter(false))
	p.wait("the reply to finish", `document.querySelector('.msg-assistant[data-done="true"]') || document.querySelector('.msg-assistant.failed')`)
	if code := p.str(`document.querySelector('.msg-assistant.failed')?.dataset.code ?? ''`); code != "" {
		t.Fatalf("the turn failed on the page with %s instead of resuming", code)
	}
	shown := p.str(`document.querySelector('.msg-assistant[data-done="true"] .body').textContent`)
	msgs := api.messages(sp.ID, root.ID)
	if len(msgs) != 2 || msgs[1].Content != shown {
		t.Fatalf("shown %q; stored %+v", shown, msgs)
	}
	dp.mu.Lock()
	resumes := append([]string(nil), dp.resumes...)
	dp.mu.Unlock()
	if len(resumes) == 0 {
		t.Fatal("the page never asked to resume the stream")
	}
	if n, err := strconv.Atoi(resumes[0]); err != nil || n <= 0 {
		t.Fatalf("resumed with Last-Event-ID %q, want the offset reached", resumes[0])
	}
}
