package transport

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/stellohq/stello/console"
)

// mountConsole serves the web console (no auth: the page asks for the key
// and sends it with every API call) at "/" and its assets under
// console.Prefix. Unknown paths keep the JSON 404 of the API.
func (s *Server) mountConsole(r chi.Router) {
	notFound := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, errNotFound) })
	h := console.New(notFound)
	r.Get("/", h.ServeHTTP)
	r.Head("/", h.ServeHTTP)
	r.Get(console.Prefix+"*", h.ServeHTTP)
	r.Head(console.Prefix+"*", h.ServeHTTP)
}
