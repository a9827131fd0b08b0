package transport

import (
	_ "embed"
	"net/http"
	"strconv"
)

// OpenAPI is the OpenAPI 3.1 document of the API, served at
// GET /openapi.json. It is written by hand; the tests check it against the
// router (every route documented, nothing documented that is not routed)
// and validate real responses against its schemas.
//
//go:embed openapi.json
var OpenAPI []byte

// serveOpenAPI serves the OpenAPI document. It needs no key.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(OpenAPI)))
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(OpenAPI)
}
