package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// User is the value every benchmark caches: a small record, about 100 bytes of JSON.
type User struct {
	ID     int64  `json:"id" msgpack:"id"`
	Name   string `json:"name" msgpack:"name"`
	Email  string `json:"email" msgpack:"email"`
	Age    int    `json:"age" msgpack:"age"`
	Active bool   `json:"active" msgpack:"active"`
}

func newUser(i int) User {
	s := strconv.Itoa(i)
	return User{ID: int64(i), Name: "user-" + s, Email: "user" + s + "@example.com", Age: 20 + i%50, Active: i%2 == 0}
}

func redisAddr() string {
	if a := os.Getenv("CACHEASIDE_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// needRedis skips when no Redis answers, and fails instead in CI (CI=true).
func needRedis(tb testing.TB) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", redisAddr(), time.Second)
	if err == nil {
		conn.Close()
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("Redis at %s is not answering (%v); CI must run this", redisAddr(), err)
	}
	tb.Skipf("Redis at %s is not answering: %v", redisAddr(), err)
}

// newClient returns a client of its own (another process, as far as Redis can tell), with
// socket deadlines from contexts, closed at the end of tb. Every implementation gets the same
// client options.
func newClient(tb testing.TB) *redis.Client {
	tb.Helper()
	needRedis(tb)
	c := redis.NewClient(&redis.Options{Addr: redisAddr(), ContextTimeoutEnabled: true, PoolSize: 64})
	tb.Cleanup(func() { c.Close() })
	// Dial the connections the benchmarks will use, as a running service has them: a burst
	// on brand-new clients measures the dials, not the cache.
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() { c.Ping(context.Background()) })
	}
	wg.Wait()
	return c
}

// prefix returns a key prefix of its own, whose keys are deleted at the end of tb (the Redis
// is shared: never FLUSHALL).
func prefix(tb testing.TB, c *redis.Client) string {
	b := make([]byte, 6)
	rand.Read(b)
	p := "bench-" + hex.EncodeToString(b) + ":"
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, p+"*", 1000).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 1000 {
				c.Unlink(ctx, batch...)
				batch = batch[:0]
			}
		}
		if len(batch) > 0 {
			c.Unlink(ctx, batch...)
		}
	})
	return p
}

// hitKeys is how many distinct keys the hit benchmarks cycle through.
const hitKeys = 1024

func keyOf(i int) string { return "k" + strconv.Itoa(i) }

// redisParallelism is goroutines per GOMAXPROCS in the parallel Redis cases: a service has
// many requests waiting on Redis at once, not one per core.
const redisParallelism = 16
