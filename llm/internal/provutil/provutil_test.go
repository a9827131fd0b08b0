package provutil

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/stellohq/stello/llm"
)

func TestCleanMessage(t *testing.T) {
	const key = "my-very-secret-key-123"
	tests := []struct {
		name    string
		in      string
		secrets []string
		want    string
	}{
		{"configured key", "bad key " + key + " given", []string{key}, "bad key [redacted] given"},
		{"sk style", "Incorrect API key provided: sk-proj-abc***xyz.", nil, "Incorrect API key provided: [redacted]"},
		{"bearer", "header Authorization: Bearer abc.def-123 rejected", nil, "header Authorization: Bearer [redacted] rejected"},
		{"api_key param", `{"api_key": "zzz"}`, nil, `{"api_key": "[redacted]"}`},
		{"whitespace collapsed", "a\n\n  b\tc ", nil, "a b c"},
		{"empty secret ignored", "text", []string{""}, "text"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, CleanMessage(tt.in, tt.secrets...))
		})
	}
	long := CleanMessage(strings.Repeat("é", 1000))
	assert.Equal(t, maxMessageLen+1, len([]rune(long)))
}

func TestContextError(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()

	err := ContextError(canceled, "p", errors.New("x"))
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, llm.ErrTimeout)

	err = ContextError(expired, "p", errors.New("x"))
	assert.ErrorIs(t, err, llm.ErrTimeout)

	err = ContextError(context.Background(), "p", context.DeadlineExceeded)
	assert.ErrorIs(t, err, llm.ErrTimeout)

	assert.NoError(t, ContextError(context.Background(), "p", errors.New("other")))
}

func TestBodyMessage(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"error":{"message":"m1","type":"t"}}`, "m1"},
		{`{"error":"plain"}`, "plain"},
		{`{"detail":"not found"}`, "not found"},
		{`{"message":"msg"}`, "msg"},
		{`{"other":1}`, `{"other":1}`},
		{`<h1>Bad</h1>`, " Bad "},
		{"  ", ""},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, BodyMessage([]byte(tt.in)), tt.in)
	}
}

func TestToolInputAndArguments(t *testing.T) {
	assert.JSONEq(t, `{}`, string(ToolInput("")))
	assert.JSONEq(t, `{"a":1}`, string(ToolInput(` {"a":1} `)))
	assert.JSONEq(t, `"{\"a\":"`, string(ToolInput(`{"a":`)))
	assert.Equal(t, "{}", Arguments(nil))
	assert.Equal(t, "{}", Arguments(json.RawMessage(`{"a":`)))
	assert.Equal(t, `{"a":1}`, Arguments(json.RawMessage(`{"a":1}`)))
}

func TestSchemaObject(t *testing.T) {
	m, err := SchemaObject(nil)
	require.NoError(t, err)
	assert.JSONEq(t, `"object"`, string(m["type"]))

	m, err = SchemaObject(json.RawMessage(`{"properties":{"n":{"type":"integer","maximum":9007199254740993}}}`))
	require.NoError(t, err)
	assert.JSONEq(t, `"object"`, string(m["type"]))
	assert.Contains(t, string(m["properties"]), "9007199254740993", "numbers stay exact")

	_, err = SchemaObject(json.RawMessage(`[1]`))
	assert.Error(t, err)
}

func TestDeltaSink(t *testing.T) {
	var got []llm.Delta
	s := NewDeltaSink(func(d llm.Delta) error { got = append(got, d); return nil })
	require.NoError(t, s.Emit(llm.Delta{Text: "a"}))
	assert.Len(t, got, 1)

	stop := errors.New("stop")
	s = NewDeltaSink(func(llm.Delta) error { return stop })
	assert.ErrorIs(t, s.Emit(llm.Delta{}), stop)
	assert.ErrorIs(t, s.Emit(llm.Delta{}), stop)
	assert.ErrorIs(t, s.Err(), stop)

	assert.NoError(t, NewDeltaSink(nil).Emit(llm.Delta{Text: "x"}))
}

func TestCleanMessageKeepsOrdinaryWords(t *testing.T) {
	assert.Equal(t, "no disk-space left on task-runner", CleanMessage("no disk-space left on task-runner"))
}

// countingConn counts the writes made on a connection.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// A model call through the SDK goes out in one write, headers and body
// together, up to WriteBufferBytes; the SDK's own body wrapper alone would
// make it two.
func TestHTTPClientSendsARequestInOneWrite(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	call := func(t *testing.T, rt http.RoundTripper, tr *http.Transport, bodyBytes int) int64 {
		var writes atomic.Int64
		var d net.Dialer
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{c, &writes}, nil
		}
		sdk := openai.NewClient(option.WithBaseURL(srv.URL), option.WithAPIKey("k"), option.WithMaxRetries(0),
			option.WithHTTPClient(&http.Client{Transport: rt}))
		body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", bodyBytes) + `"}]}`)
		var raw *http.Response
		require.NoError(t, sdk.Post(context.Background(), "chat/completions", nil, &raw, option.WithRequestBody("application/json", body)))
		_, _ = io.Copy(io.Discard, raw.Body)
		raw.Body.Close()
		tr.CloseIdleConnections()
		return writes.Load()
	}
	c := HTTPClient()
	tr := c.Transport.(inMemoryBody).next.(*http.Transport)
	assert.EqualValues(t, 1, call(t, c.Transport, tr, 60<<10), "headers and a 60 KiB body in one write")
	assert.EqualValues(t, 1, call(t, c.Transport, tr, 10), "a small body too")
	assert.EqualValues(t, 2, call(t, tr, tr, 10), "without inMemoryBody the SDK's body wrapper costs a write")
}
