package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// api is a minimal client of the public REST API.
type api struct {
	base string
	key  string
	http *http.Client
}

func newAPI(base, key string, conns int) *api {
	tr := &http.Transport{MaxIdleConns: conns * 2, MaxIdleConnsPerHost: conns * 2, IdleConnTimeout: 90 * time.Second}
	return &api{base: strings.TrimRight(base, "/"), key: key, http: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// apiError is a non-2xx answer.
type apiError struct {
	Status int
	Code   string
	Msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Msg) }

func (a *api) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", a.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		_ = json.Unmarshal(b, &e)
		return &apiError{Status: resp.StatusCode, Code: e.Code, Msg: e.Error}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

type idOnly struct {
	ID string `json:"id"`
}

// createSpace makes a space and returns its id and root session id.
func (a *api) createSpace(ctx context.Context, label string) (string, string, error) {
	var sp idOnly
	if err := a.do(ctx, http.MethodPost, "/spaces", map[string]any{"label": label, "systemPrompt": "You are a load-test assistant."}, &sp); err != nil {
		return "", "", err
	}
	var root idOnly
	if err := a.do(ctx, http.MethodGet, "/spaces/"+sp.ID+"/sessions", nil, &root); err != nil {
		return "", "", err
	}
	return sp.ID, root.ID, nil
}

func (a *api) fork(ctx context.Context, spaceID, parentID, label string) (string, error) {
	var s idOnly
	err := a.do(ctx, http.MethodPost, "/spaces/"+spaceID+"/sessions/"+parentID+"/fork", map[string]any{"label": label}, &s)
	return s.ID, err
}

func (a *api) turn(ctx context.Context, spaceID, sessionID, input string) error {
	return a.do(ctx, http.MethodPost, "/spaces/"+spaceID+"/sessions/"+sessionID+"/turn", map[string]any{"input": input}, nil)
}
