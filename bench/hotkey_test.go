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
	"github.com/redis/go-redis/v9"
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

// BenchmarkHotKeyExpiry reads one hot key from 1000 goroutines, each like a request handler
// reading it every 50 ms (20,000 reads/s, within what two cores serve), while it expires
// again and again (TTL 2 s, a 50 ms loader, no TTL jitter), against the real Redis. One op is
// one read. It reports the loader calls (in all and per expiry), the readers' latency, and
// the reads per expiry that took at least the loader's time (slow-reads/expiry): without
// early refresh, every reader that reads during the reload at each expiry waits for it; with
// it, the value is reloaded in the background before it expires (about
// 50ms*ln(reads per 50 ms) = 350 ms before, at this rate), and slow reads are only the
// machine's. Run it long enough to cross many expiries: -benchtime=30s.
func BenchmarkHotKeyExpiry(b *testing.B) {
	client := hotKeyRedis(b)
	cases := []struct {
		name string
		opts []cacheaside.Option
	}{
		{"plain", nil},
		{"early-refresh", []cacheaside.Option{cacheaside.WithEarlyRefresh(1)}},
		{"stale-while-revalidate", []cacheaside.Option{cacheaside.WithStaleWhileRevalidate(hotTTL)}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			prefix := "cacheaside-bench:hotkey:" + tc.name + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
			opts := append([]cacheaside.Option{cacheaside.WithPrefix(prefix), cacheaside.WithTTL(hotTTL), cacheaside.WithTTLJitter(0)}, tc.opts...)
			c, err := cacheaside.New[string](cacheaside.NewRedisStore(client), opts...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				_, _ = c.InvalidatePattern(context.Background(), "*")
				c.Close()
			})
			var loads atomic.Int64
			load := func(context.Context) (string, error) {
				loads.Add(1)
				time.Sleep(hotLoadTime)
				return "a hot value", nil
			}
			ctx := context.Background()
			if _, err := c.GetOrLoad(ctx, "hot", load); err != nil {
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
					if _, err := c.GetOrLoad(ctx, "hot", load); err != nil {
						b.Error(err)
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
