package bench

import (
	"context"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	gocache "github.com/go-redis/cache/v9"
	"github.com/maypok86/otter/v2"
	"github.com/viccon/sturdyc"
)

// user is the cached value of the L1 benchmarks: a small row.
type user struct {
	ID    int
	Name  string
	Email string
}

const l1Key = "user:42"

var l1Value = user{ID: 42, Name: "Ada", Email: "ada@example.com"}

// runL1Hit runs get serially and in parallel (b.RunParallel), checking the value it returns.
func runL1Hit(b *testing.B, get func() (user, error)) {
	if v, err := get(); err != nil || v.ID != 42 {
		b.Fatalf("warm-up read: %v, %v", v, err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if v, err := get(); err != nil || v.ID != 42 {
				b.Fatalf("%v, %v", v, err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if v, err := get(); err != nil || v.ID != 42 {
					b.Errorf("%v, %v", v, err)
					return
				}
			}
		})
	})
}

// l1Entry is what the otter rows keep: a decoded value and its TTL.
type l1Entry struct {
	val user
	ttl time.Duration
}

var l1Expiry = otter.ExpiryWritingFunc(func(e otter.Entry[string, *l1Entry]) time.Duration { return e.Value.ttl })

// runOtterL1 runs runL1Hit on otter's GetIfPresent, the key set for a minute.
func runOtterL1(b *testing.B, o *otter.Cache[string, *l1Entry]) {
	o.Set(l1Key, &l1Entry{val: l1Value, ttl: time.Minute})
	runL1Hit(b, func() (user, error) {
		e, ok := o.GetIfPresent(l1Key)
		if !ok {
			return user{}, cacheaside.ErrNotFound
		}
		return e.val, nil
	})
}

// BenchmarkL1Hit compares a hit in the in-process cache: cacheaside's L1 (WithLocalCache)
// through GetOrLoad; the floor, otter's own GetIfPresent on a plain size-bounded cache; otter
// with a per-entry expiry on the precise clock (otter-expiry) and on a 1 ms coarse clock
// (otter-expiry-coarse, configured as the L1 is); sturdyc's GetOrFetch; and go-redis/cache's Get served by
// its TinyLFU local cache (which keeps bytes and unmarshals them on every hit).
func BenchmarkL1Hit(b *testing.B) {
	ctx := context.Background()
	load := func(context.Context) (user, error) { return l1Value, nil }

	b.Run("cacheaside", func(b *testing.B) {
		store := cacheaside.NewMemoryStore()
		defer store.Close()
		c, err := cacheaside.New[user](store, cacheaside.WithLocalCache(10_000, time.Minute), cacheaside.WithTTL(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.GetOrLoad(ctx, l1Key, load); err != nil { // the store hit that fills L1
			b.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // the memory subscription goes live at once; be sure
		if _, err := c.GetOrLoad(ctx, l1Key, load); err != nil {
			b.Fatal(err)
		}
		runL1Hit(b, func() (user, error) { return c.GetOrLoad(ctx, l1Key, load) })
	})

	// The floor: otter's GetIfPresent on a plain size-bounded cache (no expiry).
	b.Run("otter-floor", func(b *testing.B) {
		o := otter.Must(&otter.Options[string, *l1Entry]{MaximumSize: 10_000})
		defer o.StopAllGoroutines()
		runOtterL1(b, o)
	})

	// otter configured as the L1 was before issue 17 (per-entry expiry on the precise clock):
	// what a hit costs when it reads the time.
	b.Run("otter-expiry", func(b *testing.B) {
		o := otter.Must(&otter.Options[string, *l1Entry]{MaximumSize: 10_000, ExpiryCalculator: l1Expiry})
		defer o.StopAllGoroutines()
		runOtterL1(b, o)
	})

	// otter configured as the L1 is (per-entry expiry on a 1 ms coarse clock).
	b.Run("otter-expiry-coarse", func(b *testing.B) {
		clock := otter.NewCoarseClock(time.Millisecond)
		defer clock.Stop()
		o := otter.Must(&otter.Options[string, *l1Entry]{MaximumSize: 10_000, ExpiryCalculator: l1Expiry, Clock: clock})
		defer o.StopAllGoroutines()
		runOtterL1(b, o)
	})

	b.Run("sturdyc", func(b *testing.B) {
		s := sturdyc.New[user](10_000, 10, time.Minute, 10)
		runL1Hit(b, func() (user, error) { return s.GetOrFetch(ctx, l1Key, load) })
	})

	b.Run("go-redis-cache-local", func(b *testing.B) {
		gc := gocache.New(&gocache.Options{LocalCache: gocache.NewTinyLFU(10_000, time.Minute)})
		if err := gc.Set(&gocache.Item{Ctx: ctx, Key: l1Key, Value: l1Value}); err != nil {
			b.Fatal(err)
		}
		runL1Hit(b, func() (user, error) {
			var v user
			err := gc.Get(ctx, l1Key, &v)
			return v, err
		})
	})
}
