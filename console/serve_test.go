package console_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stellohq/stello/client"
	"github.com/stellohq/stello/internal/testutil"
)

// get sends a raw request: the page and its assets are checked on the
// wire (content types, ETag revalidation, HEAD, the JSON 404).
func get(t *testing.T, method, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// The page and its assets are served without a key; every other unknown
// path keeps the API's JSON 404, and the API still wants its key. The page
// and its assets are checked on the raw wire (headers, revalidation, HEAD),
// the API through the Go client.
func TestConsoleIsServedAtRoot(t *testing.T) {
	st := testutil.NewStack(t, testutil.StackOptions{})

	res, body := get(t, "GET", st.URL+"/", nil)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if !strings.Contains(body, `<script type="module" src="/console/app.js">`) {
		t.Fatalf("GET / is not the console page:\n%s", body)
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("page without a content security policy: %q", csp)
	}
	etag := res.Header.Get("ETag")
	if etag == "" {
		t.Fatal("page without an ETag")
	}
	if res, _ := get(t, "GET", st.URL+"/", map[string]string{"If-None-Match": etag}); res.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidation with the ETag: %d, want 304", res.StatusCode)
	}
	if res, body := get(t, "HEAD", st.URL+"/", nil); res.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD /: %d, body %q", res.StatusCode, body)
	}

	for asset, ctype := range map[string]string{
		"app.js": "text/javascript", "api.js": "text/javascript", "events.js": "text/javascript",
		"tree.js": "text/javascript", "console.css": "text/css",
	} {
		res, body := get(t, "GET", st.URL+"/console/"+asset, nil)
		if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), ctype) || len(body) == 0 {
			t.Errorf("GET /console/%s: %d %q (%d bytes)", asset, res.StatusCode, res.Header.Get("Content-Type"), len(body))
		}
	}

	for _, path := range []string{"/console/missing.js", "/nope", "/console/", "/console/../go.mod"} {
		res, body := get(t, "GET", st.URL+path, nil)
		var e struct{ Code string }
		_ = json.Unmarshal([]byte(body), &e)
		if res.StatusCode != 404 || e.Code != "NOT_FOUND" {
			t.Errorf("GET %s: %d %s, want the JSON 404", path, res.StatusCode, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var apiErr *client.Error
	if _, err := client.New(st.URL, "").ListSpaces(ctx); !errors.As(err, &apiErr) || apiErr.Status != 401 || apiErr.Code != "UNAUTHORIZED" {
		t.Errorf("GET /spaces without a key: %v, want 401 UNAUTHORIZED", err)
	}
	if res, _ := get(t, "POST", st.URL+"/", nil); res.StatusCode != 405 {
		t.Errorf("POST /: %d, want 405", res.StatusCode)
	}
}
