package transport

import (
	"bufio"
	"net"
	"net/http"
	"sort"
	"strings"
)

// recoverer answers 500 INTERNAL to a request whose handler panicked
// (when nothing was written yet), instead of letting net/http drop the
// connection; the panic is logged and counted once.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := recording(w)
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

// methodNotAllowed turns the router's own 405 (which knows the methods of
// the path and sets Allow) into the API's JSON error.
func (s *Server) methodNotAllowed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&allowWriter{ResponseWriter: w, s: s, r: r}, r)
	})
}

// allowWriter replaces a bare 405 answer with the JSON error.
type allowWriter struct {
	http.ResponseWriter
	s        *Server
	r        *http.Request
	replaced bool
}

func (w *allowWriter) WriteHeader(code int) {
	if code != http.StatusMethodNotAllowed || w.replaced {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.replaced = true
	h := w.Header()
	if allow := h.Values("Allow"); len(allow) > 0 {
		rank := map[string]int{"GET": 0, "HEAD": 1, "POST": 2, "PUT": 3, "PATCH": 4, "DELETE": 5, "OPTIONS": 6}
		sorted := append([]string(nil), allow...)
		sort.SliceStable(sorted, func(i, j int) bool { return rank[sorted[i]] < rank[sorted[j]] })
		h.Set("Allow", strings.Join(sorted, ", "))
	}
	w.s.writeError(w.ResponseWriter, w.r, apiErr(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED",
		w.r.Method+" is not allowed on "+w.r.URL.Path+"; allowed: "+h.Get("Allow")))
}

func (w *allowWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *allowWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack lets the WebSocket upgrader take over the connection.
func (w *allowWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}
