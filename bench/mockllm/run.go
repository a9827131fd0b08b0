package mockllm

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// shutdownGrace is how long Run lets in-flight requests finish after ctx is
// cancelled before cutting them off.
const shutdownGrace = 5 * time.Second

// Run serves a mock built from cfg on addr (e.g. ":8089" or
// "127.0.0.1:0") until ctx is cancelled, then shuts down gracefully: new
// connections are refused, in-flight requests get a few seconds to finish,
// then their contexts are cancelled and connections closed. It logs the
// listen address once through logf (which may be nil). Unlike New, the
// server Run builds does not record requests, so memory stays flat under
// load. It returns nil after a shutdown caused by ctx, or the listen/serve
// error.
func Run(ctx context.Context, addr string, cfg Config, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           newServer(cfg, false),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}
	logf("mockllm: listening on http://%s", ln.Addr())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Grace period over: stop the handlers and drop the connections.
		cancelBase()
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
