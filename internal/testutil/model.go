package testutil

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stellohq/stello/llm/openai"
)

// ModelName is the model ModelClient's client asks for.
const ModelName = "m"

// ModelClient serves h (an OpenAI-compatible mock model, such as
// mockllm's) over HTTP until cleanup and returns the real OpenAI client
// pointed at it, without retries: a test's model calls take the path a
// deployment's do.
func ModelClient(t testing.TB, h http.Handler) *openai.Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := openai.New(openai.Config{BaseURL: srv.URL + "/v1", Model: ModelName, MaxRetries: 0})
	if err != nil {
		t.Fatalf("model client: %v", err)
	}
	return c
}
