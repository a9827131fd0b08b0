package stello_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// exampleSources are compiled by `go test` / `go vet`; the marked parts of
// their examples are what the docs show.
var exampleSources = []string{"example_test.go", "examples/embed/main.go"}

var (
	markRe  = regexp.MustCompile(`(?s)// --- ([^\n]*?) ---\n(.*?)\n\s*// --- end ---`)
	goDocRe = regexp.MustCompile("(?s)```go\n(.*?)```")
)

// dedent removes the indentation common to every non-empty line.
func dedent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	prefix := ""
	first := true
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		ind := l[:len(l)-len(strings.TrimLeft(l, "\t "))]
		if first || strings.HasPrefix(prefix, ind) {
			prefix = ind
		} else {
			for !strings.HasPrefix(ind, prefix) {
				prefix = prefix[:len(prefix)-1]
			}
		}
		first = false
	}
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, prefix)
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// snippets returns the marked parts of the example sources by name, and
// each whole source, dedented.
func snippets(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range exampleSources {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		out[f] = strings.TrimSpace(string(b))
		for _, m := range markRe.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = dedent(m[2])
		}
	}
	return out
}

// TestDocsExamplesAreCompiled fails when a Go block of the embedding docs
// is not, word for word, a marked part of an example that the Go tool
// compiles (or a whole example program).
func TestDocsExamplesAreCompiled(t *testing.T) {
	known := snippets(t)
	for _, doc := range []string{"README.md", "docs/embedding.md"} {
		b, err := os.ReadFile(doc)
		require.NoError(t, err)
		blocks := goDocRe.FindAllStringSubmatch(string(b), -1)
		require.NotEmpty(t, blocks, "%s has Go examples", doc)
		for _, m := range blocks {
			block := dedent(m[1])
			if doc == "README.md" && strings.Contains(block, "client.") {
				continue // the Go client's blocks: checked by package client
			}
			found := false
			for _, s := range known {
				if s == block {
					found = true
					break
				}
			}
			assert.True(t, found, "%s: this Go block is not a marked example of %v:\n%s", doc, exampleSources, block)
		}
	}
}

// TestReadmeEmbeddingSection checks the README shows the ten lines.
func TestReadmeEmbeddingSection(t *testing.T) {
	b, err := os.ReadFile("README.md")
	require.NoError(t, err)
	readme := string(b)
	i := strings.Index(readme, "## Embedding in ten lines")
	require.GreaterOrEqual(t, i, 0, "README has the section")
	m := goDocRe.FindStringSubmatch(readme[i:])
	require.NotNil(t, m)
	assert.Equal(t, snippets(t)["README: embedding in ten lines"], dedent(m[1]))
}
