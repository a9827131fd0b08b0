package console_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
)

// slowFake streams its replies word by word, a few tens of milliseconds
// apart, so the page has partial replies to show.
func slowFake() *fake.Client {
	return fake.New(fake.Config{Latency: 80 * time.Millisecond, ChunkDelay: 40 * time.Millisecond, ReplyWords: 24})
}

// A wrong key is refused in the key dialog with its code, and nothing else
// is shown.
func TestConsoleRefusesABadKey(t *testing.T) {
	st, _ := newStack(t, testutil.StackOptions{})
	p := newPage(t)
	p.do("load the console", chromedp.Navigate(st.URL+"/"))
	p.wait("the key dialog", `document.getElementById('key-dialog').open`)
	p.do("enter a wrong key", chromedp.SendKeys(chromedp.ID("key-input"), "sk-not-a-key"), pressEnter(false))
	p.wait("the refusal", `document.getElementById('key-error').textContent.startsWith('UNAUTHORIZED')`)
	var open bool
	p.eval(`document.getElementById('key-dialog').open && document.getElementById('app').dataset.ready !== 'true'`, &open)
	if !open {
		t.Fatal("the console went on with a wrong key")
	}
	var stored *string
	p.eval(`sessionStorage.getItem('stello.apiKey')`, &stored)
	if stored != nil {
		t.Fatalf("a refused key was kept: %q", *stored)
	}
}

// The whole path of a user: key, create a space, a streamed turn, fork and
// see the tree grow, archive, prompts, memory, rename and delete a space.
func TestConsoleWalkthrough(t *testing.T) {
	st, key := newStack(t, testutil.StackOptions{LLM: slowFake()})
	api := newREST(t, st.URL, key)
	p := newPage(t)
	p.open(st.URL, key)

	// The key is kept for the tab, so a reload needs no new key.
	if got := p.str(`sessionStorage.getItem('stello.apiKey')`); got != key {
		t.Fatalf("key kept in sessionStorage = %q", got)
	}

	// Create a space: it is listed, selected, and its root is the tree.
	p.do("create a space", chromedp.SendKeys(chromedp.ID("new-space-label"), "Research"), pressEnter(false))
	p.wait("the new space selected", `document.querySelector('#space-list button[aria-current="true"]')?.textContent === 'Research'`)
	p.wait("its root session in the tree", nodeExpr("Research")+`?.getAttribute('aria-current') === 'true'`)
	sps := api.spaces()
	if len(sps) != 1 || sps[0].Label != "Research" {
		t.Fatalf("spaces after create: %+v", sps)
	}
	spaceID := sps[0].ID
	root := api.tree(spaceID)
	p.wait("the composer focused", `document.activeElement === document.getElementById('input')`)

	// A turn: Enter sends, the reply streams in place, the layout holds.
	var ok bool
	p.eval(layoutProbe, &ok)
	p.do("type a message with a new line", chromedp.SendKeys(chromedp.ID("input"), "hello"),
		pressEnter(true),
		chromedp.SendKeys(chromedp.ID("input"), "world"))
	if v := p.str(`document.getElementById('input').value`); v != "hello\nworld" {
		t.Fatalf("Shift+Enter should add a new line; composer holds %q", v)
	}
	p.do("send with Enter", pressEnter(false))
	p.wait("the reply to finish", `document.querySelector('.msg-assistant[data-done="true"]')`)
	final := p.str(`document.querySelector('.msg-assistant[data-done="true"] .body').textContent`)
	msgs := api.messages(spaceID, root.ID)
	if len(msgs) != 2 || msgs[0].Content != "hello\nworld" || msgs[1].Role != "assistant" || msgs[1].Content != final {
		t.Fatalf("stored messages %+v; the page shows %q", msgs, final)
	}
	if !strings.HasPrefix(final, "Echo: hello") {
		t.Fatalf("reply shown: %q", final)
	}
	var seen []string
	p.eval(`window.__seen`, &seen)
	partial := 0
	for _, s := range seen {
		if s != "" && s != final && strings.HasPrefix(final, s) {
			partial++
		}
		if !strings.HasPrefix(final, s) {
			t.Fatalf("the streaming reply showed %q, which is not a prefix of the reply %q", s, final)
		}
	}
	if partial < 2 {
		t.Fatalf("the reply did not appear piece by piece: snapshots %q", seen)
	}
	var boxes, slot []string
	p.eval(`[...window.__boxes]`, &boxes)
	p.eval(`[...window.__slot]`, &slot)
	if len(boxes) != 1 {
		t.Fatalf("layout regions moved while the reply streamed: %q", boxes)
	}
	if len(slot) != 1 {
		t.Fatalf("Send and Cancel do not share one slot: %q", slot)
	}
	if v := p.str(`document.getElementById('input').value`); v != "" {
		t.Fatalf("composer not cleared after sending: %q", v)
	}
	p.wait("the turn counted in the tree", nodeExpr("Research")+`?.querySelector('.count').textContent === '1'`)

	// Fork with a scope, inheriting the history: the child appears under
	// the root, is entered, and shows the inherited messages.
	p.do("open the fork dialog", chromedp.Click(chromedp.ID("fork-btn")))
	p.wait("the fork dialog", `document.getElementById('fork-dialog').open && document.activeElement.id === 'fork-label'`)
	p.do("fill the fork",
		chromedp.SendKeys(chromedp.ID("fork-label"), "Branch A"),
		chromedp.SendKeys(chromedp.ID("fork-scope"), "only the first chapter"),
		chromedp.Click(chromedp.CSS(`#fork-form input[value="inherit"]`)),
		chromedp.Click(chromedp.CSS(`#fork-form button[type="submit"]`)),
	)
	p.wait("the child in the tree, selected", nodeExpr("Branch A")+`?.getAttribute('aria-current') === 'true'`)
	p.wait("the child nested under the root", `document.querySelector('#tree li[aria-level="2"] .node-label')?.textContent === 'Branch A'`)
	p.wait("the inherited messages", `document.querySelectorAll('#messages .msg').length === 2`)
	p.wait("the scope in the header", `document.getElementById('session-meta').textContent.includes('scope: only the first chapter')`)
	tree := api.tree(spaceID)
	if len(tree.Children) != 1 || tree.Children[0].Label != "Branch A" {
		t.Fatalf("tree after fork: %+v", tree)
	}
	child := tree.Children[0].ID
	if m := api.messages(spaceID, child); len(m) != 2 {
		t.Fatalf("the fork did not inherit the history: %+v", m)
	}

	// A second fork from the root keeps the order of the tree.
	p.do("go back to the root", chromedp.Click(chromedp.JSPath(nodeExpr("Research"))))
	p.wait("the root selected", nodeExpr("Research")+`?.getAttribute('aria-current') === 'true'`)
	p.do("fork with the f key", chromedp.Focus(chromedp.JSPath(nodeExpr("Research"))), press("f", "KeyF", "f", 70, false))
	p.wait("the fork dialog", `document.getElementById('fork-dialog').open`)
	p.do("fill the second fork", chromedp.SendKeys(chromedp.ID("fork-label"), "Branch B"), pressEnter(false))
	p.wait("two children in order", `[...document.querySelectorAll('#tree li[aria-level="2"] > button .node-label')].map(e => e.textContent).join(',') === 'Branch A,Branch B'`)

	// Archive Branch A (after confirming): dimmed in the tree, read-only.
	p.do("select Branch A", chromedp.Click(chromedp.JSPath(nodeExpr("Branch A"))))
	p.wait("Branch A selected", nodeExpr("Branch A")+`?.getAttribute('aria-current') === 'true' && !document.getElementById('archive-btn').disabled`)
	p.do("archive", chromedp.Click(chromedp.ID("archive-btn")))
	p.wait("the confirmation", `document.getElementById('confirm-dialog').open`)
	p.do("confirm", chromedp.Click(chromedp.ID("confirm-ok")))
	p.wait("Branch A archived in the tree", nodeExpr("Branch A")+`?.dataset.status === 'archived'`)
	p.wait("the composer read-only", `document.getElementById('input').disabled && document.getElementById('fork-btn').disabled`)
	var opacity string
	p.eval(`getComputedStyle(`+nodeExpr("Branch A")+`).opacity`, &opacity)
	if opacity == "1" {
		t.Fatal("an archived session is not dimmed")
	}
	if tr := api.tree(spaceID); tr.Children[0].Status != "archived" {
		t.Fatalf("archive not stored: %+v", tr.Children[0])
	}

	// Prompts of the root session: read and edit.
	p.do("select the root", chromedp.Click(chromedp.JSPath(nodeExpr("Research"))))
	p.wait("the root selected", nodeExpr("Research")+`?.getAttribute('aria-current') === 'true' && document.querySelector('form.slot[data-slot="system-prompt"]').dataset.session === `+js(root.ID))
	p.do("edit the system prompt",
		chromedp.SetValue(chromedp.ID("slot-system-prompt"), "You are a careful research assistant."),
		chromedp.Click(chromedp.CSS(`form.slot[data-slot="system-prompt"] button`)),
	)
	p.wait("the prompt saved", `document.querySelector('form.slot[data-slot="system-prompt"] .slot-state').textContent === 'Saved'`)
	if sp := api.slot(spaceID, root.ID, client.SlotSystemPrompt); sp == nil || *sp != "You are a careful research assistant." {
		t.Fatalf("system prompt stored: %v", str(sp))
	}
	p.do("edit the consolidate prompt",
		chromedp.SetValue(chromedp.ID("slot-consolidate-prompt"), "Summarise in three bullets."),
		chromedp.Click(chromedp.CSS(`form.slot[data-slot="consolidate-prompt"] button`)),
	)
	p.wait("the consolidate prompt saved", `document.querySelector('form.slot[data-slot="consolidate-prompt"] .slot-state').textContent === 'Saved'`)
	if sp := api.slot(spaceID, root.ID, client.SlotConsolidatePrompt); sp == nil || *sp != "Summarise in three bullets." {
		t.Fatalf("consolidate prompt stored: %v", str(sp))
	}

	// Memory: consolidate Branch B, integrate the space; the child's memory,
	// its insight and the root's synthesis are shown.
	p.do("select Branch B", chromedp.Click(chromedp.JSPath(nodeExpr("Branch B"))))
	p.wait("Branch B selected", nodeExpr("Branch B")+`?.getAttribute('aria-current') === 'true'`)
	branchB := api.tree(spaceID).Children[1].ID
	p.do("send a turn on Branch B", chromedp.SendKeys(chromedp.ID("input"), "the second chapter"), pressEnter(false))
	p.wait("its reply", `document.querySelector('.msg-assistant[data-done="true"] .body')?.textContent.startsWith('Echo: the second chapter')`)
	p.do("open the memory tab", chromedp.Click(chromedp.ID("tab-memory")))
	p.wait("no memory yet", `document.getElementById('memory').classList.contains('none') && document.getElementById('synthesis').classList.contains('none')`)
	p.do("consolidate", chromedp.Click(chromedp.ID("consolidate-btn")))
	p.wait("the memory shown", `!document.getElementById('memory').classList.contains('none')`)
	mem := api.slot(spaceID, branchB, client.SlotMemory)
	if shown := p.str(`document.getElementById('memory').textContent`); mem == nil || shown != *mem {
		t.Fatalf("memory shown %q, stored %s", shown, str(mem))
	}
	p.do("integrate", chromedp.Click(chromedp.ID("integrate-btn")))
	p.wait("the synthesis shown", `document.getElementById('synthesis').textContent === 'Fake synthesis across 1 session.'`)
	p.wait("the insight shown", `document.getElementById('insight').textContent === 'Insight 1 of 1 for session ' + `+js(branchB)+` + '.'`)

	// Rename the space.
	p.do("open the space tab", chromedp.Click(chromedp.ID("tab-space")))
	p.do("rename", chromedp.SetValue(chromedp.ID("space-label"), "Research notes"), chromedp.Click(chromedp.CSS(`#space-form button[type="submit"]`)))
	p.wait("the new name in the list", `document.querySelector('#space-list button[aria-current="true"]')?.textContent === 'Research notes'`)
	if sps := api.spaces(); sps[0].Label != "Research notes" {
		t.Fatalf("rename not stored: %+v", sps)
	}

	// Delete a second space after confirming.
	p.do("create a scratch space", chromedp.SendKeys(chromedp.ID("new-space-label"), "Scratch"), pressEnter(false))
	p.wait("Scratch selected", `document.querySelector('#space-list button[aria-current="true"]')?.textContent === 'Scratch'`)
	p.do("delete it", chromedp.Click(chromedp.ID("tab-space")), chromedp.Click(chromedp.ID("delete-space")))
	p.wait("the confirmation", `document.getElementById('confirm-dialog').open`)
	p.do("confirm", chromedp.Click(chromedp.ID("confirm-ok")))
	p.wait("Scratch gone", `![...document.querySelectorAll('#space-list button')].some(b => b.textContent === 'Scratch')`)
	if sps := api.spaces(); len(sps) != 1 || sps[0].ID != spaceID {
		t.Fatalf("spaces after delete: %+v", sps)
	}

	// A reload keeps the key and the place.
	p.do("reload", chromedp.Reload())
	p.wait("back in the space", `document.getElementById('app').dataset.ready === 'true' && document.querySelector('#space-list button[aria-current="true"]')?.textContent === 'Research notes'`)
}

// An error answered by the API is shown with its code.
func TestConsoleShowsErrorCodes(t *testing.T) {
	st, key := newStack(t, testutil.StackOptions{})
	api := newREST(t, st.URL, key)
	sp := api.space(client.SpaceInput{Label: "Errors"})
	p := newPage(t)
	p.open(st.URL, key)
	p.wait("the root selected", nodeExpr("Errors")+`?.getAttribute('aria-current') === 'true'`)
	// A fork label over the limit of 200 characters is refused by the server.
	p.do("open the fork dialog", chromedp.Click(chromedp.ID("fork-btn")))
	p.eval(`document.getElementById('fork-label').removeAttribute('maxlength'); true`, nil)
	p.do("fork with a label too long", chromedp.SetValue(chromedp.ID("fork-label"), strings.Repeat("x", 201)), chromedp.Click(chromedp.CSS(`#fork-form button[type="submit"]`)))
	p.wait("the error with its code", `document.getElementById('fork-error').textContent.startsWith('BAD_REQUEST: ')`)
	p.do("close the dialog", press("Escape", "Escape", "", 27, false))

	// The space is deleted behind the page's back: the next action says so.
	api.must("delete", api.c.DeleteSpace(api.ctx(), sp.ID))
	p.wait("the deleted space gone from the page", `!document.querySelector('#space-list button[aria-current="true"]') && document.getElementById('toasts').textContent.includes('NOT_FOUND')`)
}

// str prints an optional string.
func str(s *string) string {
	if s == nil {
		return "(null)"
	}
	return fmt.Sprintf("%q", *s)
}
