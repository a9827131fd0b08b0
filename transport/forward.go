package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/apierr"
	"github.com/stellohq/stello/internal/tracing/spans"
	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// HopHeader marks a request forwarded by another process (its value is
// that process's id). A forwarded request is never forwarded again: a
// process that gets one for a space it does not own answers it as
// misdirected, and the process that forwarded it looks the owner up again.
const HopHeader = "Stello-Forwarded-By"

// misdirectedHeader marks the answer to a forwarded request that reached a
// process which does not own the space (any more).
const misdirectedHeader = "Stello-Misdirected"

// ForwardOptions turn forwarding on: requests for a space owned by another
// process are sent there.
type ForwardOptions struct {
	// NodeID is this process's id, sent in HopHeader.
	NodeID string
	// Transport carries forwarded requests (default: a transport with a
	// 2s dial timeout and a large idle pool per owner).
	Transport http.RoundTripper
	// OwnerWait is how long a request waits for a space whose owner
	// cannot be reached to be handed over (default 2s); then it answers
	// 503 UNAVAILABLE.
	OwnerWait time.Duration
	// ResponseTimeout bounds the wait for the owner's response headers
	// (default 10m: a non-streamed turn answers when it is done).
	ResponseTimeout time.Duration
}

// forwarder sends requests to a space's owner with httputil.ReverseProxy:
// REST, SSE (flushed per event) and the WebSocket upgrade alike.
type forwarder struct {
	s     *Server
	opts  ForwardOptions
	proxy *httputil.ReverseProxy
	taps  taps // proxied WebSockets
}

// hopTarget is the owner a request is forwarded to, and what became of it.
type hopTarget struct {
	owner *url.URL
	err   error // the owner could not be reached, or answered misdirected
}

type hopKey struct{}

var errMisdirected = errors.New("the process forwarded to does not own the space")

func newForwarder(s *Server, o ForwardOptions) *forwarder {
	if o.ResponseTimeout <= 0 {
		o.ResponseTimeout = 10 * time.Minute
	}
	if o.Transport == nil {
		o.Transport = &http.Transport{
			ResponseHeaderTimeout: o.ResponseTimeout,
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          1024,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
	}
	if o.OwnerWait <= 0 {
		o.OwnerWait = 2 * time.Second
	}
	f := &forwarder{s: s, opts: o}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(hopKey{}).(*hopTarget)
			pr.SetURL(t.owner)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			pr.Out.Header.Set(HopHeader, o.NodeID)
			injectTrace(pr.Out)
		},
		Transport: o.Transport,
		ModifyResponse: func(resp *http.Response) error {
			if resp.Header.Get(misdirectedHeader) != "" {
				return errMisdirected
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				rwc, ok := resp.Body.(io.ReadWriteCloser)
				if !ok {
					return errors.New("a 101 answer without a writable body")
				}
				t, err := f.taps.add(rwc)
				if err != nil {
					_ = rwc.Close()
					return err
				}
				resp.Body = t
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// Nothing was written: the caller decides (retry or answer).
			r.Context().Value(hopKey{}).(*hopTarget).err = err
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	return f
}

// middleware serves a request for the space in the path here when this
// process owns it, and forwards it to the owner otherwise.
func (f *forwarder) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		spaceID := chi.URLParam(r, "spaceId")
		hopped := r.Header.Get(HopHeader) != ""
		rt, err := f.s.spaces.Route(r.Context(), spaceID, false)
		if err == nil && rt.Local {
			next.ServeHTTP(w, r)
			return
		}
		if err != nil {
			f.s.writeError(w, r, err)
			return
		}
		if hopped {
			// Never forwarded twice: the forwarding process looks again.
			w.Header().Set(misdirectedHeader, "1")
			f.s.writeError(w, r, fmt.Errorf("%w: %w", apierr.ErrOwnerUnreachable, &space.NotOwnerError{Owner: rt.Owner}))
			return
		}
		f.forward(w, r, next, spaceID, rt.Owner)
	})
}

// forward proxies r to owner. When the owner cannot be reached before the
// request was sent, or it no longer owns the space, the owner is looked up
// again (taking the space over here when its lease is free) and the
// request tried once more; a request that may have reached a process that
// died meanwhile is not repeated.
func (f *forwarder) forward(w http.ResponseWriter, r *http.Request, next http.Handler, spaceID string, owner session.Owner) {
	body, err := bufferBody(r, f.s.opts.MaxBodyBytes)
	if err != nil {
		f.s.writeError(w, r, err)
		return
	}
	failed := ""
	for attempt := 0; ; attempt++ {
		u, err := url.Parse(owner.URL)
		if err != nil || u.Host == "" {
			err = fmt.Errorf("%w: it advertises no usable address %q", apierr.ErrOwnerUnreachable, owner.URL)
			f.s.writeError(w, r, err)
			return
		}
		t := &hopTarget{owner: u}
		// The hop is a client span of the request's trace; the owner
		// continues it (traceparent is injected from this context).
		hctx, span := tracer.Start(r.Context(), "forward", trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("stello.owner.node", owner.NodeID), attribute.String("server.address", u.Host),
				attribute.Int("stello.forward.attempt", attempt)))
		req := r.WithContext(context.WithValue(hctx, hopKey{}, t))
		if body != nil {
			// GetBody lets the transport send the request again on a
			// fresh connection when a pooled one turns out closed
			// before the request was written.
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
			req.Body, _ = req.GetBody()
			req.ContentLength = int64(len(body))
		}
		f.s.forwarded.WithLabelValues("sent").Inc()
		f.proxy.ServeHTTP(w, req)
		if t.err != nil {
			spans.Fail(span, t.err, "UNAVAILABLE")
		}
		span.End()
		if t.err == nil || r.Context().Err() != nil {
			return
		}
		// Only a request that certainly did not run is sent again.
		retry := errors.Is(t.err, errMisdirected) || isDialError(t.err)
		f.s.log.Info("forward failed", zap.String("space", spaceID), zap.String("owner", owner.NodeID), zap.Int("attempt", attempt),
			zap.Bool("retry", retry && attempt == 0), zap.Error(t.err))
		if errors.Is(t.err, errForwarderStopping) {
			// This process stops, not the owner: retry elsewhere.
			w.Header().Set("Retry-After", "1")
			f.s.writeError(w, r, fmt.Errorf("%w: %w", space.ErrUnavailable, t.err))
			return
		}
		if !retry || attempt > 0 {
			f.s.forwarded.WithLabelValues("failed").Inc()
			w.Header().Set("Retry-After", "1")
			f.s.writeError(w, r, fmt.Errorf("%w: %w", apierr.ErrOwnerUnreachable, t.err))
			return
		}
		f.s.forwarded.WithLabelValues("retried").Inc()
		if !errors.Is(t.err, errMisdirected) {
			failed = owner.NodeID
		}
		rt, err := f.lookAgain(r.Context(), spaceID, failed)
		if err != nil {
			w.Header().Set("Retry-After", "1")
			f.s.writeError(w, r, err)
			return
		}
		if rt.Local {
			if body != nil {
				r.Body = io.NopCloser(bytes.NewReader(body))
				r.ContentLength = int64(len(body))
			}
			next.ServeHTTP(w, r)
			return
		}
		owner = rt.Owner
	}
}

// lookAgain finds the space's owner afresh; while that is still the
// process that could not be reached (its lease has not expired, or it is
// stopping and about to hand it back), it waits up to OwnerWait.
func (f *forwarder) lookAgain(ctx context.Context, spaceID, unreachable string) (space.Route, error) {
	deadline := time.Now().Add(f.opts.OwnerWait)
	for {
		rt, err := f.s.spaces.Route(ctx, spaceID, true)
		if err != nil || rt.Local || rt.Owner.NodeID != unreachable || unreachable == "" {
			return rt, err
		}
		if time.Now().After(deadline) {
			return space.Route{}, fmt.Errorf("%w: it does not answer yet", apierr.ErrOwnerUnreachable)
		}
		select {
		case <-ctx.Done():
			return space.Route{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// bufferBody reads a request body (at most limit+1 bytes, so that the
// owner still refuses one too large) so that it can be sent twice.
func bufferBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w: %w", session.ErrInvalid, err)
	}
	return b, nil
}

// injectTrace propagates the request's trace to the owner (W3C
// traceparent, through the global propagator).
func injectTrace(r *http.Request) {
	otel.GetTextMapPropagator().Inject(r.Context(), propagation.HeaderCarrier(r.Header))
}

// isDialError reports whether the request never left this process: the
// owner refused or did not accept the connection.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
