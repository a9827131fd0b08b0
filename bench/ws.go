package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// wsClient is one WebSocket connection to a space.
type wsClient struct {
	c *websocket.Conn
}

type wsMsg struct {
	Type    string          `json:"type"`
	ID      string          `json:"id"`
	Chunk   string          `json:"chunk"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Result  json.RawMessage `json:"result"`
}

var dialer = &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}

func dialWS(ctx context.Context, base, key, spaceID string) (*wsClient, error) {
	u := "ws" + strings.TrimPrefix(base, "http") + "/spaces/" + spaceID + "/ws"
	h := http.Header{}
	h.Set("X-API-Key", key)
	c, resp, err := dialer.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial: HTTP %d: %w", resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	return &wsClient{c: c}, nil
}

func (w *wsClient) send(v any) error {
	_ = w.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	return w.c.WriteJSON(v)
}

func (w *wsClient) read(timeout time.Duration) (wsMsg, error) {
	_ = w.c.SetReadDeadline(time.Now().Add(timeout))
	var m wsMsg
	err := w.c.ReadJSON(&m)
	if err == nil && m.Type == "error" {
		return m, fmt.Errorf("%s: %s", m.Code, m.Message)
	}
	return m, err
}

// enter enters a session and waits for session.entered.
func (w *wsClient) enter(sessionID string) error {
	if err := w.send(map[string]any{"type": "session.enter", "sessionId": sessionID, "id": "enter"}); err != nil {
		return err
	}
	m, err := w.read(60 * time.Second)
	if err != nil {
		return err
	}
	if m.Type != "session.entered" {
		return fmt.Errorf("expected session.entered, got %s", m.Type)
	}
	return nil
}

func (w *wsClient) close() { _ = w.c.Close() }
