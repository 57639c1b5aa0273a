package userservice_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/examples/userservice"
)

// Real servers: PostgreSQL (trust auth, database test) and Redis. Tests on them skip when
// nothing answers, and fail instead in CI (CI=true).
func postgresURL() string {
	if u := os.Getenv("USERSERVICE_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

func redisURL() string {
	if a := os.Getenv("CACHEASIDE_REDIS_ADDR"); a != "" {
		return "redis://" + a + "/0"
	}
	return "redis://127.0.0.1:6379/0"
}

func needServer(t *testing.T, what, rawURL string) {
	t.Helper()
	addr := rawURL[strings.Index(rawURL, "//")+2:]
	if i := strings.LastIndex(addr, "@"); i >= 0 {
		addr = addr[i+1:]
	}
	addr, _, _ = strings.Cut(addr, "/")
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s at %s is not answering (%v); CI must run this test", what, addr, err)
	}
	t.Skipf("%s at %s is not answering: %v", what, addr, err)
}

func unique(t *testing.T) string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// backends runs fn once per setup: the embedded defaults, SQLite with the cache in process
// memory, and the real PostgreSQL + Redis.
func backends(t *testing.T, fn func(t *testing.T, cfg userservice.Config)) {
	t.Run("embedded", func(t *testing.T) {
		fn(t, userservice.Config{})
	})
	t.Run("sqlite+memory", func(t *testing.T) {
		fn(t, userservice.Config{MemoryCache: true})
	})
	t.Run("postgres+redis", func(t *testing.T) {
		needServer(t, "PostgreSQL", postgresURL())
		needServer(t, "Redis", redisURL())
		fn(t, userservice.Config{DatabaseURL: postgresURL(), RedisURL: redisURL()})
	})
}

type client struct {
	t   *testing.T
	url string
	svc *userservice.Service
}

// start runs the service on cfg with a table and cache prefix of its own, dropped at the end.
func start(t *testing.T, cfg userservice.Config) *client {
	t.Helper()
	id := unique(t)
	cfg.Table = "users_test_" + id
	cfg.CachePrefix = "userservice-test-" + id + ":"
	cfg.Ephemeral = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := userservice.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(func() {
		srv.Close()
		if err := svc.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &client{t: t, url: srv.URL, svc: svc}
}

func (c *client) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, b
}

func (c *client) user(method, path string, body any, wantCode int) userservice.User {
	c.t.Helper()
	code, b := c.do(method, path, body)
	if code != wantCode {
		c.t.Fatalf("%s %s: status %d, want %d (%s)", method, path, code, wantCode, b)
	}
	var u userservice.User
	if code < 300 && len(b) > 0 {
		if err := json.Unmarshal(b, &u); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return u
}

func TestCRUD(t *testing.T) {
	backends(t, func(t *testing.T, cfg userservice.Config) {
		c := start(t, cfg)
		u := c.user("PUT", "/users/7", userservice.UserInput{Name: "Ada", Email: "ada@example.com"}, http.StatusCreated)
		if u.ID != 7 || u.Name != "Ada" || u.Version != 1 {
			t.Fatalf("created %+v", u)
		}
		if got := c.user("GET", "/users/7", nil, http.StatusOK); got != u {
			t.Fatalf("read %+v, want %+v", got, u)
		}
		u2 := c.user("PUT", "/users/7", userservice.UserInput{Name: "Ada Lovelace", Email: "ada@example.com"}, http.StatusOK)
		if u2.Version != 2 || u2.Name != "Ada Lovelace" {
			t.Fatalf("updated %+v", u2)
		}
		// Read after write: the cached version 1 was invalidated by the PUT.
		if got := c.user("GET", "/users/7", nil, http.StatusOK); got != u2 {
			t.Fatalf("read after write %+v, want %+v", got, u2)
		}
		c.user("DELETE", "/users/7", nil, http.StatusNoContent)
		c.user("GET", "/users/7", nil, http.StatusNotFound)
		c.user("DELETE", "/users/7", nil, http.StatusNotFound)
	})
}

func TestNotFoundIsCached(t *testing.T) {
	backends(t, func(t *testing.T, cfg userservice.Config) {
		c := start(t, cfg)
		before := c.svc.Stats()
		c.user("GET", "/users/404", nil, http.StatusNotFound)
		c.user("GET", "/users/404", nil, http.StatusNotFound)
		c.user("GET", "/users/404", nil, http.StatusNotFound)
		if q := c.svc.Stats().Sub(before).DBQueries; q != 1 {
			t.Fatalf("3 reads of a missing user made %d database queries, want 1 (the not-found is cached)", q)
		}
		// Creating the user invalidates the cached not-found.
		c.user("PUT", "/users/404", userservice.UserInput{Name: "Found"}, http.StatusCreated)
		if got := c.user("GET", "/users/404", nil, http.StatusOK); got.Name != "Found" {
			t.Fatalf("read after create: %+v", got)
		}
	})
}

func TestHitsDoNotQueryTheDatabase(t *testing.T) {
	backends(t, func(t *testing.T, cfg userservice.Config) {
		c := start(t, cfg)
		if err := c.svc.Seed(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
		before := c.svc.Stats()
		for range 5 {
			if got := c.user("GET", "/users/3", nil, http.StatusOK); got.Name != "user-3" {
				t.Fatalf("read %+v", got)
			}
		}
		d := c.svc.Stats().Sub(before)
		if d.DBQueries != 1 || d.Reads != 5 || d.HitRatio() != 0.8 {
			t.Fatalf("5 reads: %+v, want 1 query and hit ratio 0.8", d)
		}
	})
}

func TestBatch(t *testing.T) {
	backends(t, func(t *testing.T, cfg userservice.Config) {
		c := start(t, cfg)
		if err := c.svc.Seed(context.Background(), 5); err != nil {
			t.Fatal(err)
		}
		batch := func(wantQueries, wantLoads int64) userservice.BatchResponse {
			t.Helper()
			before := c.svc.Stats()
			code, b := c.do("GET", "/users?ids=3,1,99,2,1", nil)
			if code != http.StatusOK {
				t.Fatalf("batch: status %d (%s)", code, b)
			}
			var resp userservice.BatchResponse
			if err := json.Unmarshal(b, &resp); err != nil {
				t.Fatal(err)
			}
			if len(resp.Users) != 3 || resp.Users[0].ID != 3 || resp.Users[1].ID != 1 || resp.Users[2].ID != 2 ||
				len(resp.Missing) != 1 || resp.Missing[0] != 99 {
				t.Fatalf("batch: %s, want users 3, 1, 2 and missing 99", b)
			}
			d := c.svc.Stats().Sub(before)
			if d.DBQueries != wantQueries || d.DBLoads != wantLoads {
				t.Fatalf("batch: %d queries for %d users, want %d for %d", d.DBQueries, d.DBLoads, wantQueries, wantLoads)
			}
			return resp
		}
		batch(1, 4) // one query for the four distinct ids
		batch(0, 0) // all cached, 99 as not found
		c.user("GET", "/users/2", nil, http.StatusOK)
		c.user("PUT", "/users/2", userservice.UserInput{Name: "two"}, http.StatusOK)
		resp := batch(1, 1) // only the invalidated user is loaded
		if resp.Users[2].Name != "two" || resp.Users[2].Version != 2 {
			t.Fatalf("batch after write: %+v", resp.Users[2])
		}

		code, _ := c.do("GET", "/users?ids="+strings.Repeat("1,", userservice.MaxBatch)+"1", nil)
		if code != http.StatusBadRequest {
			t.Fatalf("oversized batch: status %d, want 400", code)
		}
	})
}

// Readers and writers race on a few users; every read that starts after a PUT returned must
// see at least that PUT's version.
func TestReadAfterWriteUnderConcurrency(t *testing.T) {
	backends(t, func(t *testing.T, cfg userservice.Config) {
		c := start(t, cfg)
		const users, writes, readers = 4, 40, 8
		if err := c.svc.Seed(context.Background(), users); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		committed := make(map[int]int64) // user -> highest version a PUT returned
		stop := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, readers)
		for r := range readers {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					id := 1 + (r+i)%users
					mu.Lock()
					floor := committed[id]
					mu.Unlock()
					code, b := c.do("GET", fmt.Sprintf("/users/%d", id), nil)
					var u userservice.User
					if code != http.StatusOK || json.Unmarshal(b, &u) != nil {
						errs <- fmt.Errorf("GET user %d: %d %s", id, code, b)
						return
					}
					if u.Version < floor {
						errs <- fmt.Errorf("stale read: user %d version %d after a PUT returned version %d", id, u.Version, floor)
						return
					}
				}
			})
		}
		for i := range writes {
			id := 1 + i%users
			u := c.user("PUT", fmt.Sprintf("/users/%d", id), userservice.UserInput{Name: fmt.Sprint("w", i)}, http.StatusOK)
			mu.Lock()
			committed[id] = max(committed[id], u.Version)
			mu.Unlock()
			if got := c.user("GET", fmt.Sprintf("/users/%d", id), nil, http.StatusOK); got.Version < u.Version {
				t.Fatalf("read after write: version %d, want >= %d", got.Version, u.Version)
			}
		}
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestBadRequests(t *testing.T) {
	c := start(t, userservice.Config{})
	for _, tc := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/users/abc", nil},
		{"GET", "/users/0", nil},
		{"PUT", "/users/1", userservice.UserInput{Name: " "}},
		{"PUT", "/users/1", "not an object"},
		{"GET", "/users?ids=1,x", nil},
		{"GET", "/users", nil},
	} {
		if code, b := c.do(tc.method, tc.path, tc.body); code != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, want 400 (%s)", tc.method, tc.path, code, b)
		}
	}
}

func TestWithoutCacheEveryReadQueries(t *testing.T) {
	c := start(t, userservice.Config{NoCache: true})
	if err := c.svc.Seed(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	before := c.svc.Stats()
	for range 3 {
		c.user("GET", "/users/1", nil, http.StatusOK)
	}
	c.user("GET", "/users/9", nil, http.StatusNotFound)
	if d := c.svc.Stats().Sub(before); d.DBQueries != 4 || d.HitRatio() != 0 {
		t.Fatalf("without cache: %+v, want 4 queries", d)
	}
}

func TestMetrics(t *testing.T) {
	c := start(t, userservice.Config{})
	c.user("GET", "/users/1", nil, http.StatusNotFound)
	code, b := c.do("GET", "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`userservice_db_queries_total{kind="read"} 1`,
		`userservice_http_requests_total{code="404",route="GET /users/{id}"} 1`,
		`userservice_user_reads_total 1`,
		`cacheaside_requests_total{cache="users",group="",result="miss"} 1`,
		`cacheaside_loads_total{cache="users",group="",outcome="not_found"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// The URLs may hold passwords: errors must not quote them.
func TestURLsAreNotLeaked(t *testing.T) {
	ctx := context.Background()
	_, err := userservice.New(ctx, userservice.Config{RedisURL: "redis://:s3cret@[bad"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad REDIS_URL: err %v", err)
	}
	_, err = userservice.New(ctx, userservice.Config{DatabaseURL: "postgres://u:s3cret@h:notaport/db"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad DATABASE_URL: err %v", err)
	}
}

// On PostgreSQL the repository's writes go through the transactional outbox: each write's
// invalidation is delivered right after its commit (Do), and no row is left behind.
func TestWritesGoThroughTheOutboxOnPostgres(t *testing.T) {
	needServer(t, "PostgreSQL", postgresURL())
	needServer(t, "Redis", redisURL())
	c := start(t, userservice.Config{DatabaseURL: postgresURL(), RedisURL: redisURL()})
	box := c.svc.Outbox()
	if box == nil {
		t.Fatal("no outbox on PostgreSQL")
	}
	c.user("PUT", "/users/7", userservice.UserInput{Name: "a"}, http.StatusCreated)
	c.user("GET", "/users/7", nil, http.StatusOK) // cached
	u := c.user("PUT", "/users/7", userservice.UserInput{Name: "b"}, http.StatusOK)
	if got := c.user("GET", "/users/7", nil, http.StatusOK); got.Version != u.Version || got.Name != "b" {
		t.Fatalf("read after write: %+v, want %+v", got, u)
	}
	c.do("DELETE", "/users/7", nil)
	c.user("GET", "/users/7", nil, http.StatusNotFound)
	if s := box.Stats(); s.Deliveries != 3 {
		t.Fatalf("outbox deliveries = %d, want 3 (two PUTs and a DELETE)", s.Deliveries)
	}
}
