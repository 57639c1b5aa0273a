package bench

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/redis/go-redis/v9"
)

// waiterInstances x waiterGoroutines callers of one cold key, whose load takes waiterLoad:
// one instance wins the lease and loads; the others wait for its fill.
const (
	waiterInstances  = 8
	waiterGoroutines = 25
	waiterLoad       = 50 * time.Millisecond
)

// clusterAddrs returns the Cluster's seed addresses, or skips (fails in CI) without them.
func clusterAddrs(tb testing.TB) []string {
	tb.Helper()
	env := os.Getenv("CACHEASIDE_CLUSTER_ADDRS")
	if env == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatal("CACHEASIDE_CLUSTER_ADDRS is not set; CI must run this")
		}
		tb.Skip("CACHEASIDE_CLUSTER_ADDRS is not set")
	}
	return strings.Split(env, ",")
}

// BenchmarkLeaseWaiters: 8 instances on separate clients, 25 goroutines each, one cold key
// per op, a 50 ms loader. Reports the callers' p99 and max latency minus the load time: how
// late the callers that waited for another instance's fill learn of it (the lease waiters
// are woken by the fill; polling with backoff is the fallback).
func BenchmarkLeaseWaiters(b *testing.B) {
	b.Run("standalone", func(b *testing.B) {
		needRedis(b)
		var caches []*cacheaside.Cache[User]
		var p string
		for i := range waiterInstances {
			client := newClient(b)
			if i == 0 {
				p = prefix(b, client)
			}
			caches = append(caches, openWaiterCache(b, cacheaside.NewRedisStore(client), p))
		}
		runWaiters(b, caches)
	})
	b.Run("cluster", func(b *testing.B) {
		addrs := clusterAddrs(b)
		var caches []*cacheaside.Cache[User]
		p := "bench-waiters-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
		for range waiterInstances {
			client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true, PoolSize: 64})
			b.Cleanup(func() { client.Close() })
			caches = append(caches, openWaiterCache(b, cacheaside.NewRedisStore(client), p))
		}
		b.Cleanup(func() {
			client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
			defer client.Close()
			_ = client.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
				keys, _ := c.Keys(ctx, p+"*").Result()
				for _, k := range keys {
					c.Unlink(ctx, k)
				}
				return nil
			})
		})
		runWaiters(b, caches)
	})
}

func openWaiterCache(b *testing.B, store cacheaside.Store, p string) *cacheaside.Cache[User] {
	c, err := cacheaside.New[User](store, append(patient, cacheaside.WithPrefix(p), cacheaside.WithTTL(time.Minute))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func runWaiters(b *testing.B, caches []*cacheaside.Cache[User]) {
	ctx := context.Background()
	// Warm every instance (connections, scripts) on a key of its own.
	for i, c := range caches {
		if _, err := c.GetOrLoad(ctx, "warm"+strconv.Itoa(i), func(context.Context) (User, error) { return newUser(i), nil }); err != nil {
			b.Fatal(err)
		}
	}
	var lat []time.Duration
	var mu sync.Mutex
	var loads atomic.Int64
	n := 0
	for b.Loop() {
		key := "cold" + strconv.Itoa(n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, c := range caches {
			for range waiterGoroutines {
				wg.Go(func() {
					<-start
					t0 := time.Now()
					u, err := c.GetOrLoad(ctx, key, func(context.Context) (User, error) {
						loads.Add(1)
						time.Sleep(waiterLoad)
						return newUser(n), nil
					})
					d := time.Since(t0)
					if err != nil || u.ID != int64(n) {
						b.Errorf("%s: %+v, %v", key, u, err)
					}
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				})
			}
		}
		close(start)
		wg.Wait()
		n++
	}
	slices.Sort(lat)
	over := func(q float64) float64 {
		d := lat[min(len(lat)-1, int(q*float64(len(lat))))] - waiterLoad
		return float64(d) / float64(time.Millisecond)
	}
	b.ReportMetric(over(0.50), "p50-over-load-ms")
	b.ReportMetric(over(0.99), "p99-over-load-ms")
	b.ReportMetric(float64(lat[len(lat)-1]-waiterLoad)/float64(time.Millisecond), "max-over-load-ms")
	b.ReportMetric(float64(loads.Load())/float64(n), "loader-calls/op")
	b.ReportMetric(0, "ns/op")
}
