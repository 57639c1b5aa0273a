package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	gocache "github.com/go-redis/cache/v9"
	"github.com/maypok86/otter/v2"
	"github.com/viccon/sturdyc"
)

// getter is one implementation's read of key i, which must be a hit.
type getter func(ctx context.Context, i int) (User, error)

// runHit runs get serially and in parallel over hitKeys keys.
func runHit(b *testing.B, parallelism int, get getter) {
	ctx := context.Background()
	check := func(u User, err error, i int) {
		if err != nil || u.ID != int64(i) {
			b.Fatalf("key %d: %+v, %v", i, u, err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := i % hitKeys
			u, err := get(ctx, k)
			check(u, err, k)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			i := 0
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

// mustNotLoad is the loader of a hit benchmark: it is never called.
func mustNotLoad(b *testing.B) func(context.Context) (User, error) {
	return func(context.Context) (User, error) {
		b.Error("loader called on a hit")
		return User{}, fmt.Errorf("loader called on a hit")
	}
}

// BenchmarkRedisHit reads a value cached in Redis: one round trip and a decode.
func BenchmarkRedisHit(b *testing.B) {
	b.Run("ours", func(b *testing.B) {
		client := newClient(b)
		c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), cacheaside.WithPrefix(prefix(b, client)), cacheaside.WithTTL(time.Hour))
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
		load := mustNotLoad(b)
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			return c.GetOrLoad(ctx, keyOf(i), load)
		})
	})
	b.Run("go-redis-cache", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		c := gocache.New(&gocache.Options{Redis: client})
		ctx := context.Background()
		for i := range hitKeys {
			if err := c.Set(&gocache.Item{Ctx: ctx, Key: p + keyOf(i), Value: newUser(i), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
		runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
			var u User
			err := c.Once(&gocache.Item{Ctx: ctx, Key: p + keyOf(i), Value: &u, Do: func(*gocache.Item) (any, error) {
				b.Error("loader called on a hit")
				return nil, fmt.Errorf("loader called on a hit")
			}})
			return u, err
		})
	})
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
		})
	})
}

// BenchmarkMemoryHit reads a value cached in process memory.
//
// ours-memory is a Cache over a MemoryStore, which keeps encoded bytes (as Redis does) and
// decodes each hit; the in-process L1 of decoded values (WithLocalCache) is the case to
// compare with sturdyc and otter once it lands.
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
		load := mustNotLoad(b)
		runHit(b, 1, func(ctx context.Context, i int) (User, error) {
			return c.GetOrLoad(ctx, keyOf(i), load)
		})
	})
	b.Run("sturdyc", func(b *testing.B) {
		c := sturdyc.New[User](hitKeys*4, 16, time.Hour, 10)
		ctx := context.Background()
		for i := range hitKeys {
			c.Set(keyOf(i), newUser(i))
		}
		load := mustNotLoad(b)
		runHit(b, 1, func(ctx context.Context, i int) (User, error) {
			return c.GetOrFetch(ctx, keyOf(i), load)
		})
		_ = ctx
	})
	b.Run("go-redis-cache-local", func(b *testing.B) {
		c := gocache.New(&gocache.Options{LocalCache: gocache.NewTinyLFU(hitKeys*4, time.Hour)})
		ctx := context.Background()
		for i := range hitKeys {
			if err := c.Set(&gocache.Item{Ctx: ctx, Key: keyOf(i), Value: newUser(i), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
		runHit(b, 1, func(ctx context.Context, i int) (User, error) {
			var u User
			err := c.Once(&gocache.Item{Ctx: ctx, Key: keyOf(i), Value: &u, Do: func(*gocache.Item) (any, error) {
				b.Error("loader called on a hit")
				return nil, fmt.Errorf("loader called on a hit")
			}})
			return u, err
		})
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
		})
	})
}
