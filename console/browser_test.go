package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
)

// browserNames are the executables tried, in order, when STELLO_CHROMIUM
// does not name one.
var browserNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"}

// findBrowser returns the path of a Chromium, or skips the test saying what
// to install.
func findBrowser(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("STELLO_CHROMIUM"); p != "" {
		return p
	}
	for _, n := range browserNames {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Skip("no Chromium found for the browser tests of the web console: install it (Debian/Ubuntu: apt-get install chromium) or set STELLO_CHROMIUM to its path")
	return ""
}

// page is one headless Chromium tab on a console.
type page struct {
	t   *testing.T
	ctx context.Context

	mu         sync.Mutex
	exceptions []string
}

// newPage starts a fresh headless Chromium (its own profile, no network
// but the loopback) and opens a tab.
func newPage(t *testing.T) *page {
	t.Helper()
	exe := findBrowser(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("font-render-hinting", "none"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	p := &page{t: t, ctx: ctx}
	// Start the browser (the first Run must not have a deadline: it would
	// bound the browser's life).
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatalf("start Chromium (%s): %v", exe, err)
	}
	// Collect uncaught page exceptions: any is a failure.
	exceptions := chromedp.Events(ctx, runtime.ExceptionThrown)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				p.mu.Lock()
				p.exceptions = append(p.exceptions, fmt.Sprintf("collector panicked: %v", r))
				p.mu.Unlock()
			}
		}()
		for ev, err := range exceptions {
			if err != nil {
				return // the tab is gone
			}
			p.mu.Lock()
			p.exceptions = append(p.exceptions, (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error())
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		p.mu.Lock()
		ex := append([]string(nil), p.exceptions...)
		p.mu.Unlock()
		for _, e := range ex {
			t.Errorf("uncaught exception in the page: %s", e)
		}
		cancelTab()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("the exception collector did not stop")
		}
	})
	return p
}

// do runs actions with a deadline.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression and decodes its value into out.
func (p *page) eval(expr string, out any) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	if out != nil {
		if err := json.Unmarshal(v, out); err != nil {
			p.t.Fatalf("evaluate %s: decode %s: %v", expr, v, err)
		}
	}
}

// str evaluates an expression that yields a string.
func (p *page) str(expr string) string {
	p.t.Helper()
	var s string
	p.eval(expr, &s)
	return s
}

// wait polls a JavaScript expression until it is truthy. A page that
// navigates (a reload) destroys the context the poll runs in: polling
// then starts again in the new one.
func (p *page) wait(what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	for {
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(25*time.Millisecond)))
		if err == nil {
			return
		}
		if ctx.Err() == nil && strings.Contains(err.Error(), "Cannot find context with specified id") {
			time.Sleep(25 * time.Millisecond)
			continue
		}
		p.t.Fatalf("waiting for %s (%s): %v\nvisible text: %s", what, expr, err, p.visibleText())
	}
}

// visibleText is the page's text, for failure messages.
func (p *page) visibleText() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	if len(s) > 2000 {
		s = s[:2000] + "…"
	}
	return s
}

// press presses one key the way a keyboard does: one keyDown carrying its
// text, so that a page that cancels the keydown gets no character (the
// separate char event of chromedp.KeyEvent would type one regardless).
func press(key, code, text string, vk int64, shift bool) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var mods int64
		if shift {
			mods = 8 // Shift
		}
		down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: key, Code: code, Text: text, UnmodifiedText: text,
			WindowsVirtualKeyCode: vk, NativeVirtualKeyCode: vk, Modifiers: mods}
		if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, down); err != nil {
			return err
		}
		up := down
		up.Type, up.Text, up.UnmodifiedText = input.DispatchKeyEventTypeKeyUp, "", ""
		_, err := cdp.Call(ctx, t, input.DispatchKeyEvent, up)
		return err
	})
}

// pressEnter presses Enter (with Shift when shift).
func pressEnter(shift bool) chromedp.Action[chromedp.Void] {
	return press("Enter", "Enter", "\r", 13, shift)
}

// js quotes a Go string as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// nodeExpr is a JavaScript expression for the tree button of the session
// labelled label (undefined when there is none).
func nodeExpr(label string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#tree button.node')].find(b => b.querySelector('.node-label').textContent === %s)`, js(label))
}

// open loads the console and connects with key.
func (p *page) open(url, key string) {
	p.t.Helper()
	p.do("load the console", chromedp.Navigate(url+"/"))
	p.wait("the key dialog", `document.getElementById('key-dialog').open`)
	p.do("enter the key",
		chromedp.SendKeys(chromedp.ID("key-input"), key),
		pressEnter(false),
	)
	p.wait("the console to be ready", `document.getElementById('app').dataset.ready === 'true' && !document.getElementById('key-dialog').open`)
}

// rest is the Go client, for assertions beside the browser. Its helpers
// fail the test on any error (the client checks each answer's status).
type rest struct {
	t *testing.T
	c *client.Client
}

func newREST(t *testing.T, base, key string) rest { return rest{t: t, c: client.New(base, key)} }

// ctx bounds one call to 30 seconds.
func (r rest) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	r.t.Cleanup(cancel)
	return ctx
}

// must fails the test when a call failed.
func (r rest) must(what string, err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
}

// space creates a space.
func (r rest) space(in client.SpaceInput) *client.Space {
	r.t.Helper()
	sp, err := r.c.CreateSpace(r.ctx(), in)
	r.must("create space", err)
	return sp
}

// spaces lists the caller's spaces.
func (r rest) spaces() []client.Space {
	r.t.Helper()
	out, err := r.c.ListSpaces(r.ctx())
	r.must("list spaces", err)
	return out
}

func (r rest) tree(spaceID string) *client.TreeNode {
	r.t.Helper()
	out, err := r.c.Tree(r.ctx(), spaceID)
	r.must("tree", err)
	return out
}

func (r rest) messages(spaceID, sessionID string) []client.Message {
	r.t.Helper()
	out, err := r.c.Messages(r.ctx(), spaceID, sessionID, 0, 0)
	r.must("messages", err)
	return out
}

// slot reads a session's data slot.
func (r rest) slot(spaceID, sessionID string, slot client.Slot) *string {
	r.t.Helper()
	out, err := r.c.Slot(r.ctx(), spaceID, sessionID, slot)
	r.must(string(slot), err)
	return out
}

// newStack starts a server over a fresh database with a fake model that
// streams slowly enough for the page to show partial replies.
func newStack(t *testing.T, o testutil.StackOptions) (*testutil.Stack, string) {
	t.Helper()
	st := testutil.NewStack(t, o)
	_, key := st.User(t, "console-"+strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	return st, key
}

// layoutProbe records, at every change of the message log, the boxes of
// the regions that must not move while a reply streams, and the texts of
// the streaming reply.
const layoutProbe = `(() => {
  const boxes = () => JSON.stringify(['.topbar', '.sidebar', '.session-head', '#composer', '.inspector', '#send', '#cancel']
    .map(s => document.querySelector(s)).map(e => e && !e.hidden ? [e.getBoundingClientRect().x, e.getBoundingClientRect().y, e.getBoundingClientRect().width, e.getBoundingClientRect().height] : null));
  window.__boxes = new Set();
  window.__seen = [];
  window.__slot = new Set();
  const slot = () => { const b = document.querySelector('#send:not([hidden]), #cancel:not([hidden])'); if (b) { const r = b.getBoundingClientRect(); window.__slot.add(JSON.stringify([r.x, r.y, r.width, r.height])); } };
  const ob = new MutationObserver(() => {
    const el = document.querySelector('.msg.streaming .body');
    if (el) window.__seen.push(el.textContent);
    const b = JSON.parse(boxes()); window.__boxes.add(JSON.stringify(b.slice(0, 5)));
    slot();
  });
  ob.observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
  window.__boxes.add(JSON.stringify(JSON.parse(boxes()).slice(0, 5)));
  slot();
  return true;
})()`
