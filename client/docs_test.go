package client_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// goBlock finds the Go code blocks of a Markdown file.
var goBlock = regexp.MustCompile("(?s)```go\n(.*?)```")

// normalize drops indentation and blank lines, so that a block indented in
// a function body and the same block in the docs compare equal.
func normalize(s string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if l := strings.TrimSpace(line); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDocsBlocksAreExamples: every Go block of docs/client.md and of the
// README is part of an Example function of this package, so every code
// example in the docs is compiled and run by go test.
func TestDocsBlocksAreExamples(t *testing.T) {
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	examples := normalize(string(src))
	n := 0
	for _, doc := range []string{"../docs/client.md", "../README.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range goBlock.FindAllStringSubmatch(string(b), -1) {
			if doc == "../README.md" && !strings.Contains(m[1], "client.") {
				continue // not the client's: the embedding blocks are checked by package stello
			}
			n++
			if !strings.Contains(examples, normalize(m[1])) {
				t.Errorf("%s: this Go block is not in client/example_test.go:\n%s", doc, m[1])
			}
		}
	}
	if n < 5 {
		t.Errorf("found %d Go blocks in the docs; the client guide has more", n)
	}
}
