package admin_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/admin"
	"github.com/cacheaside/cacheaside/codec/msgpack"
	"github.com/redis/go-redis/v9"
)

type user struct {
	Name   string `json:"name"`
	Secret string `json:"secret"`
}

const secret = "s3cr3t-value-marker"

func prefix(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "cacheaside-admin-test:" + hex.EncodeToString(b[:]) + ":"
}

func memStore(t testing.TB) *cacheaside.MemoryStore {
	s := cacheaside.NewMemoryStore()
	t.Cleanup(func() { s.Close() })
	return s
}

// redisStore returns a RedisStore on the Redis of CACHEASIDE_REDIS_ADDR (default
// 127.0.0.1:6379), and its client; it skips when none answers (fails in CI).
func redisStore(t testing.TB) (*cacheaside.RedisStore, *redis.Client) {
	addr := os.Getenv("CACHEASIDE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Redis at %s is not answering: %v", addr, err)
		}
		t.Skipf("Redis at %s is not answering: %v", addr, err)
	}
	conn.Close()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return cacheaside.NewRedisStore(c), c
}

func newCache[T any](t testing.TB, store cacheaside.Store, opts ...cacheaside.Option) *cacheaside.Cache[T] {
	t.Helper()
	c, err := cacheaside.New[T](store, append([]cacheaside.Option{cacheaside.WithPrefix(prefix(t)), cacheaside.WithTTL(time.Minute)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func load[T any](t testing.TB, c *cacheaside.Cache[T], key string, v T) {
	t.Helper()
	if _, err := c.GetOrLoad(context.Background(), key, func(context.Context) (T, error) { return v, nil }); err != nil {
		t.Fatal(err)
	}
}

func cached[T any](t testing.TB, c *cacheaside.Cache[T], key string) bool {
	t.Helper()
	info, err := c.Inspect(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return info.Value
}

func register(t testing.TB, h *admin.Handler, name string, c admin.Cache) {
	t.Helper()
	if err := h.Register(name, c); err != nil {
		t.Fatal(err)
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, h http.Handler, method, target string, form url.Values, headers ...string) response {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req := httptest.NewRequest(method, target, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return response{rec.Code, rec.Header(), rec.Body.String()}
}

func get(t testing.TB, h http.Handler, target string) response {
	t.Helper()
	return do(t, h, http.MethodGet, target, nil)
}

func mustContain(t testing.TB, r response, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(r.body, p) {
			t.Fatalf("status %d: page does not contain %q:\n%s", r.status, p, r.body)
		}
	}
}

var tokenRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// confirm GETs the confirmation page of an invalidation and returns its form, token included.
func confirm(t testing.TB, h http.Handler, cache, kind, target string) url.Values {
	t.Helper()
	q := url.Values{"cache": {cache}, "kind": {kind}, "target": {target}}
	r := get(t, h, admin.DefaultPath+"invalidate?"+q.Encode())
	if r.status != http.StatusOK {
		t.Fatalf("confirmation page: %d\n%s", r.status, r.body)
	}
	mustContain(t, r, `method="post"`)
	m := tokenRE.FindStringSubmatch(r.body)
	if m == nil {
		t.Fatalf("no token in the confirmation form:\n%s", r.body)
	}
	q.Set("csrf", m[1])
	return q
}

func TestIndexListsCaches(t *testing.T) {
	store := memStore(t)
	users := newCache[user](t, store)
	counts := newCache[int](t, store, cacheaside.WithCodec(msgpack.Codec{}))
	load(t, users, "u1", user{Name: "Ada"})
	load(t, users, "u1", user{Name: "Ada"})
	h := admin.New()
	register(t, h, "users", users)
	register(t, h, "counts", counts)
	register(t, h, "broken", breakerOpen{users})

	r := get(t, h, admin.DefaultPath)
	if r.status != http.StatusOK {
		t.Fatalf("status %d", r.status)
	}
	mustContain(t, r, "<h2>users</h2>", "<h2>counts</h2>", "breaker closed", "breaker open", "admin_test.user",
		"msgpack", "*cacheaside.MemoryStore", "<dt>Requests</dt><dd>2</dd>", "<dt>Hit ratio</dt><dd>50.0%</dd>")
	if strings.Index(r.body, "<h2>broken</h2>") > strings.Index(r.body, "<h2>counts</h2>") {
		t.Fatal("caches are not listed by name")
	}
	if r.header.Get("Content-Security-Policy") == "" || r.header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("security headers missing: %v", r.header)
	}
	if got := get(t, admin.New(), admin.DefaultPath); got.status != http.StatusOK || !strings.Contains(got.body, "No cache is registered") {
		t.Fatalf("empty handler: %d %s", got.status, got.body)
	}
}

// breakerOpen is a cache whose breaker reports open.
type breakerOpen struct{ admin.Cache }

func (b breakerOpen) Stats() cacheaside.Stats {
	s := b.Cache.Stats()
	s.BreakerOpen = true
	return s
}

func TestKeyLookup(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t testing.TB) cacheaside.Store
	}{
		{"memory", func(t testing.TB) cacheaside.Store { return memStore(t) }},
		{"redis", func(t testing.TB) cacheaside.Store { s, _ := redisStore(t); return s }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := tc.store(t)
			c := newCache[user](t, store)
			load(t, c, "u1", user{Name: "Ada", Secret: secret})
			info, err := c.Inspect(context.Background(), "u1")
			if err != nil {
				t.Fatal(err)
			}
			hidden, shown := admin.New(), admin.New(admin.WithValues(true))
			register(t, hidden, "users", c)
			register(t, shown, "users", c)

			r := get(t, hidden, admin.DefaultPath+"key?cache=users&key=u1")
			if r.status != http.StatusOK {
				t.Fatalf("status %d\n%s", r.status, r.body)
			}
			mustContain(t, r, "<th>Hit</th><td>yes</td>", "<th>Lease held</th><td>no</td>", "<th>Codec</th><td>json</td>",
				"<th>Size</th><td>"+strconv.Itoa(info.Size)+" bytes</td>", "<th>Remaining TTL</th><td>", "hidden")
			if strings.Contains(r.body, secret) {
				t.Fatal("the value is shown without WithValues")
			}
			r = get(t, shown, admin.DefaultPath+"key?cache=users&key=u1")
			mustContain(t, r, secret, "&#34;name&#34;: &#34;Ada&#34;")

			// A load under way in another process: its lease is shown.
			if lk, err := store.GetOrLease(context.Background(), info.StoreKey+"-leased", "other", time.Minute); err != nil || !lk.Granted {
				t.Fatal(lk, err)
			}
			r = get(t, hidden, admin.DefaultPath+"key?cache=users&key=u1-leased")
			mustContain(t, r, "<th>Hit</th><td>no: a load is under way</td>", "<th>Lease held</th><td>yes, ")

			r = get(t, shown, admin.DefaultPath+"key?cache=users&key=absent")
			mustContain(t, r, "<th>Hit</th><td>no: a read would load it</td>", "<th>Stored value</th><td>no</td>")
		})
	}
}

// TestHostileInputEscaped: cache names, keys, patterns and values are text on every page,
// never markup.
func TestHostileInputEscaped(t *testing.T) {
	const evil = `"><script>alert(1)</script><img src=x onerror=alert(2)>`
	store := memStore(t)
	c := newCache[string](t, store)
	load(t, c, evil, evil)
	h := admin.New(admin.WithValues(true))
	register(t, h, evil, c)
	q := url.Values{"cache": {evil}, "key": {evil}}
	pages := []response{
		get(t, h, admin.DefaultPath),
		get(t, h, admin.DefaultPath+"key?"+q.Encode()),
		get(t, h, admin.DefaultPath+"invalidate?"+url.Values{"cache": {evil}, "kind": {"key"}, "target": {evil}}.Encode()),
		get(t, h, admin.DefaultPath+"invalidate?"+url.Values{"cache": {evil}, "kind": {"pattern"}, "target": {evil}}.Encode()),
		get(t, h, admin.DefaultPath+"key?"+url.Values{"cache": {evil + "x"}, "key": {evil}}.Encode()), // unknown cache: an error page naming it
	}
	for i, r := range pages {
		for _, bad := range []string{"<script>", "</script>", "<img"} {
			if strings.Contains(r.body, bad) {
				t.Fatalf("page %d (%d) renders %q as markup:\n%s", i, r.status, bad, r.body)
			}
		}
		if !strings.Contains(r.body, "&lt;script&gt;") {
			t.Fatalf("page %d (%d) does not show the hostile text escaped:\n%s", i, r.status, r.body)
		}
	}
	mustContain(t, pages[1], "<th>Hit</th><td>yes</td>") // the key was found: the page names it right
	// The form round-trips the hostile key exactly.
	form := confirm(t, h, evil, "key", evil)
	if r := do(t, h, http.MethodPost, admin.DefaultPath+"invalidate", form); r.status != http.StatusOK {
		t.Fatalf("invalidate: %d\n%s", r.status, r.body)
	}
	if cached(t, c, evil) {
		t.Fatal("the hostile key survived its invalidation")
	}
}

// TestMountedElsewhere: a handler at another path, in a mux, through a real server; and one
// under http.StripPrefix. Links and forms are relative, so both work.
func TestMountedElsewhere(t *testing.T) {
	c := newCache[user](t, memStore(t))
	load(t, c, "u1", user{Name: "Ada"})
	at := admin.New(admin.WithPath("/ops/cache/"))
	stripped := admin.New(admin.WithPath("/"))
	register(t, at, "users", c)
	register(t, stripped, "users", c)
	mux := http.NewServeMux()
	mux.Handle(at.Path(), at)
	mux.Handle("/inner/", http.StripPrefix("/inner", stripped))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, base := range []string{srv.URL + "/ops/cache/", srv.URL + "/inner/"} {
		index := fetch(t, base)
		if !strings.Contains(index, "<h2>users</h2>") || !strings.Contains(index, `action="key"`) {
			t.Fatalf("%s: index:\n%s", base, index)
		}
		// Follow the page's own relative form action, as a browser does.
		u, _ := url.Parse(base)
		keyURL := u.ResolveReference(&url.URL{Path: "key", RawQuery: "cache=users&key=u1"})
		if page := fetch(t, keyURL.String()); !strings.Contains(page, "<th>Hit</th><td>yes</td>") {
			t.Fatalf("%s: key page:\n%s", keyURL, page)
		}
	}
	if r := get(t, at, admin.DefaultPath); r.status != http.StatusNotFound {
		t.Fatalf("the default path answered %d on a handler at another path", r.status)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("WithPath without a final slash was accepted")
		}
	}()
	admin.New(admin.WithPath("/ops"))
}

func fetch(t testing.TB, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", u, resp.StatusCode, b)
	}
	return string(b)
}

func TestRegister(t *testing.T) {
	c := newCache[user](t, memStore(t))
	h := admin.New()
	register(t, h, "users", c)
	if h.Register("users", c) == nil || h.Register("", c) == nil || h.Register("x", nil) == nil {
		t.Fatal("a duplicate, empty or nil registration was accepted")
	}
	h.Unregister("users")
	if r := get(t, h, admin.DefaultPath+"key?cache=users&key=k"); r.status != http.StatusNotFound {
		t.Fatalf("an unregistered cache answered %d", r.status)
	}
	register(t, h, "users", c)
}

// TestConcurrentRegistration: caches come and go while the page is served (run with -race).
func TestConcurrentRegistration(t *testing.T) {
	store := memStore(t)
	c := newCache[user](t, store)
	load(t, c, "u1", user{Name: "Ada"})
	h := admin.New()
	register(t, h, "users", c)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			name := "extra-" + strconv.Itoa(g)
			for range 50 {
				if err := h.Register(name, c); err != nil {
					t.Error(err)
					return
				}
				h.Unregister(name)
			}
		})
		wg.Go(func() {
			for range 20 {
				if r := get(t, h, admin.DefaultPath); r.status != http.StatusOK {
					t.Errorf("index: %d", r.status)
				}
				if r := get(t, h, admin.DefaultPath+"key?cache=users&key=u1"); r.status != http.StatusOK {
					t.Errorf("key: %d", r.status)
				}
			}
		})
	}
	wg.Wait()
}
