package transport

import (
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
)

// recoverer answers 500 INTERNAL to a request whose handler panicked
// (when nothing was written yet), instead of letting net/http drop the
// connection; the panic is logged and counted once.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			err := s.guard.Caught("http", v)
			if !sw.wrote {
				s.writeError(sw, r, err)
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

// allowedMethods lists the methods the router serves on the request's path,
// for the Allow header of a 405.
func (s *Server) allowedMethods(r *http.Request) string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if s.router.Match(chi.NewRouteContext(), m, r.URL.Path) {
			allow = append(allow, m)
		}
	}
	return strings.Join(allow, ", ")
}
