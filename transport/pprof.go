package transport

import (
	"net/http/pprof"

	"github.com/go-chi/chi/v5"
)

// mountPprof serves the runtime profiles under /debug/pprof/.
func mountPprof(r chi.Router) {
	r.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	r.HandleFunc("/debug/pprof/profile", pprof.Profile)
	r.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	r.HandleFunc("/debug/pprof/trace", pprof.Trace)
	r.HandleFunc("/debug/pprof/*", pprof.Index)
}
