package console_test

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/llm/fake"
)

// screenshotPath is where STELLO_WRITE_SCREENSHOT=1 writes the README's
// picture of the console.
const screenshotPath = "../docs/console.png"

// The console over a space with some history fits the window without
// overflowing, and its screenshot is the one in the README (written when
// STELLO_WRITE_SCREENSHOT=1).
func TestConsoleScreenshot(t *testing.T) {
	st, key := newStack(t, testutil.StackOptions{LLM: fake.New(fake.Config{ReplyWords: 36})})
	api := newREST(t, st.URL, key)
	sp := api.space(client.SpaceInput{Label: "Research assistant",
		SystemPrompt: client.String("You are a careful research assistant. Cite what you rely on.")})
	root := api.tree(sp.ID)
	turn := func(id, input string) {
		_, err := api.c.Turn(api.ctx(), sp.ID, id, input)
		api.must("turn", err)
	}
	fork := func(from, label, scope, context string) string {
		o := client.ForkOptions{Label: label, Context: context}
		if scope != "" {
			o.Scope = client.String(scope)
		}
		c, err := api.c.Fork(api.ctx(), sp.ID, from, o)
		api.must("fork", err)
		return c.ID
	}
	turn(root.ID, "Plan a survey of retrieval-augmented generation.")
	lit := fork(root.ID, "Literature review", "papers since 2020", "inherit")
	exp := fork(root.ID, "Experiment design", "", "none")
	old := fork(root.ID, "First outline", "", "none")
	methods := fork(lit, "Methods comparison", "dense vs sparse retrieval", "none")
	turn(lit, "Which papers should come first?")
	turn(lit, "Summarise the dense retrieval line of work.")
	turn(exp, "Propose three ablations.")
	turn(methods, "Compare recall at 10.")
	_, err := api.c.Archive(api.ctx(), sp.ID, old)
	api.must("archive", err)
	for _, id := range []string{lit, exp} {
		_, err := api.c.Consolidate(api.ctx(), sp.ID, id)
		api.must("consolidate", err)
	}
	_, err = api.c.Integrate(api.ctx(), sp.ID)
	api.must("integrate", err)

	p := newPage(t)
	p.do("size the window", chromedp.EmulateViewport(1440, 900))
	p.open(st.URL, key)
	p.wait("the tree", `document.querySelectorAll('#tree button.node').length === 5`)
	p.do("open the literature review", chromedp.Click(chromedp.JSPath(nodeExpr("Literature review"))))
	p.wait("its messages", `document.getElementById('messages').dataset.session === `+js(lit)+` && document.querySelectorAll('#messages .msg').length === 6`)
	p.do("show its memory", chromedp.Click(chromedp.ID("tab-memory")))
	p.wait("memory, insight and synthesis", `['memory', 'insight', 'synthesis'].every(id => !document.getElementById(id).classList.contains('none'))`)
	p.do("type a draft", chromedp.SendKeys(chromedp.ID("input"), "Now group them by year"))
	p.eval(`document.activeElement.blur(); document.querySelectorAll('.toast').forEach(t => t.remove()); true`, nil)

	var fits bool
	p.eval(`document.documentElement.scrollWidth <= window.innerWidth && document.documentElement.scrollHeight <= window.innerHeight`, &fits)
	if !fits {
		t.Fatal("the console overflows a 1440×900 window")
	}
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1440 || b.Dy() != 900 {
		t.Fatalf("screenshot is %dx%d, want 1440x900", b.Dx(), b.Dy())
	}
	if os.Getenv("STELLO_WRITE_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.FromSlash(screenshotPath), shot, 0o644); err != nil {
			t.Fatalf("write %s: %v", screenshotPath, err)
		}
		t.Logf("wrote %s", screenshotPath)
	}
}
