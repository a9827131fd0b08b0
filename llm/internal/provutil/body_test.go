package provutil

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func (b *Body) generation() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gen
}

// A body is freed once its call returned and every attempt that took a
// connection reported its write, and not before; a late report of an
// earlier call does not count for the next.
func TestBodyFreedAfterTheCallAndItsWrites(t *testing.T) {
	b := NewBody()
	tr := httptrace.ContextClientTrace(b.Trace(context.Background()))
	g := b.generation()
	tr.GotConn(httptrace.GotConnInfo{})
	tr.GotConn(httptrace.GotConnInfo{}) // a retry on a new connection
	tr.WroteRequest(httptrace.WroteRequestInfo{})
	b.Done()
	assert.Equal(t, g, b.generation(), "a write is still under way")
	tr.WroteRequest(httptrace.WroteRequestInfo{})
	assert.Equal(t, g+1, b.generation(), "freed when the last write ended")

	// The same Body, reused: the first call's trace no longer counts.
	next := httptrace.ContextClientTrace(b.Trace(context.Background()))
	next.GotConn(httptrace.GotConnInfo{})
	tr.WroteRequest(httptrace.WroteRequestInfo{})
	b.Done()
	assert.Equal(t, g+1, b.generation(), "a stray report of the earlier call is ignored")
	next.WroteRequest(httptrace.WroteRequestInfo{})
	assert.Equal(t, g+2, b.generation())

	c := NewBody()
	gc := c.generation()
	c.Done()
	assert.Equal(t, gc+1, c.generation(), "no attempt took a connection: freed at once")
}

// Calls through the SDK with pooled bodies deliver every body intact, also
// when a server answers before reading a large body (its write goes on
// after the call returned): the race detector would see a buffer reused
// under a write.
func TestPooledBodiesThroughTheSDK(t *testing.T) {
	var mu sync.Mutex
	got := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Early") != "" {
			w.WriteHeader(http.StatusBadRequest) // without reading the body
			_, _ = w.Write([]byte(`{"error":{"message":"early"}}`))
			return
		}
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got[r.Header.Get("X-Id")] = string(b)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	sdk := openai.NewClient(option.WithBaseURL(srv.URL), option.WithAPIKey("k"), option.WithMaxRetries(0),
		option.WithHTTPClient(HTTPClient()))
	// Each call goes through Send, as the providers' calls do.
	call := func(id string, size int, early bool) error {
		build := func(dst []byte) ([]byte, error) {
			dst = append(dst, `{"id":"`...)
			dst = append(dst, id...)
			dst = append(dst, `","pad":"`...)
			dst = append(dst, bytes.Repeat([]byte(id[:1]), size)...)
			return append(dst, `"}`...), nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return Send(ctx, build, func(ctx context.Context, body []byte) error {
			opts := []option.RequestOption{option.WithRequestBody("application/json", body), option.WithHeader("X-Id", id)}
			if early {
				opts = append(opts, option.WithHeader("X-Early", "1"))
			}
			var raw *http.Response
			if err := sdk.Post(ctx, "chat/completions", nil, &raw, opts...); err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, raw.Body)
			return raw.Body.Close()
		})
	}
	// Large bodies are pooled here, so that the early answer's buffer is
	// the one the next calls are likely to get.
	maxPooledBody = 64 << 20
	t.Cleanup(func() { maxPooledBody = 1 << 20 })
	for range 4 {
		require.Error(t, call("early", 8<<20, true), "the server refused it before reading it")
	}
	var wg sync.WaitGroup
	ids := []string{"a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8"}
	for _, id := range ids {
		wg.Go(func() {
			for round := range 20 {
				assert.NoError(t, call(id+strings.Repeat("x", round), 1000+round*100, false))
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		for round := range 20 {
			key := id + strings.Repeat("x", round)
			want := `{"id":"` + key + `","pad":"` + strings.Repeat(id[:1], 1000+round*100) + `"}`
			assert.True(t, got[key] == want, "body of %s intact", key)
		}
	}
}
