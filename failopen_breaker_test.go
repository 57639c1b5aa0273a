package cacheaside

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestFailOpenRecovers(t *testing.T) {
	noStrays(t)
	srv := miniredis.RunT(t)
	client := failOpenClient(t, &redis.Options{Addr: srv.Addr()})
	c := newTestCache[string](t, NewRedisStore(client),
		WithCircuitBreaker(2, 50*time.Millisecond), WithStoreTimeout(100*time.Millisecond))

	var loads atomic.Int64
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) {
			loads.Add(1)
			return valueOf(key), nil
		}
	}
	get := func(key string) {
		t.Helper()
		v, err := c.GetOrLoad(bg(), key, load(key))
		if err != nil || v != valueOf(key) {
			t.Fatalf("GetOrLoad(%q) = %q, %v; want %q, nil", key, v, err, valueOf(key))
		}
	}

	// Warm: one fill, then a hit.
	get("warm")
	get("warm")
	if n := loads.Load(); n != 1 {
		t.Fatalf("loader called %d times for a fill and a hit, want 1", n)
	}

	srv.Close()
	down := time.Now()
	var downTook time.Duration
	within(t, 20*time.Second, "calls while the store is down", func() {
		for i := range 20 {
			key := fmt.Sprintf("down-%d", i)
			v, err := c.GetOrLoad(bg(), key, load(key))
			if err != nil || v != valueOf(key) {
				t.Errorf("store down: GetOrLoad(%q) = %q, %v; want %q, nil", key, v, err, valueOf(key))
			}
		}
		downTook = time.Since(down)
	})
	t.Logf("20 calls with the store down took %v; breaker open: %v", downTook, c.gw.breaker.Open())
	if !c.gw.breaker.Open() {
		t.Fatalf("breaker closed after 20 calls with the store down; want open")
	}
	if downTook > 5*time.Second {
		t.Errorf("20 calls with the store down took %v, want < 5s", downTook)
	}

	if err := srv.Restart(); err != nil {
		t.Fatalf("restart miniredis: %v", err)
	}
	restarted := time.Now()
	deadline := restarted.Add(5 * time.Second)
	for c.gw.breaker.Open() {
		if time.Now().After(deadline) {
			t.Fatalf("breaker still open 5s after the store came back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	closedAfter := time.Since(restarted)

	// Values are cached again: a fill, then a hit that does not call the loader. Poll, as the
	// client's pool may still hold a connection from before the restart.
	cachedAgain := false
	for i := 0; time.Now().Before(deadline); i++ {
		key := fmt.Sprintf("after-%d", i)
		before := loads.Load()
		get(key)
		get(key)
		if loads.Load()-before == 1 {
			cachedAgain = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("breaker closed %v after the restart; values cached again %v after it",
		closedAfter, time.Since(restarted))
	if !cachedAgain {
		t.Fatalf("values not cached again within 5s of the store coming back")
	}
	if c.gw.breaker.Open() {
		t.Errorf("breaker open again after the store came back")
	}
}

func TestFailOpenNoGoroutinePileUp(t *testing.T) {
	noStrays(t)
	h := startHungListener(t)
	client := failOpenClient(t, &redis.Options{Addr: h.addr()})
	c := newTestCache[string](t, NewRedisStore(client))
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return valueOf(key), nil }
	}
	within(t, 10*time.Second, "calls until the breaker opens", func() {
		for i := 0; i < 10 && !c.gw.breaker.Open(); i++ {
			_, _ = c.GetOrLoad(bg(), "k", load("k"))
		}
	})
	if !c.gw.breaker.Open() {
		t.Fatalf("breaker not open after calls on a hung store")
	}

	before := runtime.NumGoroutine()
	const calls = 1000
	var took time.Duration
	within(t, 20*time.Second, "1000 calls with the breaker open", func() {
		t0 := time.Now()
		for i := range calls {
			key := fmt.Sprintf("k%d", i%50)
			if v, err := c.GetOrLoad(bg(), key, load(key)); err != nil || v != valueOf(key) {
				t.Errorf("GetOrLoad(%q) = %q, %v", key, v, err)
				return
			}
		}
		took = time.Since(t0)
	})
	// Flights end just after their callers return, and the prober holds one hung probe at a
	// time per interval: allow slack, and a moment for the last flights to end.
	const slack = 30
	after := runtime.NumGoroutine()
	deadline := time.Now().Add(3 * time.Second)
	for after > before+slack && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	t.Logf("%d calls with the breaker open took %v; goroutines before %d, after %d", calls, took, before, after)
	if after > before+slack {
		t.Errorf("goroutines grew from %d to %d over %d calls with the breaker open", before, after, calls)
	}
}

// lookupCounter counts the read-or-lease round trips sent to the store while the cache's
// breaker was open.
type lookupCounter struct {
	Store
	open        func() bool
	lookups     atomic.Int64
	whileOpened atomic.Int64
}

func (s *lookupCounter) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	s.lookups.Add(1)
	if s.open != nil && s.open() {
		s.whileOpened.Add(1)
	}
	return s.Store.GetOrLease(ctx, key, token, leaseTTL)
}

// Callers of one key that queued behind a read-or-lease of the store (lookup.go shares one
// round trip per key at a time) must not be sent to the store again once that round trip has
// failed and opened the breaker: the breaker's promise is that callers then go straight to the
// loader. Counted, not timed: a read-or-lease sent while the breaker is open is the bug.
func TestFailOpenQueuedLookupSkipsOpenBreaker(t *testing.T) {
	noStrays(t)
	h := startHungListener(t)
	client := failOpenClient(t, &redis.Options{Addr: h.addr()})
	store := &lookupCounter{Store: NewRedisStore(client)}
	c := newTestCache[string](t, store)
	store.open = c.gw.breaker.Open

	const callers = 20
	start := make(chan struct{})
	var wg sync.WaitGroup
	durs := make([]time.Duration, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			v, err := c.GetOrLoad(bg(), "hot", func(context.Context) (string, error) { return valueOf("hot"), nil })
			durs[i] = time.Since(t0)
			if err != nil || v != valueOf("hot") {
				t.Errorf("GetOrLoad = %q, %v; want %q, nil", v, err, valueOf("hot"))
			}
		}()
	}
	within(t, 20*time.Second, "20 concurrent GetOrLoad calls on a hung store", func() {
		close(start)
		wg.Wait()
	})
	slices.Sort(durs)
	t.Logf("read-or-lease round trips: %d, of which sent with the breaker open: %d; callers took %v (fastest) .. %v (median) .. %v (slowest)",
		store.lookups.Load(), store.whileOpened.Load(), durs[0], durs[callers/2], durs[callers-1])
	if n := store.whileOpened.Load(); n != 0 {
		t.Errorf("%d read-or-lease round trip(s) sent to the store after the breaker opened, want 0: "+
			"callers queued behind the failed lookup wait a second full (connect) timeout instead of going to the loader", n)
	}
}
