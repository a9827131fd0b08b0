package console

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Every embedded file is served by a fresh handler: the lazy load reads
// them all on the first request (a file it could not read would turn
// every answer into a 500).
func TestEveryEmbeddedFileIsServed(t *testing.T) {
	h := New(nil)
	n := 0
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		path := Prefix + strings.TrimPrefix(p, "static/")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK || rec.Body.Len() == 0 {
			t.Errorf("%s: %d, %d bytes", path, rec.Code, rec.Body.Len())
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walking the embedded files: %v (%d files)", err, n)
	}
	if h.loadErr != nil {
		t.Fatal(h.loadErr)
	}
}
