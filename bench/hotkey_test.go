package bench

import (
	"context"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
)

// hotKeyRedis returns a client to the real Redis (CACHEASIDE_REDIS_ADDR, default
// 127.0.0.1:6379), or skips the benchmark when none answers.
func hotKeyRedis(b *testing.B) *redis.Client {
	b.Helper()
	addr := os.Getenv("CACHEASIDE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		b.Skipf("Redis at %s is not answering: %v", addr, err)
	}
	conn.Close()
	c := redis.NewClient(&redis.Options{Addr: addr})
	b.Cleanup(func() { c.Close() })
	return c
}

const (
	hotReaders  = 1000
	hotPace     = 50 * time.Millisecond // each reader reads once per pace: 20,000 reads/s in all
	hotTTL      = 2 * time.Second
	hotLoadTime = 50 * time.Millisecond
)

// hotKeyCase is one implementation under the hot-key workload: open returns its read of the
// hot key, loading with load on a miss or a refresh.
type hotKeyCase struct {
	name string
	open func(b *testing.B, client *redis.Client, prefix string, load func(context.Context) (string, error)) func(context.Context) (string, error)
}

// ourHotKey is cacheaside over the real Redis, with opts on top of the TTL and no jitter.
func ourHotKey(opts ...cacheaside.Option) func(*testing.B, *redis.Client, string, func(context.Context) (string, error)) func(context.Context) (string, error) {
	return func(b *testing.B, client *redis.Client, prefix string, load func(context.Context) (string, error)) func(context.Context) (string, error) {
		opts := append([]cacheaside.Option{cacheaside.WithPrefix(prefix), cacheaside.WithTTL(hotTTL), cacheaside.WithTTLJitter(0)}, opts...)
		c, err := cacheaside.New[string](cacheaside.NewRedisStore(client), opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_, _ = c.InvalidatePattern(context.Background(), "*")
			c.Close()
		})
		return func(ctx context.Context) (string, error) { return c.GetOrLoad(ctx, "hot", load) }
	}
}

// sturdycHotKey is sturdyc with opts, in process memory: sturdyc keeps values in memory (its
// optional distributed storage is an interface the user implements, left out here), so its
// readers never touch Redis and its latencies are not comparable with the Redis rows; its
// loader calls and slow reads are.
func sturdycHotKey(opts ...sturdyc.Option) func(*testing.B, *redis.Client, string, func(context.Context) (string, error)) func(context.Context) (string, error) {
	return func(_ *testing.B, _ *redis.Client, _ string, load func(context.Context) (string, error)) func(context.Context) (string, error) {
		c := sturdyc.New[string](1024, 1, hotTTL, 10, opts...)
		return func(ctx context.Context) (string, error) { return c.GetOrFetch(ctx, "hot", load) }
	}
}

// hotKeyCases: ours plain, with early refresh (XFetch, beta 1) and with stale-while-revalidate;
// go-redis/cache's Once on the same Redis (no early refresh: its singleflight makes one load
// per expiry per process, the readers wait for it); sturdyc plain (one load per expiry, the
// readers wait) and with its early refreshes (a background refresh when the key is read between
// half and three quarters of its TTL, a synchronous one from its TTL: the closest match to
// ours; retries of a failed refresh after 100 ms, doubling).
var hotKeyCases = []hotKeyCase{
	{"ours-plain", ourHotKey()},
	{"ours-early-refresh", ourHotKey(cacheaside.WithEarlyRefresh(1))},
	{"ours-stale-while-revalidate", ourHotKey(cacheaside.WithStaleWhileRevalidate(hotTTL))},
	{"go-redis-cache", func(_ *testing.B, client *redis.Client, prefix string, load func(context.Context) (string, error)) func(context.Context) (string, error) {
		c := gocache.New(&gocache.Options{Redis: client})
		do := func(item *gocache.Item) (any, error) { return load(item.Context()) }
		return func(ctx context.Context) (string, error) {
			var v string
			err := c.Once(&gocache.Item{Ctx: ctx, Key: prefix + "hot", Value: &v, TTL: hotTTL, Do: do})
			return v, err
		}
	}},
	{"sturdyc-plain", sturdycHotKey()},
	{"sturdyc-early-refresh", sturdycHotKey(sturdyc.WithEarlyRefreshes(hotTTL/2, hotTTL*3/4, hotTTL, 100*time.Millisecond))},
}

// BenchmarkHotKeyExpiry reads one hot key from 1000 goroutines, each like a request handler
// reading it every 50 ms (20,000 reads/s, within what two cores serve), while it expires
// again and again (TTL 2 s, a 50 ms loader, no TTL jitter), against the real Redis (sturdyc:
// process memory). One op is one read. It reports the loader calls (in all and per expiry),
// the readers' latency, and the reads per expiry that took at least the loader's time
// (slow-reads/expiry): without early refresh, every reader that reads during the reload at
// each expiry waits for it; with it, the value is reloaded in the background before it expires
// (ours: about 50ms*ln(reads per 50 ms) = 350 ms before, at this rate), and slow reads are only
// the machine's. Run it long enough to cross several expiries: -benchtime=200000x is about
// 10 s, five expiries.
func BenchmarkHotKeyExpiry(b *testing.B) {
	client := hotKeyRedis(b)
	for _, tc := range hotKeyCases {
		b.Run(tc.name, func(b *testing.B) {
			prefix := "cacheaside-bench:hotkey:" + tc.name + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
			b.Cleanup(func() { client.Del(context.Background(), prefix+"hot") }) // go-redis/cache's key
			var loads atomic.Int64
			load := func(context.Context) (string, error) {
				loads.Add(1)
				time.Sleep(hotLoadTime)
				return "a hot value", nil
			}
			get := tc.open(b, client, prefix, load)
			ctx := context.Background()
			if _, err := get(ctx); err != nil {
				b.Fatal(err)
			}
			loads.Store(0)

			var mu sync.Mutex
			var lat []time.Duration
			g := runtime.GOMAXPROCS(0)
			b.SetParallelism((hotReaders + g - 1) / g)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				time.Sleep(rand.N(hotPace)) // readers spread out over the pace
				for pb.Next() {
					time.Sleep(hotPace)
					t0 := time.Now()
					if v, err := get(ctx); err != nil || v != "a hot value" {
						b.Errorf("%q, %v", v, err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			if len(lat) == 0 {
				return
			}
			slices.Sort(lat)
			expiries := float64(elapsed) / float64(hotTTL)
			slow := len(lat) - sort.Search(len(lat), func(i int) bool { return lat[i] >= hotLoadTime })
			b.ReportMetric(float64(slow)/expiries, "slow-reads/expiry")
			b.ReportMetric(float64(loads.Load()), "loads")
			b.ReportMetric(float64(loads.Load())/expiries, "loads/expiry")
			b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
			b.ReportMetric(float64(lat[len(lat)*999/1000]), "p99.9-ns")
			b.ReportMetric(float64(lat[len(lat)-1]), "max-ns")
		})
	}
}
