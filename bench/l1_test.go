package bench

import (
	"context"
	"fmt"
	"sync/atomic"
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

// l1Block is how many hits of one side interleavedL1 runs before it switches to the other:
// enough that the two clock reads around a block cost under 1% of it.
const l1Block = 1024

// interleavedL1 runs ours and floor in turn, l1Block hits of each per iteration, serially and in
// parallel (each goroutine alternating on its own), and reports each side's time per hit and
// their ratio: both see the same machine at the same moments, which separate cases do not.
func interleavedL1(b *testing.B, ours, floor func() (user, error)) {
	block := func(get func() (user, error)) (time.Duration, error) {
		start := time.Now()
		for range l1Block {
			if v, err := get(); err != nil || v.ID != 42 {
				return 0, fmt.Errorf("%v, %w", v, err)
			}
		}
		return time.Since(start), nil
	}
	report := func(b *testing.B, tOurs, tFloor time.Duration) {
		hits := float64(b.N) * l1Block
		b.ReportMetric(float64(tOurs.Nanoseconds())/hits, "ours-ns/hit")
		b.ReportMetric(float64(tFloor.Nanoseconds())/hits, "floor-ns/hit")
		b.ReportMetric(float64(tOurs)/float64(tFloor), "ours/floor")
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		var tOurs, tFloor time.Duration
		for b.Loop() {
			o, err := block(ours)
			if err != nil {
				b.Fatal(err)
			}
			f, err := block(floor)
			if err != nil {
				b.Fatal(err)
			}
			tOurs, tFloor = tOurs+o, tFloor+f
		}
		report(b, tOurs, tFloor)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var tOurs, tFloor atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				o, err := block(ours)
				if err != nil {
					b.Error(err)
					return
				}
				f, err := block(floor)
				if err != nil {
					b.Error(err)
					return
				}
				tOurs.Add(int64(o))
				tFloor.Add(int64(f))
			}
		})
		report(b, time.Duration(tOurs.Load()), time.Duration(tFloor.Load()))
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

// newL1Cache returns a Cache with an L1 over a MemoryStore, closed (with the store) at the end
// of b, whose L1 holds l1Key.
func newL1Cache(b *testing.B, load func(context.Context) (user, error)) *cacheaside.Cache[user] {
	store := cacheaside.NewMemoryStore()
	c, err := cacheaside.New[user](store, cacheaside.WithLocalCache(10_000, time.Minute), cacheaside.WithTTL(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close(); _ = store.Close() })
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, l1Key, load); err != nil { // the store hit that fills L1
		b.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // the memory subscription goes live at once; be sure
	if _, err := c.GetOrLoad(ctx, l1Key, load); err != nil {
		b.Fatal(err)
	}
	return c
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
		c := newL1Cache(b, load)
		runL1Hit(b, func() (user, error) { return c.GetOrLoad(ctx, l1Key, load) })
	})

	// cacheaside and the floor in turn, 1,024 hits of each at a time (interleavedL1).
	b.Run("cacheaside-vs-floor", func(b *testing.B) {
		c := newL1Cache(b, load)
		o := otter.Must(&otter.Options[string, *l1Entry]{MaximumSize: 10_000})
		defer o.StopAllGoroutines()
		o.Set(l1Key, &l1Entry{val: l1Value, ttl: time.Minute})
		interleavedL1(b, func() (user, error) { return c.GetOrLoad(ctx, l1Key, load) }, func() (user, error) {
			e, ok := o.GetIfPresent(l1Key)
			if !ok {
				return user{}, cacheaside.ErrNotFound
			}
			return e.val, nil
		})
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
