package admin_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/admin"
)

// TestBadInput: every malformed request gets a clear 4xx page, never a panic or a 500.
func TestBadInput(t *testing.T) {
	store := memStore(t)
	c := newCache[user](t, store)
	load(t, c, "u1", user{Name: "Ada"})
	h := admin.New()
	register(t, h, "users", c)
	register(t, h, "untagged", breakerOpen{c}) // only the methods of admin.Cache: no InvalidateTags
	long := strings.Repeat("k", 5000)
	p := admin.DefaultPath
	for _, tc := range []struct {
		target string
		status int
		says   string
	}{
		{p + "key", http.StatusBadRequest, "the cache parameter is missing"},
		{p + "key?cache=users", http.StatusBadRequest, "The key is empty."},
		{p + "key?cache=users&key=" + long, http.StatusBadRequest, "longer than 4096 bytes"},
		{p + "key?cache=nope&key=k", http.StatusNotFound, "No cache is registered as &#34;nope&#34;."},
		{p + "key?cache=users&key=%zz", http.StatusBadRequest, "The query string is malformed"},
		{p + "invalidate?cache=users&kind=key&target=%", http.StatusBadRequest, "The query string is malformed"},
		{p + "invalidate?cache=users&kind=key", http.StatusBadRequest, "The key is empty."},
		{p + "invalidate?cache=users&kind=pattern&target=", http.StatusBadRequest, "The pattern is empty."},
		{p + "invalidate?cache=users&kind=drop&target=x", http.StatusBadRequest, "Unknown kind of invalidation"},
		{p + "invalidate?cache=untagged&kind=tags&target=a", http.StatusBadRequest, "does not support tags"},
		{p + "invalidate?cache=users&kind=pattern&target=" + long, http.StatusBadRequest, "longer than 4096 bytes"},
		{p + "nothing", http.StatusNotFound, "No such page."},
		{"/elsewhere", http.StatusNotFound, "No such page."},
	} {
		r := get(t, h, tc.target)
		if r.status != tc.status || !strings.Contains(r.body, tc.says) {
			t.Errorf("GET %.80s: %d, want %d saying %q\n%s", tc.target, r.status, tc.status, tc.says, r.body)
		}
	}
	if r := get(t, h, strings.TrimSuffix(p, "/")); r.status != http.StatusMovedPermanently || r.header.Get("Location") != p {
		t.Errorf("path without its slash: %d to %q", r.status, r.header.Get("Location"))
	}
	// Malformed POST bodies.
	form := confirm(t, h, "users", "key", "u1")
	req := httptest.NewRequest(http.MethodPost, p+"invalidate", strings.NewReader("csrf=%zz&cache=users"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest && rec.Code != http.StatusForbidden {
		t.Errorf("malformed form: %d", rec.Code)
	}
	big := with(form, "target", strings.Repeat("x", 1<<20))
	if r := do(t, h, http.MethodPost, p+"invalidate", big); r.status != http.StatusBadRequest {
		t.Errorf("1 MiB form: %d, want 400", r.status)
	}
	if !cached(t, c, "u1") {
		t.Fatal("a bad request invalidated the key")
	}
}

// failing is a cache whose store fails.
type failing struct{ admin.Cache }

var errDown = errors.New("store down")

func (failing) InvalidatePattern(context.Context, string) (int, error) { return 0, errDown }
func (failing) Inspect(context.Context, string) (cacheaside.KeyInfo, error) {
	return cacheaside.KeyInfo{}, errDown
}

// opaque is a store without InspectStore.
type opaque struct{ cacheaside.Store }

func TestStoreErrorsShown(t *testing.T) {
	c := newCache[user](t, memStore(t))
	h := admin.New()
	register(t, h, "down", failing{c})
	register(t, h, "opaque", newCache[user](t, opaque{memStore(t)}))
	r := get(t, h, admin.DefaultPath+"key?cache=down&key=k")
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, "store down") {
		t.Fatalf("failing inspect: %d\n%s", r.status, r.body)
	}
	r = get(t, h, admin.DefaultPath+"key?cache=opaque&key=k")
	if r.status != http.StatusNotImplemented || !strings.Contains(r.body, "cannot be inspected") {
		t.Fatalf("opaque store: %d\n%s", r.status, r.body)
	}
	r = do(t, h, http.MethodPost, admin.DefaultPath+"invalidate", confirm(t, h, "down", "pattern", "*"))
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, "Failed: store down") {
		t.Fatalf("failing invalidation: %d\n%s", r.status, r.body)
	}
}
