// Package admin is an operator's page for cacheaside caches: an http.Handler, mounted like
// net/http/pprof, that lists the caches registered with it (configuration, Stats, breaker
// state), looks up one key (hit, lease, remaining TTL, size, codec; the value only when
// WithValues allows it), and invalidates a key, a pattern or tags after a confirmation.
//
//	h := admin.New()                   // path "/debug/cacheaside/"
//	h.Register("users", usersCache)    // any *cacheaside.Cache[T]
//	h.Register("orders", ordersCache)
//	mux.Handle("/debug/cacheaside/", h) // behind your authentication
//
// The page is plain server-rendered HTML (html/template, everything escaped), with inline CSS
// and no JavaScript. Reads are GET requests and change nothing; every invalidation is a GET
// that shows a confirmation form, then a POST of that form, which must carry the handler's
// random anti-CSRF token and pass net/http's cross-origin check. The page does not
// authenticate anyone: mount it where only operators reach it.
package admin

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cacheaside/cacheaside"
)

// Cache is what the page needs of a cache. Every *cacheaside.Cache[T] implements it, whatever
// T, so caches of different types register with one Handler.
type Cache interface {
	Info() cacheaside.CacheInfo
	Stats() cacheaside.Stats
	Inspect(ctx context.Context, key string) (cacheaside.KeyInfo, error)
	InspectValue(ctx context.Context, key string) (cacheaside.KeyInfo, any, error)
	Invalidate(ctx context.Context, keys ...string) error
	InvalidatePattern(ctx context.Context, pattern string) (int, error)
}

// TagInvalidator is implemented by a cache that invalidates entries by tag. The page offers tag
// invalidation for the caches that implement it, and only for them; a cache that also has a
// method SupportsTags() bool and says false (*cacheaside.Cache[T] over a store without a tag
// index) is offered none.
type TagInvalidator interface {
	InvalidateTags(ctx context.Context, tags ...string) error
}

// supportsTags reports whether the page offers c tag invalidation.
func supportsTags(c Cache) bool {
	if s, ok := c.(interface{ SupportsTags() bool }); ok && !s.SupportsTags() {
		return false
	}
	_, ok := c.(TagInvalidator)
	return ok
}

var (
	_ Cache          = (*cacheaside.Cache[struct{}])(nil)
	_ TagInvalidator = (*cacheaside.Cache[struct{}])(nil)
)
var _ http.Handler = (*Handler)(nil)

// DefaultPath is the path a Handler serves by default.
const DefaultPath = "/debug/cacheaside/"

// DefaultTimeout bounds each store operation the page starts, by default.
const DefaultTimeout = 30 * time.Second

// maxInput is the longest key, pattern or tag list the page accepts, in bytes.
const maxInput = 4096

// Handler serves the operator's page for the caches registered with it. It is safe for
// concurrent use: caches may be registered and unregistered while it serves.
type Handler struct {
	path       string
	showValues bool
	timeout    time.Duration
	token      string // anti-CSRF token of every form this handler renders
	origin     *http.CrossOriginProtection

	mu     sync.RWMutex
	caches map[string]Cache
}

// Option configures a Handler.
type Option func(*Handler)

// WithPath sets the path the handler is mounted at, which must begin and end with "/": mount
// it with mux.Handle(path, h). Requests outside it get 404; the path without its final slash
// redirects to it. Links and forms are relative, so the page also works behind a proxy or
// http.StripPrefix that rewrites the path: use WithPath("/") under StripPrefix. Default:
// DefaultPath ("/debug/cacheaside/").
func WithPath(path string) Option {
	return func(h *Handler) { h.path = path }
}

// WithValues says whether the key page shows cached values (decoded, as JSON where they
// marshal). Values may hold personal data or secrets: turn it on only where every operator
// who reaches the page may see the data. When off, values are never read out of the cache,
// rendered or logged. Default: false.
func WithValues(show bool) Option {
	return func(h *Handler) { h.showValues = show }
}

// WithTimeout bounds each lookup and invalidation the page starts (the request's own context
// bounds them too). Values below 1 keep the default. Default: DefaultTimeout (30 s).
func WithTimeout(d time.Duration) Option {
	return func(h *Handler) {
		if d > 0 {
			h.timeout = d
		}
	}
}

// New returns a Handler with no caches registered. It panics if WithPath is given a path that
// does not begin and end with "/" (a programming error, found at start-up).
func New(opts ...Option) *Handler {
	h := &Handler{path: DefaultPath, timeout: DefaultTimeout, caches: make(map[string]Cache), origin: http.NewCrossOriginProtection()}
	for _, o := range opts {
		o(h)
	}
	if !strings.HasPrefix(h.path, "/") || !strings.HasSuffix(h.path, "/") {
		panic(fmt.Sprintf("cacheaside: admin: path %q must begin and end with /", h.path))
	}
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	h.token = hex.EncodeToString(b[:])
	return h
}

// Path returns the path the handler serves (WithPath).
func (h *Handler) Path() string { return h.path }

// Register adds a cache to the page under name. It returns an error for an empty name, a nil
// cache, or a name already registered.
func (h *Handler) Register(name string, c Cache) error {
	switch {
	case name == "":
		return errors.New("cacheaside: admin: empty cache name")
	case len(name) > maxInput:
		return errors.New("cacheaside: admin: cache name too long")
	case c == nil:
		return fmt.Errorf("cacheaside: admin: nil cache %q", name)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.caches[name]; dup {
		return fmt.Errorf("cacheaside: admin: cache %q already registered", name)
	}
	h.caches[name] = c
	return nil
}

// Unregister removes the cache registered under name, if any.
func (h *Handler) Unregister(name string) {
	h.mu.Lock()
	delete(h.caches, name)
	h.mu.Unlock()
}

func (h *Handler) lookup(name string) (Cache, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	c, ok := h.caches[name]
	return c, ok
}

func (h *Handler) names() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	names := make([]string, 0, len(h.caches))
	for n := range h.caches {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	rest, ok := strings.CutPrefix(r.URL.Path, h.path)
	if !ok {
		if r.URL.Path == strings.TrimSuffix(h.path, "/") {
			http.Redirect(w, r, h.path, http.StatusMovedPermanently)
			return
		}
		h.fail(w, http.StatusNotFound, "No such page.")
		return
	}
	switch rest {
	case "":
		if h.safeMethod(w, r) {
			h.serveIndex(w, r)
		}
	case "key":
		if h.safeMethod(w, r) {
			h.serveKey(w, r)
		}
	case "invalidate":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.serveConfirm(w, r)
		case http.MethodPost:
			h.serveInvalidate(w, r)
		default:
			hdr.Set("Allow", "GET, HEAD, POST")
			h.fail(w, http.StatusMethodNotAllowed, "Invalidations are confirmed with a POST of the confirmation form.")
		}
	default:
		h.fail(w, http.StatusNotFound, "No such page.")
	}
}

// safeMethod answers 405 to anything but GET and HEAD.
func (h *Handler) safeMethod(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	h.fail(w, http.StatusMethodNotAllowed, "This page only reads: use GET.")
	return false
}

// checkInput returns an error message for a key, pattern or tag list the page refuses.
func checkInput(what, s string) string {
	switch {
	case s == "":
		return "The " + what + " is empty."
	case len(s) > maxInput:
		return fmt.Sprintf("The %s is longer than %d bytes.", what, maxInput)
	}
	return ""
}

// query returns the request's query parameters, or answers 400 for a malformed query.
func (h *Handler) query(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		h.fail(w, http.StatusBadRequest, "The query string is malformed (bad %-escape or separator).")
		return nil, false
	}
	return q, true
}

// cacheParam returns the cache named by the request's "cache" parameter, or answers 400/404.
func (h *Handler) cacheParam(w http.ResponseWriter, name string) (Cache, bool) {
	if name == "" {
		h.fail(w, http.StatusBadRequest, "No cache named: the cache parameter is missing.")
		return nil, false
	}
	c, ok := h.lookup(name)
	if !ok {
		h.fail(w, http.StatusNotFound, fmt.Sprintf("No cache is registered as %q.", name))
		return nil, false
	}
	return c, true
}

func (h *Handler) serveIndex(w http.ResponseWriter, r *http.Request) {
	p := indexPage{page: h.newPage("Caches")}
	for _, name := range h.names() {
		c, ok := h.lookup(name)
		if !ok {
			continue
		}
		tags := supportsTags(c)
		s := c.Stats()
		p.Caches = append(p.Caches, cacheView{Name: name, Info: c.Info(), Stats: s, Rows: statRows(s), Tags: tags})
	}
	h.render(w, http.StatusOK, "index", p)
}

func (h *Handler) serveKey(w http.ResponseWriter, r *http.Request) {
	q, ok := h.query(w, r)
	if !ok {
		return
	}
	name, key := q.Get("cache"), q.Get("key")
	c, ok := h.cacheParam(w, name)
	if !ok {
		return
	}
	if msg := checkInput("key", key); msg != "" {
		h.fail(w, http.StatusBadRequest, msg)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	var info cacheaside.KeyInfo
	var v any
	var err error
	if h.showValues {
		info, v, err = c.InspectValue(ctx, key)
	} else {
		info, err = c.Inspect(ctx, key)
	}
	p := keyPage{page: h.newPage("Key"), Cache: name, Key: key, Info: info, ShowValues: h.showValues}
	status := http.StatusOK
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		p.Error = "This cache's store cannot be inspected (it does not implement cacheaside.InspectStore)."
		status = http.StatusNotImplemented
	case err != nil:
		p.Error = err.Error()
		status = http.StatusBadGateway
	default:
		p.Rows = keyRows(info)
		if h.showValues && v != nil {
			p.Value, p.HasValue = renderValue(v), true
		}
	}
	h.render(w, status, "key", p)
}

// invalidation is what an invalidation form names.
type invalidation struct {
	Cache  string
	Kind   string // "key", "pattern" or "tags"
	Target string // the key, the pattern, or the tags (comma-separated)
}

func (h *Handler) parseInvalidation(w http.ResponseWriter, get func(string) string) (invalidation, Cache, bool) {
	inv := invalidation{Cache: get("cache"), Kind: get("kind"), Target: get("target")}
	c, ok := h.cacheParam(w, inv.Cache)
	if !ok {
		return inv, nil, false
	}
	var what string
	switch inv.Kind {
	case "key":
		what = "key"
	case "pattern":
		what = "pattern"
	case "tags":
		what = "tag list"
		if !supportsTags(c) {
			h.fail(w, http.StatusBadRequest, fmt.Sprintf("Cache %q does not support tags.", inv.Cache))
			return inv, nil, false
		}
		if len(splitTags(inv.Target)) == 0 {
			inv.Target = ""
		}
	default:
		h.fail(w, http.StatusBadRequest, fmt.Sprintf("Unknown kind of invalidation %q: use key, pattern or tags.", inv.Kind))
		return inv, nil, false
	}
	if msg := checkInput(what, inv.Target); msg != "" {
		h.fail(w, http.StatusBadRequest, msg)
		return inv, nil, false
	}
	return inv, c, true
}

func splitTags(s string) []string {
	var tags []string
	for t := range strings.SplitSeq(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	return tags
}

// serveConfirm shows the confirmation form of an invalidation; it changes nothing.
func (h *Handler) serveConfirm(w http.ResponseWriter, r *http.Request) {
	q, ok := h.query(w, r)
	if !ok {
		return
	}
	inv, _, ok := h.parseInvalidation(w, q.Get)
	if !ok {
		return
	}
	h.render(w, http.StatusOK, "confirm", confirmPage{page: h.newPage("Confirm invalidation"), Inv: inv, Token: h.token})
}

// serveInvalidate runs a confirmed invalidation: a POST of the confirmation form.
func (h *Handler) serveInvalidate(w http.ResponseWriter, r *http.Request) {
	if err := h.origin.Check(r); err != nil {
		h.fail(w, http.StatusForbidden, "Cross-origin request refused.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4*maxInput)
	if err := r.ParseForm(); err != nil {
		h.fail(w, http.StatusBadRequest, "The form could not be read.")
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(h.token)) != 1 {
		h.fail(w, http.StatusForbidden, "The form's token is missing or wrong (the page may be from before a restart): go back to the page, reload it and confirm again.")
		return
	}
	inv, c, ok := h.parseInvalidation(w, r.PostForm.Get)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	p := resultPage{page: h.newPage("Invalidated"), Inv: inv}
	var err error
	switch inv.Kind {
	case "key":
		err = c.Invalidate(ctx, inv.Target)
		p.Message = "The key was invalidated."
	case "pattern":
		var n int
		n, err = c.InvalidatePattern(ctx, inv.Target)
		p.Message = fmt.Sprintf("%d cached %s removed.", n, plural(n, "entry", "entries"))
	case "tags":
		err = c.(TagInvalidator).InvalidateTags(ctx, splitTags(inv.Target)...)
		p.Message = "The tagged entries were invalidated."
	}
	status := http.StatusOK
	if err != nil {
		p.Message, p.Error = "", err.Error()
		status = http.StatusBadGateway
	}
	h.render(w, status, "result", p)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func (h *Handler) fail(w http.ResponseWriter, status int, msg string) {
	h.render(w, status, "error", errorPage{page: h.newPage(http.StatusText(status)), Status: status, Message: msg})
}
