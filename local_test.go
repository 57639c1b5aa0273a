package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// l1Opts are the options of the local-cache tests: an L1 that outlives every test, so an entry
// that should have been dropped is still there to be caught.
func l1Opts(extra ...Option) []Option {
	return append([]Option{WithLocalCache(1000, time.Hour), WithTTL(time.Hour), WithTTLJitter(0)}, extra...)
}

// waitLive waits until every cache's L1 is subscribed (a generous bound catches a hang).
func waitLive[T any](t testing.TB, cs ...*Cache[T]) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, c := range cs {
		for !c.l1.isLive() {
			if time.Now().After(deadline) {
				t.Fatal("the local cache did not subscribe within 20s")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// removeBehindBack deletes key's entry from the store without telling any Cache: a later
// read that still returns the value was served by L1.
func removeBehindBack[T any](t testing.TB, c *Cache[T], key string) {
	t.Helper()
	if err := c.gw.store.Delete(bg(), c.cfg.prefix+key); err != nil {
		t.Fatal(err)
	}
}

// counter is a loader that returns the number of times it was called.
type counter struct{ n atomic.Int64 }

func (c *counter) load(context.Context) (int64, error) { return c.n.Add(1), nil }

func TestLocalCacheNeedsABroadcastingStore(t *testing.T) {
	type plain struct{ Store } // hides MemoryStore's Broadcaster methods
	s := NewMemoryStore()
	defer s.Close()
	_, err := New[int](plain{s}, WithLocalCache(10, time.Second))
	if !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("New over a store without broadcast and WithLocalCache: %v, want ErrInvalidOption", err)
	}
	c, err := New[int](plain{s})
	if err != nil {
		t.Fatalf("without a local cache the store needs no broadcast: %v", err)
	}
	c.Close()
}

func TestLocalHitServesWithoutTheStore(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[int64](t, b, l1Opts()...)
		waitLive(t, c)
		var n counter
		if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != 1 {
			t.Fatalf("first read: %v, %v", v, err)
		}
		removeBehindBack(t, c, "k")
		for range 3 {
			if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != 1 {
				t.Fatalf("L1 hit: %v, %v; want 1 without a load", v, err)
			}
		}
		if n.n.Load() != 1 {
			t.Fatalf("loader called %d times, want 1", n.n.Load())
		}

		// Negative entries live in L1 too.
		var nf atomic.Int64
		notFound := func(context.Context) (int64, error) { nf.Add(1); return 0, ErrNotFound }
		if _, err := c.GetOrLoad(bg(), "missing", notFound); !errors.Is(err, ErrNotFound) {
			t.Fatalf("not found: %v", err)
		}
		removeBehindBack(t, c, "missing")
		if _, err := c.GetOrLoad(bg(), "missing", n.load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("cached not-found from L1: %v", err)
		}
		if nf.Load() != 1 || n.n.Load() != 1 {
			t.Fatalf("loaders called %d and %d times, want 1 and 1", nf.Load(), n.n.Load())
		}

		// Its own Invalidate is seen at once.
		if err := c.Invalidate(bg(), "k", "missing"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != 2 {
			t.Fatalf("after Invalidate: %v, %v; want a load (2)", v, err)
		}
		if v, err := c.GetOrLoad(bg(), "missing", n.load); err != nil || v != 3 {
			t.Fatalf("after Invalidate: %v, %v; want a load (3)", v, err)
		}
	})
}

func TestLocalNoNegativeEntriesWithoutNegativeCaching(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	c := newTestCache[int64](t, s, l1Opts(WithNegativeTTL(0))...)
	waitLive(t, c)
	var calls atomic.Int64
	notFound := func(context.Context) (int64, error) { calls.Add(1); return 0, ErrNotFound }
	for range 2 {
		if _, err := c.GetOrLoad(bg(), "k", notFound); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
	}
	if calls.Load() != 2 {
		t.Fatalf("negative caching off: loader called %d times, want 2", calls.Load())
	}
}

func TestLocalTTLCappedByTheValuesExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		const ttl, negTTL = 400 * time.Millisecond, 250 * time.Millisecond
		c := backendCache[int64](t, b, WithLocalCache(100, time.Hour), WithTTL(ttl), WithNegativeTTL(negTTL), WithTTLJitter(0))
		waitLive(t, c)
		var n counter
		if _, err := c.GetOrLoad(bg(), "k", n.load); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetOrLoad(bg(), "nf", func(context.Context) (int64, error) { return 0, ErrNotFound }); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		for key, max := range map[string]time.Duration{"k": ttl, "nf": negTTL} {
			e, ok := c.l1.entries.GetIfPresent(key)
			if !ok {
				t.Fatalf("%s: no L1 entry", key)
			}
			if left := time.Duration(e.until - c.l1.clock.NowNano()); left <= 0 || left > max {
				t.Fatalf("%s: L1 entry expires in %v, want within the value's own TTL %v (local TTL is 1h)", key, left, max)
			}
		}
		// Past the value's expiry L1 no longer serves it (the store has expired it too).
		b.advance(ttl + 100*time.Millisecond)
		if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != 2 {
			t.Fatalf("after the value's TTL: %v, %v; want a new load (2)", v, err)
		}
	})
}

func TestLocalHitAllocatesNothing(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	c := newTestCache[int64](t, s, l1Opts()...)
	waitLive(t, c)
	load := func(context.Context) (int64, error) { return 7, nil }
	ctx := bg()
	if _, err := c.GetOrLoad(ctx, "hot", load); err != nil {
		t.Fatal(err)
	}
	if c.l1.hit("hot") == nil {
		t.Fatal("not in L1")
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if v, err := c.GetOrLoad(ctx, "hot", load); v != 7 || err != nil {
			panic("wrong value")
		}
	})
	if allocs != 0 {
		t.Fatalf("an L1 hit allocates %v times, want 0", allocs)
	}
}

// An L1 entry whose generation is not the key's is never served, however it got there: the
// check is on the read, not only before the store.
func TestLocalEntryFromBeforeAnInvalidationIsNeverServed(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	c := newTestCache[int64](t, s, l1Opts()...)
	waitLive(t, c)
	gen := c.gens.load("k")
	if _, err := c.GetOrLoad(bg(), "k", func(context.Context) (int64, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
	e := c.l1.hit("k")
	if e == nil || e.gen != gen {
		t.Fatalf("entry %+v, want one of generation %d", e, gen)
	}
	c.gens.bump("k") // an invalidation slips in...
	c.l1.entries.Set("k", e)
	if c.l1.hit("k") != nil {
		t.Fatal("an entry of an older generation was served")
	}
	// ...and l1Fill does not store one either.
	c.l1.entries.Invalidate("k")
	data, _, _ := c.entries.encode(bg(), c.cfg.prefix+"k", 1, false, 0)
	c.l1.fill("k", gen, 1, data)
	if _, ok := c.l1.entries.GetIfPresent("k"); ok {
		t.Fatal("l1Fill kept a value whose fill began before an invalidation")
	}
}

// manualBus is a broadcast transport the test drives by hand.
type manualBus struct {
	mu    sync.Mutex
	on    func(SubscriptionEvent, []byte)
	ready chan struct{}
}

func (m *manualBus) Publish(context.Context, string, []byte) error { return nil }
func (m *manualBus) Subscribe(string) Subscription                 { return m }
func (m *manualBus) Run(ctx context.Context, on func(SubscriptionEvent, []byte)) {
	m.mu.Lock()
	m.on = on
	m.mu.Unlock()
	close(m.ready)
	<-ctx.Done()
}
func (m *manualBus) emit(ev SubscriptionEvent, msg []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.on(ev, msg)
}

type manualStore struct {
	Store
	*manualBus
}

func TestLocalGetOrLoadManyUsesL1(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// slowMachine: the second call must find the first call's keys, so their fills must
		// land; with the default 50 ms store timeout a loaded machine once failed them (on
		// Cluster: "loader asked [[a bb absent] [ccc dddd]]").
		c := backendCache[int64](t, b, l1Opts(slowMachine...)...)
		waitLive(t, c)
		var asked [][]string
		var mu sync.Mutex
		load := func(_ context.Context, missing []string) (map[string]int64, error) {
			mu.Lock()
			asked = append(asked, append([]string(nil), missing...))
			mu.Unlock()
			m := map[string]int64{}
			for _, k := range missing {
				if k != "absent" {
					m[k] = int64(len(k))
				}
			}
			return m, nil
		}
		if _, err := c.GetOrLoadMany(bg(), []string{"a", "bb", "absent"}, load); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetOrLoad(bg(), "ccc", func(context.Context) (int64, error) { return 3, nil }); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"a", "bb", "absent", "ccc"} {
			removeBehindBack(t, c, k)
		}
		m, err := c.GetOrLoadMany(bg(), []string{"a", "bb", "absent", "ccc", "dddd"}, load)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{"a": 1, "bb": 2, "ccc": 3, "dddd": 4}
		if fmt.Sprint(m) != fmt.Sprint(want) {
			t.Fatalf("got %v, want %v", m, want)
		}
		if len(asked) != 2 || fmt.Sprint(asked[1]) != "[dddd]" {
			t.Fatalf("loader asked %v; the second call should only load dddd", asked)
		}
		// A batch's own fills and hits go to L1 too.
		removeBehindBack(t, c, "dddd")
		if _, err := c.GetOrLoadMany(bg(), []string{"dddd"}, load); err != nil || len(asked) != 2 {
			t.Fatalf("dddd should come from L1: %v, asked %v", err, asked)
		}
	})
}

// The L1's coarse clock is a goroutine of the Cache: Close stops it.
func TestLocalCoarseClockStopsAtClose(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	before := goleak.IgnoreCurrent()
	c, err := New[int](s, WithPrefix(testPrefix(t)), WithLocalCache(10, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	waitLive(t, c)
	if err := goleak.Find(before, goleak.IgnoreTopFunction("github.com/maypok86/otter/v2.periodicCleanUp[...]")); err == nil || !strings.Contains(err.Error(), "updateCoarseClock") {
		t.Fatalf("no coarse clock goroutine while the L1 runs: %v", err)
	}
	c.Close()
	goleak.VerifyNone(t, before)
	runtime.KeepAlive(c) // the clock stays reachable: only Close can have stopped it
}

// An entry is not served once the coarse clock has passed its local TTL (plus the tick the
// WithLocalCache doc allows), however long the value lives in the store.
func TestLocalEntryPastItsLocalTTLIsNotServed(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	const localTTL = 50 * time.Millisecond
	c := newTestCache[int64](t, s, WithLocalCache(10, localTTL), WithTTL(time.Hour), WithTTLJitter(0))
	waitLive(t, c)
	var n counter
	start := time.Now()
	if _, err := c.GetOrLoad(bg(), "k", n.load); err != nil {
		t.Fatal(err)
	}
	filled := time.Now()
	if c.l1.hit("k") == nil && time.Since(start) < localTTL {
		t.Fatal("not in L1 within its local TTL")
	}
	// Wait until the real time and the coarse clock are both a tick past the local TTL (the
	// clock's goroutine may run late on a loaded machine: a generous bound catches a hang).
	past := filled.Add(localTTL + l1ClockTick)
	time.Sleep(time.Until(past))
	deadline := time.Now().Add(20 * time.Second)
	for c.l1.clock.NowNano() < past.UnixNano() {
		if time.Now().After(deadline) {
			t.Fatal("the coarse clock did not advance within 20s")
		}
		time.Sleep(time.Millisecond)
	}
	if c.l1.hit("k") != nil {
		t.Fatalf("L1 serves an entry %v past its local TTL of %v", time.Since(filled)-localTTL, localTTL)
	}
	l1Hits := c.Stats().L1Hits
	if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != 1 {
		t.Fatalf("after the local TTL: %v, %v; want the store's value 1", v, err)
	}
	if got := c.Stats().L1Hits; got != l1Hits {
		t.Fatalf("L1 hits went from %d to %d past the local TTL", l1Hits, got)
	}
}

// The coarse clock never serves a value past its logical expiry: an entry whose logical
// expiry is near the end of its local TTL is checked against the precise clock on every hit,
// and an entry far from it reads no clock at all.
func TestLocalLogicalExpiryIsExactOnTheCoarseClock(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	// Local TTL 1h, value TTL 1h: the logical expiry sets the entry's end (capped).
	c := newTestCache[int64](t, s, l1Opts()...)
	waitLive(t, c)
	var n counter
	if _, err := c.GetOrLoad(bg(), "k", n.load); err != nil {
		t.Fatal(err)
	}
	if c.l1.hit("k") == nil {
		t.Fatal("not in L1")
	}
	precise := c.fresh.now
	c.fresh.now = func() int64 { return precise() + int64(time.Hour) } // past the value's logical expiry
	if c.l1.hit("k") != nil {
		t.Fatal("L1 serves a value past its logical expiry (the coarse clock has not moved)")
	}
	c.fresh.now = precise

	// Local TTL 1 min, value TTL 1h: the local TTL ends long before the value does.
	c2 := newTestCache[int64](t, s, WithLocalCache(10, time.Minute), WithTTL(time.Hour))
	waitLive(t, c2)
	if _, err := c2.GetOrLoad(bg(), "k", n.load); err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	c2.fresh.now = func() int64 { reads.Add(1); return precise() }
	for range 10 {
		if c2.l1.hit("k") == nil {
			t.Fatal("not in L1")
		}
	}
	if reads.Load() != 0 {
		t.Fatalf("an L1 hit read the clock %d times, want 0", reads.Load())
	}
}

// L1 hits are counted on per-goroutine stripes: counted concurrently, none is lost, in Stats
// and per key group alike.
func TestLocalHitsCountedExactlyUnderConcurrency(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	c := newTestCache[int64](t, s, l1Opts(WithKeyGroups(func(k string) string { return k[:1] }, 10))...)
	waitLive(t, c)
	var n counter
	for _, k := range []string{"a1", "b1"} {
		if _, err := c.GetOrLoad(bg(), k, n.load); err != nil {
			t.Fatal(err)
		}
	}
	const goroutines, each = 8, 500
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			k := []string{"a1", "b1"}[i%2]
			for range each {
				if _, err := c.GetOrLoad(bg(), k, n.load); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := c.Stats().L1Hits; got != goroutines*each {
		t.Fatalf("L1 hits %d, want %d", got, goroutines*each)
	}
	perGroup := map[string]uint64{}
	c.obs.eachGroup(func(g *groupCounters) { perGroup[g.name] += g.requests.load(resultL1Hit) })
	if perGroup["a"] != goroutines*each/2 || perGroup["b"] != goroutines*each/2 {
		t.Fatalf("L1 hits per group %v, want %d each for a and b", perGroup, goroutines*each/2)
	}
}
