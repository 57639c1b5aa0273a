package admin_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/admin"
)

func TestInvalidateKeyWithConfirmation(t *testing.T) {
	store := memStore(t)
	c := newCache[user](t, store)
	load(t, c, "u1", user{Name: "Ada"})
	load(t, c, "u2", user{Name: "Bob"})
	h := admin.New()
	register(t, h, "users", c)

	form := confirm(t, h, "users", "key", "u1")
	if !cached(t, c, "u1") {
		t.Fatal("the confirmation page invalidated the key")
	}
	r := do(t, h, http.MethodPost, admin.DefaultPath+"invalidate", form)
	if r.status != http.StatusOK {
		t.Fatalf("status %d\n%s", r.status, r.body)
	}
	mustContain(t, r, "The key was invalidated.")
	if cached(t, c, "u1") || !cached(t, c, "u2") {
		t.Fatal("wrong keys invalidated")
	}
	if c.Stats().Invalidations != 1 {
		t.Fatalf("invalidations %d, want 1", c.Stats().Invalidations)
	}
}

func TestInvalidatePattern(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t testing.TB) cacheaside.Store
	}{
		{"memory", func(t testing.TB) cacheaside.Store { return memStore(t) }},
		{"redis", func(t testing.TB) cacheaside.Store { s, _ := redisStore(t); return s }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache[user](t, tc.store(t))
			for _, k := range []string{"user:1", "user:2", "order:1"} {
				load(t, c, k, user{Name: k})
			}
			h := admin.New()
			register(t, h, "c", c)
			form := confirm(t, h, "c", "pattern", "user:*")
			if !cached(t, c, "user:1") {
				t.Fatal("the confirmation page invalidated")
			}
			r := do(t, h, http.MethodPost, admin.DefaultPath+"invalidate", form)
			mustContain(t, r, "2 cached entries removed.")
			if cached(t, c, "user:1") || cached(t, c, "user:2") || !cached(t, c, "order:1") {
				t.Fatal("wrong keys invalidated")
			}
		})
	}
}

// TestMutationsNeedConfirmedPost: no GET, no other method, no POST without the handler's
// token or from another origin changes anything.
func TestMutationsNeedConfirmedPost(t *testing.T) {
	store := memStore(t)
	c := newCache[user](t, store)
	load(t, c, "u1", user{Name: "Ada"})
	h, other := admin.New(), admin.New()
	register(t, h, "users", c)
	register(t, other, "users", c)
	form := confirm(t, h, "users", "key", "u1")
	path := admin.DefaultPath + "invalidate"

	for _, tc := range []struct {
		name   string
		method string
		target string
		form   url.Values
		hdr    []string
		status int
	}{
		{"GET with every field", http.MethodGet, path + "?" + form.Encode(), nil, nil, http.StatusOK},
		{"HEAD", http.MethodHead, path + "?" + form.Encode(), nil, nil, http.StatusOK},
		{"PUT", http.MethodPut, path, form, nil, http.StatusMethodNotAllowed},
		{"DELETE", http.MethodDelete, path + "?" + form.Encode(), nil, nil, http.StatusMethodNotAllowed},
		{"POST to the key page", http.MethodPost, admin.DefaultPath + "key?cache=users&key=u1", form, nil, http.StatusMethodNotAllowed},
		{"POST to the index", http.MethodPost, admin.DefaultPath, form, nil, http.StatusMethodNotAllowed},
		{"POST without token", http.MethodPost, path, without(form, "csrf"), nil, http.StatusForbidden},
		{"POST with a wrong token", http.MethodPost, path, with(form, "csrf", strings.Repeat("0", 64)), nil, http.StatusForbidden},
		{"POST with another handler's token", http.MethodPost, path, confirm(t, other, "users", "key", "u1"), nil, http.StatusForbidden},
		{"POST with the token in the query only", http.MethodPost, path + "?csrf=" + form.Get("csrf"), without(form, "csrf"), nil, http.StatusForbidden},
		{"POST from another site", http.MethodPost, path, form, []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"POST from another origin", http.MethodPost, path, form, []string{"Origin", "https://evil.example"}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, h, tc.method, tc.target, tc.form, tc.hdr...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d\n%s", r.status, tc.status, r.body)
			}
			if !cached(t, c, "u1") || c.Stats().Invalidations != 0 {
				t.Fatal("the key was invalidated")
			}
		})
	}
	// The same form, confirmed properly, does invalidate (the cases above were refused for
	// their own flaw, not for a bad form).
	if r := do(t, h, http.MethodPost, path, form, "Sec-Fetch-Site", "same-origin"); r.status != http.StatusOK || cached(t, c, "u1") {
		t.Fatalf("the proper POST did not invalidate: %d\n%s", r.status, r.body)
	}
}

func with(v url.Values, k, val string) url.Values {
	out := url.Values{}
	for kk, vv := range v {
		out[kk] = slices.Clone(vv)
	}
	out.Set(k, val)
	return out
}

func without(v url.Values, k string) url.Values {
	out := with(v, k, "")
	out.Del(k)
	return out
}

// tagged is a cache with tags (the seam for cacheaside's tag invalidation).
type tagged struct {
	admin.Cache
	got [][]string
}

func (c *tagged) InvalidateTags(_ context.Context, tags ...string) error {
	c.got = append(c.got, tags)
	return nil
}

func TestInvalidateTags(t *testing.T) {
	tc := &tagged{Cache: newCache[user](t, memStore(t))}
	h := admin.New()
	register(t, h, "lists", tc)
	mustContain(t, get(t, h, admin.DefaultPath), `name="kind" value="tags"`)
	if r := get(t, h, admin.DefaultPath+"invalidate?cache=lists&kind=tags&target=+,+"); r.status != http.StatusBadRequest {
		t.Fatalf("empty tag list: %d", r.status)
	}
	form := confirm(t, h, "lists", "tags", "product:42, category:7,")
	if len(tc.got) != 0 {
		t.Fatal("the confirmation page invalidated")
	}
	r := do(t, h, http.MethodPost, admin.DefaultPath+"invalidate", form)
	mustContain(t, r, "The tagged entries were invalidated.")
	if len(tc.got) != 1 || !slices.Equal(tc.got[0], []string{"product:42", "category:7"}) {
		t.Fatalf("InvalidateTags calls: %q", tc.got)
	}
}

// A cache whose store indexes no tags is offered no tag invalidation, and refused one.
func TestInvalidateTagsWithoutIndex(t *testing.T) {
	c := newCache[user](t, struct{ cacheaside.Store }{memStore(t)})
	h := admin.New()
	register(t, h, "plain", c)
	if r := get(t, h, admin.DefaultPath); strings.Contains(r.body, `value="tags"`) {
		t.Fatalf("tag invalidation offered for a cache without a tag index:\n%s", r.body)
	}
	if r := get(t, h, admin.DefaultPath+"invalidate?cache=plain&kind=tags&target=t"); r.status != http.StatusBadRequest {
		t.Fatalf("tag invalidation of a cache without a tag index: status %d", r.status)
	}
}
