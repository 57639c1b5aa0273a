package bench

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	gocache "github.com/go-redis/cache/v9"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
)

// BenchmarkMissFill reads a key no one cached yet: look up, load (an instant loader), store,
// return. Every iteration is a new key. Serial only: a miss is the slow path, its cost is
// round trips.
func BenchmarkMissFill(b *testing.B) {
	load := func(i int) func(context.Context) (User, error) {
		return func(context.Context) (User, error) { return newUser(i), nil }
	}
	run := func(b *testing.B, get func(ctx context.Context, key string, i int) (User, error)) {
		b.ReportAllocs()
		ctx := context.Background()
		i := 0
		for b.Loop() {
			u, err := get(ctx, "miss"+strconv.Itoa(i), i)
			if err != nil || u.ID != int64(i) {
				b.Fatalf("miss %d: %+v, %v", i, u, err)
			}
			i++
		}
	}
	b.Run("ours", func(b *testing.B) {
		client := newClient(b)
		c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), append(patient, cacheaside.WithPrefix(prefix(b, client)), cacheaside.WithTTL(time.Minute))...)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, func(ctx context.Context, key string, i int) (User, error) { return c.GetOrLoad(ctx, key, load(i)) })
	})
	b.Run("go-redis-cache", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		c := gocache.New(&gocache.Options{Redis: client})
		run(b, func(ctx context.Context, key string, i int) (User, error) {
			var u User
			err := c.Once(&gocache.Item{Ctx: ctx, Key: p + key, Value: &u, TTL: time.Minute, Do: func(*gocache.Item) (any, error) { return load(i)(ctx) }})
			return u, err
		})
	})
	b.Run("floor-go-redis-get-set-json", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		run(b, func(ctx context.Context, key string, i int) (User, error) {
			if _, err := client.Get(ctx, p+key).Bytes(); !errors.Is(err, redis.Nil) {
				return User{}, errors.New("not a miss")
			}
			u, _ := load(i)(ctx)
			data, err := json.Marshal(u)
			if err != nil {
				return u, err
			}
			return u, client.Set(ctx, p+key, data, time.Minute).Err()
		})
	})
	b.Run("ours-memory", func(b *testing.B) {
		store := cacheaside.NewMemoryStore()
		defer store.Close()
		c, err := cacheaside.New[User](store, cacheaside.WithTTL(time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		run(b, func(ctx context.Context, key string, i int) (User, error) { return c.GetOrLoad(ctx, key, load(i)) })
	})
	b.Run("sturdyc", func(b *testing.B) {
		c := sturdyc.New[User](1<<20, 16, time.Minute, 10)
		run(b, func(ctx context.Context, key string, i int) (User, error) { return c.GetOrFetch(ctx, key, load(i)) })
	})
	b.Run("floor-otter", func(b *testing.B) {
		c := otter.Must(&otter.Options[string, User]{MaximumSize: 1 << 20})
		run(b, func(ctx context.Context, key string, i int) (User, error) {
			if _, ok := c.GetIfPresent(key); ok {
				return User{}, errors.New("not a miss")
			}
			u, _ := load(i)(ctx)
			c.Set(key, u)
			return u, nil
		})
	})
}
