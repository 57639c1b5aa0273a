package cacheaside

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// backend is a store under test. Each newStore call returns a store on a client of its own,
// standing for another process sharing the same server; the memory backend returns one shared
// MemoryStore (instances in one process).
type backend struct {
	name     string
	real     bool // a real redis-server (standalone or cluster)
	cluster  bool
	newStore func(t testing.TB) Store
	// client returns a raw client to the server, for tests that poke at stored keys.
	client func(t testing.TB) redis.UniversalClient
	// advance lets d pass for the store's expiries: miniredis's clock only moves when told.
	advance func(d time.Duration)
	// opts are added to every cache built on this backend.
	opts []Option
}

// inCI reports whether tests run in CI, where a Redis test must not skip.
func inCI() bool { return os.Getenv("CI") == "true" }

func redisAddr() string {
	if a := os.Getenv("CACHEASIDE_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

func clusterAddrs() []string {
	if a := os.Getenv("CACHEASIDE_CLUSTER_ADDRS"); a != "" {
		return strings.Split(a, ",")
	}
	return []string{"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}
}

// needServer skips (fails in CI) when nothing answers at addr.
func needServer(t testing.TB, what, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
		return
	}
	if inCI() {
		t.Fatalf("%s at %s is not answering (%v); CI must run this test", what, addr, err)
	}
	t.Skipf("%s at %s is not answering: %v", what, addr, err)
}

func memoryBackend() backend {
	var shared *MemoryStore
	return backend{
		name: "memory",
		newStore: func(t testing.TB) Store {
			if shared == nil {
				shared = NewMemoryStore()
				s := shared
				t.Cleanup(func() { s.Close() })
			}
			return shared
		},
	}
}

func miniredisBackend() backend {
	var srv *miniredis.Miniredis
	start := func(t testing.TB) *miniredis.Miniredis {
		if srv == nil {
			srv = miniredis.RunT(t)
		}
		return srv
	}
	mk := func(t testing.TB) redis.UniversalClient {
		c := redis.NewClient(&redis.Options{Addr: start(t).Addr()})
		t.Cleanup(func() { c.Close() })
		return c
	}
	return backend{
		name:     "miniredis",
		newStore: func(t testing.TB) Store { return NewRedisStore(mk(t)) },
		client:   mk,
		// miniredis builds a Lua state per script call: under -race it answers slower than
		// the default store timeout.
		opts: slowMachine,
		advance: func(d time.Duration) {
			time.Sleep(d)
			if srv != nil {
				srv.FastForward(d)
			}
		},
	}
}

func redisBackend() backend {
	mk := func(t testing.TB) redis.UniversalClient {
		needServer(t, "Redis", redisAddr())
		c := redis.NewClient(&redis.Options{Addr: redisAddr()})
		t.Cleanup(func() { c.Close() })
		return c
	}
	return backend{
		name:     "redis",
		real:     true,
		newStore: func(t testing.TB) Store { return NewRedisStore(mk(t)) },
		client:   mk,
	}
}

func clusterBackend() backend {
	mk := func(t testing.TB) redis.UniversalClient {
		addrs := clusterAddrs()
		needServer(t, "Redis Cluster", addrs[0])
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { c.Close() })
		return c
	}
	return backend{
		name:     "cluster",
		real:     true,
		cluster:  true,
		newStore: func(t testing.TB) Store { return NewRedisStore(mk(t)) },
		client:   mk,
	}
}

// forEachBackend runs fn against every store: memory, miniredis, the real Redis and the real
// Cluster, each in a subtest with fresh state.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, mk := range []func() backend{memoryBackend, miniredisBackend, redisBackend, clusterBackend} {
		b := mk()
		if b.advance == nil {
			b.advance = time.Sleep
		}
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// forEachRedis is forEachBackend without the memory store.
func forEachRedis(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, mk := range []func() backend{miniredisBackend, redisBackend, clusterBackend} {
		b := mk()
		if b.advance == nil {
			b.advance = time.Sleep
		}
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// forEachReal runs fn against the real Redis and the real Cluster only.
func forEachReal(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, mk := range []func() backend{redisBackend, clusterBackend} {
		b := mk()
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// testPrefix is a key prefix no other test (or CI run) shares.
func testPrefix(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "cacheaside-test:" + strings.ReplaceAll(t.Name(), "/", ":") + ":" + hex.EncodeToString(b[:]) + ":"
}

// newTestCache builds a Cache[T] on store with a fresh prefix unless opts set one, closed at
// cleanup.
func newTestCache[T any](t testing.TB, store Store, opts ...Option) *Cache[T] {
	t.Helper()
	c, err := New[T](store, append([]Option{WithPrefix(testPrefix(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// instances builds n caches of T sharing prefix, each on its own store from b (its own client:
// another process in effect).
func instances[T any](t testing.TB, b backend, n int, opts ...Option) []*Cache[T] {
	t.Helper()
	prefix := testPrefix(t)
	cs := make([]*Cache[T], n)
	for i := range cs {
		cs[i] = backendCache[T](t, b, append([]Option{WithPrefix(prefix)}, opts...)...)
	}
	return cs
}

// backendCache builds one cache of T on a new store of b, with b's options before opts.
func backendCache[T any](t testing.TB, b backend, opts ...Option) *Cache[T] {
	t.Helper()
	return newTestCache[T](t, b.newStore(t), append(append([]Option{}, b.opts...), opts...)...)
}

// within fails the test if fn does not return in d: a generous bound that catches a hang,
// never a timing assertion.
func within(t testing.TB, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
	}
}

func bg() context.Context { return context.Background() }

// slowMachine are options for tests that count loader calls exactly under heavy concurrency:
// under -race on two cores a store operation can wait longer than the default store timeout
// for a CPU, and a timed-out lookup rightly fails open to the loader.
var slowMachine = []Option{WithStoreTimeout(2 * time.Second), WithConnectTimeout(5 * time.Second)}
