package transport

import (
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// mountPprof serves the runtime profiles under /debug/pprof/.
func mountPprof(r chi.Router) {
	r.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	r.HandleFunc("/debug/pprof/profile", pprof.Profile)
	r.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	r.HandleFunc("/debug/pprof/trace", pprof.Trace)
	r.HandleFunc("/debug/pprof/*", pprof.Index)
}

// mountAdmin serves /metrics and, when withPprof, /debug/pprof/ on r.
func (s *Server) mountAdmin(r chi.Router, withPprof bool) {
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{Registry: s.registry}))
	if withPprof {
		mountPprof(r)
	}
}

// AdminHandler serves /metrics and /debug/pprof/ for an operator-only
// listener (with Options.SeparateAdmin, the only place they are served).
// Its requests are not counted in the HTTP metrics.
func (s *Server) AdminHandler() http.Handler {
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mountAdmin(r, true)
	return r
}

// knownMethods are the HTTP methods that get a metric label of their own.
var knownMethods = map[string]string{
	http.MethodGet: http.MethodGet, http.MethodHead: http.MethodHead, http.MethodPost: http.MethodPost,
	http.MethodPut: http.MethodPut, http.MethodPatch: http.MethodPatch, http.MethodDelete: http.MethodDelete,
	http.MethodConnect: http.MethodConnect, http.MethodOptions: http.MethodOptions, http.MethodTrace: http.MethodTrace,
}

// methodLabel maps a request method to a closed set: the standard methods,
// else "other".
func methodLabel(m string) string {
	if l, ok := knownMethods[m]; ok {
		return l
	}
	return "other"
}

// knownStatus are the status codes that get a metric label of their own;
// any other code is labelled by its class ("2xx" … "5xx", else "other").
var knownStatus = func() map[int]string {
	m := map[int]string{}
	for _, c := range []int{101, 200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 406, 408, 409,
		410, 411, 412, 413, 414, 415, 416, 422, 429, 431, 499, 500, 501, 502, 503, 504} {
		m[c] = strconv.Itoa(c)
	}
	return m
}()

func statusLabel(code int) string {
	if l, ok := knownStatus[code]; ok {
		return l
	}
	if code >= 100 && code < 600 {
		return strconv.Itoa(code/100) + "xx"
	}
	return "other"
}
