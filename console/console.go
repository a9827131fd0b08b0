// Package console holds the web console: plain HTML, CSS and JavaScript
// modules embedded in the binary and served by `stello serve` at `/`. The
// page talks to the public API only (REST, Server-Sent Events and the
// WebSocket); it asks for the API key itself, so serving it needs none.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is the path under which the console's assets are served; the page
// itself is served at "/".
const Prefix = "/console/"

// contentSecurityPolicy keeps the page to its own scripts and styles and to
// connections with the server that served it.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

type asset struct {
	body  []byte
	etag  string
	ctype string
}

// contentTypes are the types of the console's files by extension. A fixed
// table, not the mime package's: that one reads the host's MIME databases
// (/etc/mime.types and others, hundreds of entries) the first time it is
// asked, and lets them override the answer.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
	".json": "application/json",
}

// Handler serves the console: "/" answers the page, Prefix+name its
// assets. Any other path, and a missing asset, is passed to notFound.
type Handler struct {
	notFound http.Handler

	// The assets are read, hashed and typed on the first request, not at
	// start-up: a server nobody opens the console of never pays for them.
	once    sync.Once
	assets  map[string]asset // by path below static/, e.g. "app.js"
	loadErr error            // a broken build: every request answers 500
}

// New returns the console's handler. notFound answers paths that are not
// part of the console (nil: http.NotFound).
func New(notFound http.Handler) *Handler {
	if notFound == nil {
		notFound = http.HandlerFunc(http.NotFound)
	}
	return &Handler{notFound: notFound}
}

// load reads the embedded files into h.assets.
func (h *Handler) load() {
	assets := map[string]asset{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ct := contentTypes[path.Ext(p)]
		if ct == "" {
			ct = http.DetectContentType(b)
		}
		assets[strings.TrimPrefix(p, "static/")] = asset{body: b, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, ctype: ct}
		return nil
	})
	if err != nil {
		// The files are embedded at build time; failing to read them is a
		// broken build: say so on every request, not a 404 after the first.
		h.loadErr = fmt.Errorf("console: reading the embedded files: %w", err)
		return
	}
	h.assets = assets
}

// ServeHTTP answers GET and HEAD for the page and its assets. Every answer
// is revalidated by ETag, so a new binary's console is picked up at once.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := ""
	switch {
	case r.URL.Path == "/":
		name = "index.html"
	case strings.HasPrefix(r.URL.Path, Prefix):
		name = strings.TrimPrefix(r.URL.Path, Prefix)
	}
	h.once.Do(h.load)
	if h.loadErr != nil && name != "" {
		http.Error(w, h.loadErr.Error(), http.StatusInternalServerError)
		return
	}
	a, ok := h.assets[name]
	if !ok || name == "" {
		h.notFound.ServeHTTP(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.ctype)
	hd.Set("ETag", a.etag)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if name == "index.html" {
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Frame-Options", "DENY")
	}
	// ServeContent handles If-None-Match (304), HEAD and ranges.
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
}
