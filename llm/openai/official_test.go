package openai_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/llm/openai"
)

var jsonUnmarshal = json.Unmarshal

func modelOf(official bool) string {
	if official {
		return "gpt-official"
	}
	return "gpt-test"
}

// officialClient is a client for https://api.openai.com/v1 whose
// connections go to the plain-HTTP test server at target.
func officialClient(t *testing.T, target string) *openai.Client {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, u.Host)
	}}
	hc := &http.Client{Transport: rewriteScheme{tr}}
	c, err := openai.New(openai.Config{BaseURL: "https://api.openai.com/v1", Model: "gpt-official", MaxTokens: 128, MaxRetries: 0, HTTPClient: hc})
	require.NoError(t, err)
	return c
}

// rewriteScheme sends https requests as plain http.
type rewriteScheme struct{ rt http.RoundTripper }

func (r rewriteScheme) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.URL.Scheme = "http"
	return r.rt.RoundTrip(req)
}
