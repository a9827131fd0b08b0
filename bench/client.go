package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/stellohq/stello/client"
)

// newClient returns a client of the server at base for about conns
// concurrent callers. Its transport keeps twice that many idle
// connections (net/http keeps 2 per host by default: the other callers
// would open and close a connection per request), every request and
// stream is bounded by 5 minutes, and WebSockets use small buffers (the
// connections scenario opens 10,000 of them). Streams never resume by
// themselves: a dropped stream is an error in every scenario, and the
// resume scenario drops and resumes its streams itself.
func newClient(base, key string, conns int) *client.Client {
	tr := &http.Transport{MaxIdleConns: conns * 2, MaxIdleConnsPerHost: conns * 2, IdleConnTimeout: 90 * time.Second}
	d := &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}
	return client.New(base, key, client.WithHTTPClient(&http.Client{Transport: tr, Timeout: 5 * time.Minute}),
		client.WithResume(0, 0), client.WithDialer(d))
}

// fixed is a pick function that always gives c.
func fixed(c *client.Client) func() *client.Client { return func() *client.Client { return c } }

// pool spreads requests over the processes of one deployment, round-robin
// per request: each call of next gives the next process's client, whoever
// calls it, the way a load balancer without affinity would.
type pool struct {
	clients []*client.Client
	n       atomic.Uint64
}

// newPool makes one client per base URL, each sized for conns concurrent
// callers (any of them may get every caller at once).
func newPool(urls []string, key string, conns int) *pool {
	p := &pool{}
	for _, u := range urls {
		p.clients = append(p.clients, newClient(u, key, conns))
	}
	return p
}

// next is the client of the next process in turn.
func (p *pool) next() *client.Client {
	return p.clients[int((p.n.Add(1)-1)%uint64(len(p.clients)))]
}

// forwardedSent sums the requests the processes forwarded to their spaces'
// owners (stello_forwarded_requests_total{outcome="sent"}); a process that
// never forwarded has no such sample and counts 0.
func (p *pool) forwardedSent(ctx context.Context) (float64, error) {
	var sum float64
	for _, c := range p.clients {
		v, err := forwardedSent(ctx, c)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// forwardedSent is one process's stello_forwarded_requests_total{outcome="sent"}.
func forwardedSent(ctx context.Context, c *client.Client) (float64, error) {
	v, err := metric(ctx, c, `stello_forwarded_requests_total{outcome="sent"}`)
	if errors.Is(err, errNoMetric) {
		return 0, nil
	}
	return v, err
}

// createSpace makes a space and returns its id and root session id.
func createSpace(ctx context.Context, c *client.Client, label string) (string, string, error) {
	sp, err := c.CreateSpace(ctx, client.SpaceInput{Label: label, SystemPrompt: client.String("You are a load-test assistant.")})
	if err != nil {
		return "", "", err
	}
	root, err := c.Tree(ctx, sp.ID)
	if err != nil {
		return "", "", err
	}
	return sp.ID, root.ID, nil
}

// turn runs one REST turn.
func turn(ctx context.Context, c *client.Client, s benchSession, input string) error {
	_, err := c.Turn(ctx, s.space, s.session, input)
	return err
}

// sseTurn runs one turn as an SSE stream and reads it to its end event.
func sseTurn(ctx context.Context, c *client.Client, s benchSession, input string) error {
	st, err := c.TurnStream(ctx, s.space, s.session, input)
	if err != nil {
		return err
	}
	defer st.Close()
	for ev, err := range st.Events() {
		if err != nil {
			return err
		}
		if ev.Type == client.EventEnd {
			return nil
		}
	}
	return errors.New("sse stream ended without an end event")
}

// dialEnter opens a WebSocket to the session's space and enters the
// session.
func dialEnter(ctx context.Context, c *client.Client, s benchSession) (*client.Conn, error) {
	conn, err := c.Dial(ctx, s.space)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	ectx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := conn.Enter(ectx, s.session); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("enter: %w", err)
	}
	return conn, nil
}

// closeAll closes the connections, 64 at a time (each close waits for the
// server's close frame).
func closeAll(cs []*client.Conn) {
	_ = parallel(context.Background(), 64, len(cs), func(i int) error {
		if cs[i] != nil {
			_ = cs[i].Close()
		}
		return nil
	})
}

// metric reads one unlabelled sample from /metrics.
func metric(ctx context.Context, c *client.Client, name string) (float64, error) {
	text, err := c.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%w: %s", errNoMetric, name)
}

// errNoMetric is a sample /metrics does not have.
var errNoMetric = errors.New("metric not found")
