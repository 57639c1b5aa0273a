package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	gocache "github.com/go-redis/cache/v9"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
)

// getter is one implementation's read of key i, which must be a hit.
type getter func(ctx context.Context, i int) (User, error)

// runHit runs get serially and in parallel over hitKeys keys. calls, if not nil, counts the
// loader calls of an implementation that fell back to its loader.
func runHit(b *testing.B, parallelism int, get getter, calls *atomic.Int64) {
	ctx := context.Background()
	check := func(u User, err error, i int) {
		if err != nil || u.ID != int64(i) {
			b.Fatalf("key %d: %+v, %v", i, u, err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		if calls != nil {
			calls.Store(0)
			defer reportFallbacks(b, calls)
		}
		i := 0
		cpu := processCPU()
		for b.Loop() {
			k := i % hitKeys
			u, err := get(ctx, k)
			check(u, err, k)
			i++
		}
		reportCPU(b, cpu)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		if calls != nil {
			calls.Store(0)
			defer reportFallbacks(b, calls)
		}
		b.SetParallelism(parallelism)
		// Each goroutine starts at its own offset: goroutines reading the same key at the same
		// moment would share one round trip in the implementations that coalesce (ours,
		// go-redis/cache's singleflight), which is not what a hit costs.
		var goroutines atomic.Int64
		cpu := processCPU()
		defer reportCPU(b, cpu)
		b.RunParallel(func(pb *testing.PB) {
			i := int(goroutines.Add(1)) * 97
			for pb.Next() {
				k := i % hitKeys
				u, err := get(ctx, k)
				if err != nil || u.ID != int64(k) {
					b.Errorf("key %d: %+v, %v", k, u, err)
					return
				}
				i++
			}
		})
	})
}

// patient are ours in the Redis benchmarks: store timeouts as patient as the peers', which
// have none. With the default 50 ms, a Redis call that waits longer than that for a CPU on a
// loaded machine fails open to the loader (guarantee 3), and the benchmark would time the
// loader instead of the store.
var patient = []cacheaside.Option{cacheaside.WithStoreTimeout(2 * time.Second), cacheaside.WithConnectTimeout(5 * time.Second)}

// fallbackLoaders are the loaders of a hit benchmark, one per key, made once (no allocation
// per call). A hit never calls them; they return the right value all the same and count
// their calls, reported as fallback-loads/op if any.
func fallbackLoaders(calls *atomic.Int64) []func(context.Context) (User, error) {
	out := make([]func(context.Context) (User, error), hitKeys)
	for i := range out {
		out[i] = func(context.Context) (User, error) {
			calls.Add(1)
			return newUser(i), nil
		}
	}
	return out
}

// fallbackDos are fallbackLoaders for go-redis/cache's Item.Do.
func fallbackDos(calls *atomic.Int64) []func(*gocache.Item) (any, error) {
	out := make([]func(*gocache.Item) (any, error), hitKeys)
	for i := range out {
		out[i] = func(*gocache.Item) (any, error) {
			calls.Add(1)
			return newUser(i), nil
		}
	}
	return out
}

// reportCPU reports the CPU time this process spent per op since cpu (processCPU): on a
// shared, loaded machine it is steadier than wall time. It includes the client's work, not
// Redis's.
func reportCPU(b *testing.B, cpu int64) {
	if now := processCPU(); cpu >= 0 && now >= 0 && b.N > 0 {
		b.ReportMetric(float64(now-cpu)/float64(b.N), "cpu-ns/op")
	}
}

func reportFallbacks(b *testing.B, calls *atomic.Int64) {
	if n := calls.Load(); n > 0 {
		b.ReportMetric(float64(n)/float64(b.N), "fallback-loads/op")
	}
}

// newDefaultClient is newClient with go-redis's default deadline handling: context deadlines
// ignored (no ContextTimeoutEnabled), as most services build their client.
func newDefaultClient(tb testing.TB) *redis.Client {
	tb.Helper()
	needRedis(tb)
	c := redis.NewClient(&redis.Options{Addr: redisAddr(), PoolSize: 64})
	tb.Cleanup(func() { c.Close() })
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() { c.Ping(context.Background()) })
	}
	wg.Wait()
	return c
}

// BenchmarkRedisHit reads a value cached in Redis: one round trip and a decode. ours and the
// floor run on a client with ContextTimeoutEnabled, ours-default-client and its floor on a
// client with go-redis's defaults (the store then bounds each call itself: guarantee 3).
func BenchmarkRedisHit(b *testing.B) {
	b.Run("ours", func(b *testing.B) {
		client := newClient(b)
		c := warmHitCache(b, client, prefix(b, client))
		var calls atomic.Int64
		loaders := fallbackLoaders(&calls)
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			return c.GetOrLoad(ctx, keyOf(i), loaders[i])
		}, &calls)
	})
	// The store's read-or-lease script on a key that holds a value (the Cache sends it for a
	// while after a miss, and batches waiting for leases): serial, the script against HGET.
	b.Run("store-getorlease-hit", func(b *testing.B) {
		client := newClient(b)
		k := prefix(b, client) + "h"
		s := cacheaside.NewRedisStore(client)
		ctx := context.Background()
		if err := client.HSet(ctx, k, "v", `{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`).Err(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if lk, err := s.GetOrLease(ctx, k, "tok", time.Second); err != nil || lk.Value == nil {
				b.Fatalf("%+v %v", lk, err)
			}
		}
	})
	b.Run("floor-hget", func(b *testing.B) {
		client := newClient(b)
		k := prefix(b, client) + "h"
		ctx := context.Background()
		if err := client.HSet(ctx, k, "v", `{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`).Err(); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := client.HGet(ctx, k, "v").Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ours-default-client", func(b *testing.B) {
		client := newDefaultClient(b)
		c := warmHitCache(b, client, prefix(b, client))
		var calls atomic.Int64
		loaders := fallbackLoaders(&calls)
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			return c.GetOrLoad(ctx, keyOf(i), loaders[i])
		}, &calls)
	})
	b.Run("floor-default-client-get-json", func(b *testing.B) {
		client := newDefaultClient(b)
		p := prefix(b, client)
		ctx := context.Background()
		for i := range hitKeys {
			data, _ := json.Marshal(newUser(i))
			if err := client.Set(ctx, p+keyOf(i), data, time.Hour).Err(); err != nil {
				b.Fatal(err)
			}
		}
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			var u User
			data, err := client.Get(ctx, p+keyOf(i)).Bytes()
			if err != nil {
				return u, err
			}
			return u, json.Unmarshal(data, &u)
		}, nil)
	})
	b.Run("go-redis-cache", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		c := gocache.New(&gocache.Options{Redis: client})
		var calls atomic.Int64
		dos := fallbackDos(&calls)
		ctx := context.Background()
		for i := range hitKeys {
			if err := c.Set(&gocache.Item{Ctx: ctx, Key: p + keyOf(i), Value: newUser(i), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			var u User
			err := c.Once(&gocache.Item{Ctx: ctx, Key: p + keyOf(i), Value: &u, Do: dos[i]})
			return u, err
		}, &calls)
	})
	// ours and the floor in turn, each iteration one hit of each on keys of their own, on one
	// client: the ratio of one run, both under the same load (loopback latency on a shared VM
	// moves by tens of percent between runs). With a ContextTimeoutEnabled client and with
	// go-redis's defaults.
	b.Run("ours-vs-floor", func(b *testing.B) { hitVsFloor(b, newClient(b)) })
	b.Run("ours-vs-floor-default-client", func(b *testing.B) { hitVsFloor(b, newDefaultClient(b)) })
	b.Run("floor-go-redis-get-json", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		ctx := context.Background()
		for i := range hitKeys {
			data, _ := json.Marshal(newUser(i))
			if err := client.Set(ctx, p+keyOf(i), data, time.Hour).Err(); err != nil {
				b.Fatal(err)
			}
		}
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			var u User
			data, err := client.Get(ctx, p+keyOf(i)).Bytes()
			if err != nil {
				return u, err
			}
			return u, json.Unmarshal(data, &u)
		}, nil)
	})
}

// warmHitCache returns a Cache on client under prefix p, closed at the end of b, with hitKeys
// keys cached.
func warmHitCache(b *testing.B, client *redis.Client, p string) *cacheaside.Cache[User] {
	c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), append(patient, cacheaside.WithPrefix(p), cacheaside.WithTTL(time.Hour))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	for i := range hitKeys {
		if _, err := c.GetOrLoad(ctx, keyOf(i), func(context.Context) (User, error) { return newUser(i), nil }); err != nil {
			b.Fatal(err)
		}
	}
	return c
}

// hitVsFloor runs a Cache hit and a GET + JSON decode in turn on client, serially
// (interleavedAs) and in parallel, over hitKeys keys each.
func hitVsFloor(b *testing.B, client *redis.Client) {
	p := prefix(b, client)
	c := warmHitCache(b, client, p+"o:")
	ctx := context.Background()
	for i := range hitKeys {
		data, _ := json.Marshal(newUser(i))
		if err := client.Set(ctx, p+"f:"+keyOf(i), data, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
	}
	var calls atomic.Int64
	defer reportFallbacks(b, &calls)
	loaders := fallbackLoaders(&calls)
	ours := func(k int) error {
		if u, err := c.GetOrLoad(ctx, keyOf(k), loaders[k]); err != nil || u.ID != int64(k) {
			return fmt.Errorf("hit %d: %+v, %w", k, u, err)
		}
		return nil
	}
	floor := func(k int) error {
		data, err := client.Get(ctx, p+"f:"+keyOf(k)).Bytes()
		if err != nil {
			return err
		}
		var u User
		if err := json.Unmarshal(data, &u); err != nil || u.ID != int64(k) {
			return fmt.Errorf("floor %d: %+v, %w", k, u, err)
		}
		return nil
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		interleavedAs(b, "ours", "floor", func() error { return ours(i % hitKeys) }, func() error {
			defer func() { i++ }()
			return floor(i % hitKeys)
		})
	})
	// Each goroutine alternates one hit of each on keys of its own offset; the sums over all
	// goroutines give the ratio (per-goroutine latency, not throughput).
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(redisParallelism)
		var goroutines, tOurs, tFloor atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(goroutines.Add(1)) * 97
			for pb.Next() {
				k := i % hitKeys
				start := time.Now()
				if err := ours(k); err != nil {
					b.Error(err)
					return
				}
				mid := time.Now()
				if err := floor(k); err != nil {
					b.Error(err)
					return
				}
				tOurs.Add(int64(mid.Sub(start)))
				tFloor.Add(int64(time.Since(mid)))
				i++
			}
		})
		b.ReportMetric(float64(tOurs.Load())/float64(b.N), "ours-ns/op")
		b.ReportMetric(float64(tFloor.Load())/float64(b.N), "floor-ns/op")
		b.ReportMetric(float64(tOurs.Load())/float64(tFloor.Load()), "ours/floor")
	})
}

// BenchmarkMemoryHit reads a value cached in process memory.
//
// ours-memory is a Cache over a MemoryStore, which keeps encoded bytes (as Redis does) and
// decodes each hit, while sturdyc and otter keep decoded values: the in-process hit to compare
// with them is the L1 of decoded values (WithLocalCache), BenchmarkL1Hit.
func BenchmarkMemoryHit(b *testing.B) {
	b.Run("ours-memory", func(b *testing.B) {
		store := cacheaside.NewMemoryStore()
		defer store.Close()
		c, err := cacheaside.New[User](store, cacheaside.WithTTL(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		for i := range hitKeys {
			if _, err := c.GetOrLoad(ctx, keyOf(i), func(context.Context) (User, error) { return newUser(i), nil }); err != nil {
				b.Fatal(err)
			}
		}
		var calls atomic.Int64
		loaders := fallbackLoaders(&calls)
		runHit(b, 1, func(ctx context.Context, i int) (User, error) {
			return c.GetOrLoad(ctx, keyOf(i), loaders[i])
		}, &calls)
	})
	b.Run("sturdyc", func(b *testing.B) {
		c := sturdyc.New[User](hitKeys*4, 16, time.Hour, 10)
		for i := range hitKeys {
			c.Set(keyOf(i), newUser(i))
		}
		var calls atomic.Int64
		loaders := fallbackLoaders(&calls)
		runHit(b, 1, func(ctx context.Context, i int) (User, error) {
			return c.GetOrFetch(ctx, keyOf(i), loaders[i])
		}, &calls)
	})
	b.Run("go-redis-cache-local", func(b *testing.B) {
		c := gocache.New(&gocache.Options{LocalCache: gocache.NewTinyLFU(hitKeys*4, time.Hour)})
		var calls atomic.Int64
		dos := fallbackDos(&calls)
		ctx := context.Background()
		for i := range hitKeys {
			if err := c.Set(&gocache.Item{Ctx: ctx, Key: keyOf(i), Value: newUser(i), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
		runHit(b, 1, func(ctx context.Context, i int) (User, error) {
			var u User
			err := c.Once(&gocache.Item{Ctx: ctx, Key: keyOf(i), Value: &u, Do: dos[i]})
			return u, err
		}, &calls)
	})
	b.Run("floor-otter", func(b *testing.B) {
		c := otter.Must(&otter.Options[string, User]{MaximumSize: hitKeys * 4})
		for i := range hitKeys {
			c.Set(keyOf(i), newUser(i))
		}
		runHit(b, 1, func(_ context.Context, i int) (User, error) {
			u, ok := c.GetIfPresent(keyOf(i))
			if !ok {
				return u, fmt.Errorf("miss")
			}
			return u, nil
		}, nil)
	})
}
