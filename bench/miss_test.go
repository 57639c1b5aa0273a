package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	ctx0 := context.Background()
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
			return floorMiss(ctx, client, p+key, i)
		})
	})
	// ours and the floor in turn, on keys of their own, each iteration one miss of each: the
	// ratio of one run, both under the same load.
	b.Run("ours-vs-floor", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), append(patient, cacheaside.WithPrefix(p+"o:"), cacheaside.WithTTL(time.Minute))...)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		i := 0
		interleavedAs(b, "ours", "floor", func() error {
			if u, err := c.GetOrLoad(ctx, "miss"+strconv.Itoa(i), load(i)); err != nil || u.ID != int64(i) {
				return fmt.Errorf("miss %d: %+v, %w", i, u, err)
			}
			return nil
		}, func() error {
			defer func() { i++ }()
			_, err := floorMiss(ctx, client, p+"f:miss"+strconv.Itoa(i), i)
			return err
		})
	})
	// The store's read-or-lease and fill alone (no Cache) and the floor in turn: what the
	// Lua protocol itself costs over GET + SET.
	b.Run("store-vs-floor", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		s := cacheaside.NewRedisStore(client)
		ctx := context.Background()
		i := 0
		interleavedAs(b, "ours", "floor", func() error {
			key := p + "o:miss" + strconv.Itoa(i)
			lk, err := s.GetOrLease(ctx, key, "tok", 10*time.Second)
			if err != nil || !lk.Granted {
				return fmt.Errorf("lease %s: %+v %w", key, lk, err)
			}
			u, _ := load(i)(ctx)
			data, err := json.Marshal(u)
			if err != nil {
				return err
			}
			if ok, err := s.Fill(ctx, key, "tok", data, time.Minute); !ok || err != nil {
				return fmt.Errorf("fill %s: %v %w", key, ok, err)
			}
			return nil
		}, func() error {
			defer func() { i++ }()
			_, err := floorMiss(ctx, client, p+"f:miss"+strconv.Itoa(i), i)
			return err
		})
	})
	// The store's lease operations alone, without the Cache around them: a miss's
	// read-or-lease and fill, the refresh's lease and fill of a present value, a released
	// lease, and the batch forms over 10 keys (one script call each).
	b.Run("store-getorlease-fill", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		s := cacheaside.NewRedisStore(client)
		val := []byte(`{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := p + "sg" + strconv.Itoa(i)
			lk, err := s.GetOrLease(ctx0, k, "tok", time.Second)
			if err != nil || !lk.Granted {
				b.Fatalf("lease %s: %+v %v", k, lk, err)
			}
			if ok, err := s.Fill(ctx0, k, "tok", val, time.Minute); !ok || err != nil {
				b.Fatalf("fill %s: %v %v", k, ok, err)
			}
			i++
		}
	})
	b.Run("store-lease-fill", func(b *testing.B) {
		client := newClient(b)
		k := prefix(b, client) + "sl"
		s := cacheaside.NewRedisStore(client)
		val := []byte(`{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`)
		b.ReportAllocs()
		for b.Loop() {
			lk, err := s.Lease(ctx0, k, "tok", time.Second)
			if err != nil || !lk.Granted {
				b.Fatalf("lease %s: %+v %v", k, lk, err)
			}
			if ok, err := s.Fill(ctx0, k, "tok", val, time.Minute); !ok || err != nil {
				b.Fatalf("fill %s: %v %v", k, ok, err)
			}
		}
	})
	b.Run("store-lease-release", func(b *testing.B) {
		client := newClient(b)
		k := prefix(b, client) + "sr"
		s := cacheaside.NewRedisStore(client)
		b.ReportAllocs()
		for b.Loop() {
			lk, err := s.Lease(ctx0, k, "tok", time.Second)
			if err != nil || !lk.Granted {
				b.Fatalf("lease %s: %+v %v", k, lk, err)
			}
			if ok, err := s.Release(ctx0, k, "tok"); !ok || err != nil {
				b.Fatalf("release %s: %v %v", k, ok, err)
			}
		}
	})
	b.Run("store-many10-getorlease-fill", func(b *testing.B) {
		client := newClient(b)
		p := prefix(b, client)
		s := cacheaside.NewRedisStore(client)
		val := []byte(`{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`)
		b.ReportAllocs()
		i := 0
		keys := make([]string, 10)
		entries := make([]cacheaside.FillEntry, 10)
		for b.Loop() {
			for j := range keys {
				keys[j] = p + "sm" + strconv.Itoa(i) + ":" + strconv.Itoa(j)
				entries[j] = cacheaside.FillEntry{Key: keys[j], Value: val, TTL: time.Minute}
			}
			lks, err := s.LeaseMany(ctx0, keys, "tok", time.Second)
			if err != nil || !lks[9].Granted {
				b.Fatalf("lease many: %v", err)
			}
			ok, err := s.FillMany(ctx0, "tok", entries)
			if err != nil || !ok[9] {
				b.Fatalf("fill many: %v", err)
			}
			i++
		}
	})
	b.Run("floor-go-redis-set", func(b *testing.B) {
		client := newClient(b)
		k := prefix(b, client) + "fs"
		val := []byte(`{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`)
		b.ReportAllocs()
		for b.Loop() {
			if err := client.Set(ctx0, k, val, time.Minute).Err(); err != nil {
				b.Fatal(err)
			}
		}
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

// floorMiss is the floor of a miss + fill: a GET that finds nothing, the load (user i), a SET.
func floorMiss(ctx context.Context, client redis.UniversalClient, key string, i int) (User, error) {
	if _, err := client.Get(ctx, key).Bytes(); !errors.Is(err, redis.Nil) {
		return User{}, fmt.Errorf("%s: not a miss: %w", key, err)
	}
	u := newUser(i)
	data, err := json.Marshal(u)
	if err != nil {
		return u, err
	}
	return u, client.Set(ctx, key, data, time.Minute).Err()
}
