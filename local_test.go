package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
			e, ok := c.l1.entries.GetEntry(key)
			if !ok {
				t.Fatalf("%s: no L1 entry", key)
			}
			if left := e.ExpiresAfter(); left <= 0 || left > max {
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
	data, _, _ := c.encode(bg(), c.cfg.prefix+"k", 1, false, 0)
	c.l1.fill("k", gen, 1, data)
	if _, ok := c.l1.entries.GetIfPresent("k"); ok {
		t.Fatal("l1Fill kept a value whose fill began before an invalidation")
	}
}

// hookStore wraps a broadcasting store and lets a test stop a call right after the store
// answered it.
type hookStore struct {
	Store
	bus          Broadcaster
	afterGet     atomic.Pointer[func(key string, lk Lookup)]
	afterFill    atomic.Pointer[func(key string, stored bool)]
	afterGetMany atomic.Pointer[func(keys []string, lks []Lookup)]
}

func newHookStore(s Store) *hookStore { return &hookStore{Store: s, bus: s.(Broadcaster)} }

func (h *hookStore) Publish(ctx context.Context, channel string, msg []byte) error {
	return h.bus.Publish(ctx, channel, msg)
}
func (h *hookStore) Subscribe(channel string) Subscription { return h.bus.Subscribe(channel) }

func (h *hookStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	lk, err := h.Store.GetOrLease(ctx, key, token, leaseTTL)
	if f := h.afterGet.Load(); f != nil && err == nil {
		(*f)(key, lk)
	}
	return lk, err
}

func (h *hookStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	lks, err := h.Store.GetOrLeaseMany(ctx, keys, token, leaseTTL)
	if f := h.afterGetMany.Load(); f != nil && err == nil {
		(*f)(keys, lks)
	}
	return lks, err
}

func (h *hookStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	stored, err := h.Store.Fill(ctx, key, token, value, ttl)
	if f := h.afterFill.Load(); f != nil && err == nil {
		(*f)(key, stored)
	}
	return stored, err
}

// gate stops the first goroutine that passes it until released.
type gate struct {
	once     sync.Once
	reached  chan struct{}
	released chan struct{}
}

func newGate() *gate { return &gate{reached: make(chan struct{}), released: make(chan struct{})} }

func (g *gate) pass() {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.reached)
		<-g.released
	}
}

// messages returns a channel that gets a value each time c applies a message from another
// instance.
func messages[T any](c *Cache[T]) chan struct{} {
	ch := make(chan struct{}, 1000)
	f := func() { ch <- struct{}{} }
	c.l1.onMessage.Store(&f)
	return ch
}

func waitFor(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not happen within 20s", what)
	}
}

// An L1 fill that began before an invalidation is never served, whether the invalidation is
// this instance's own or delivered from another, and whether the value came from a store hit
// or from a load the store accepted.
func TestLocalLateFillIsNeverServed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		_ = b.newStore(t) // a server (miniredis) or store (memory) that outlives the subtests
		for _, tc := range []struct {
			name   string
			viaHit bool // the value comes from a store hit (else from a load and an accepted fill)
			remote bool // the invalidation comes from the other instance
		}{
			{"store hit, remote invalidation", true, true},
			{"store hit, own invalidation", true, false},
			{"accepted fill, remote invalidation", false, true},
			{"accepted fill, own invalidation", false, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				prefix := testPrefix(t)
				opts := append(append(append([]Option{}, b.opts...), slowMachine...), l1Opts(WithPrefix(prefix))...)
				hs := newHookStore(b.newStore(t))
				slow := newTestCache[int64](t, hs, opts...)
				other := newTestCache[int64](t, b.newStore(t), opts...)
				waitLive(t, slow, other)
				got := messages(slow)

				var sot atomic.Int64
				sot.Store(1)
				load := func(context.Context) (int64, error) { return sot.Load(), nil }
				if tc.viaHit {
					if _, err := other.GetOrLoad(bg(), "k", load); err != nil { // the store holds 1
						t.Fatal(err)
					}
				}
				g := newGate()
				if tc.viaHit {
					f := func(key string, lk Lookup) {
						if lk.Value != nil {
							g.pass()
						}
					}
					hs.afterGet.Store(&f)
				} else {
					f := func(key string, stored bool) {
						if stored {
							g.pass()
						}
					}
					hs.afterFill.Store(&f)
				}
				res := make(chan int64, 1)
				go func() {
					v, err := slow.GetOrLoad(bg(), "k", load)
					if err != nil {
						t.Error(err)
					}
					res <- v
				}()
				waitFor(t, g.reached, "the read of the old value")
				sot.Store(2)
				if tc.remote {
					if err := other.Invalidate(bg(), "k"); err != nil {
						t.Fatal(err)
					}
					waitFor(t, got, "the delivery of the invalidation")
				} else if err := slow.Invalidate(bg(), "k"); err != nil {
					t.Fatal(err)
				}
				close(g.released)
				if v := <-res; v != 1 {
					t.Fatalf("the racing read returned %d, want 1 (it began before the write)", v)
				}
				if v, err := slow.GetOrLoad(bg(), "k", load); err != nil || v != 2 {
					t.Fatalf("after the invalidation: %d, %v; want 2 (the late fill must not be served)", v, err)
				}
			})
		}
	})
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

// While the subscription is down the L1 is neither read nor filled, and nothing stored before
// a loss or a resubscription is served after it; a message it cannot parse flushes it.
func TestLocalSubscriptionLossFlushesAndBypasses(t *testing.T) {
	ms := NewMemoryStore()
	defer ms.Close()
	bus := &manualBus{ready: make(chan struct{})}
	c := newTestCache[int64](t, manualStore{ms, bus}, l1Opts()...)
	<-bus.ready
	var n counter
	read := func(want int64, what string) {
		t.Helper()
		if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != want {
			t.Fatalf("%s: %d, %v; want %d", what, v, err, want)
		}
	}
	if c.l1.isLive() {
		t.Fatal("live before the subscription was confirmed")
	}
	read(1, "before subscription")
	removeBehindBack(t, c, "k")
	read(2, "before subscription, no L1")

	bus.emit(SubscriptionLive, nil)
	read(2, "store hit") // fills L1
	removeBehindBack(t, c, "k")
	read(2, "L1 hit")

	bus.emit(SubscriptionLost, nil)
	read(3, "subscription lost: L1 not read")
	removeBehindBack(t, c, "k")
	read(4, "subscription lost: L1 not filled")

	bus.emit(SubscriptionLive, nil)
	read(4, "store hit after resubscription")
	removeBehindBack(t, c, "k")
	read(4, "L1 hit after resubscription")

	bus.emit(SubscriptionLost, nil)
	bus.emit(SubscriptionLive, nil)
	read(5, "an entry from before a loss")
	removeBehindBack(t, c, "k")
	read(5, "L1 hit")

	bus.emit(SubscriptionMessage, []byte("not a message of ours"))
	read(6, "after an unreadable message")

	bus.emit(SubscriptionMessage, encodeKeysMsg("another instance", []string{"other", "k"}))
	removeBehindBack(t, c, "k")
	read(7, "after a message naming the key")
	removeBehindBack(t, c, "k")
	bus.emit(SubscriptionMessage, encodeKeysMsg(c.gw.tokens.id, []string{"k"}))
	read(7, "its own message changes nothing")
	bus.emit(SubscriptionMessage, encodeAllMsg("another instance", "*"))
	read(8, "after a pattern message")
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

func TestLocalInvalidationReachesOtherInstances(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[int64](t, b, 3, l1Opts()...)
		waitLive(t, cs...)
		var version atomic.Int64
		version.Store(1)
		load := func(context.Context) (int64, error) { return version.Load(), nil }
		for _, c := range cs {
			for _, k := range []string{"a", "b", "p:1", "p:2"} {
				if _, err := c.GetOrLoad(bg(), k, load); err != nil {
					t.Fatal(err)
				}
			}
		}
		version.Store(2)
		if err := cs[0].Invalidate(bg(), "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := cs[1].InvalidatePattern(bg(), "p:*"); err != nil {
			t.Fatal(err)
		}
		for i, c := range cs {
			for k, want := range map[string]int64{"a": 2, "b": 1, "p:1": 2, "p:2": 2} {
				eventually(t, 20*time.Second, fmt.Sprintf("instance %d key %s", i, k), func() (bool, string) {
					v, err := c.GetOrLoad(bg(), k, load)
					return err == nil && v == want, fmt.Sprintf("got %d, %v; want %d", v, err, want)
				})
			}
		}
	})
}

// eventually polls cond until it holds, failing the test after d (a generous bound).
func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, d, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// coherenceRun drives writers and readers over cs for d and checks, on each instance, that no
// read returns a version older than one whose Invalidate had returned on that instance before
// the read began; at rest, every instance must agree with the source of truth. It returns how
// many invalidations each instance made.
func coherenceRun(t *testing.T, cs []*Cache[int64], keys int, d time.Duration, during func(stop <-chan struct{})) []int64 {
	sot := make([]atomic.Int64, keys)
	wmu := make([]sync.Mutex, keys)
	invDone := make([][]atomic.Int64, len(cs)) // per instance and key
	for i := range invDone {
		invDone[i] = make([]atomic.Int64, keys)
	}
	key := func(k int) string { return fmt.Sprintf("k%d", k) }
	loader := func(k int) func(context.Context) (int64, error) {
		return func(context.Context) (int64, error) { return sot[k].Load(), nil }
	}
	var reads, loads, stale atomic.Int64
	writes := make([]atomic.Int64, len(cs))
	counted := func(k int) func(context.Context) (int64, error) {
		return func(ctx context.Context) (int64, error) { loads.Add(1); return loader(k)(ctx) }
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() { // a writer per instance
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := rand.N(keys)
				wmu[k].Lock()
				v := sot[k].Add(1)
				for attempt := 0; ; attempt++ {
					err := c.Invalidate(bg(), key(k))
					if err == nil {
						break
					}
					if attempt == 50 {
						t.Errorf("Invalidate keeps failing: %v", err)
						break
					}
				}
				invDone[i][k].Store(v)
				writes[i].Add(1)
				wmu[k].Unlock()
				time.Sleep(time.Duration(rand.N(3)) * time.Millisecond)
			}
		}()
		for range 3 {
			wg.Add(1)
			go func() { // readers
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					k := rand.N(keys)
					floor := invDone[i][k].Load()
					v, err := c.GetOrLoad(bg(), key(k), counted(k))
					reads.Add(1)
					if err != nil {
						t.Errorf("instance %d: %v", i, err)
						continue
					}
					if v < floor && stale.Add(1) <= 5 {
						t.Errorf("instance %d read %s = %d after its own Invalidate of version %d had returned", i, key(k), v, floor)
					}
				}
			}()
		}
	}
	if during != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			during(stop)
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	t.Logf("%d reads, %d loads, %d stale", reads.Load(), loads.Load(), stale.Load())

	waitLive(t, cs...)
	for i, c := range cs {
		for k := range keys {
			eventually(t, 20*time.Second, fmt.Sprintf("at rest, instance %d %s", i, key(k)), func() (bool, string) {
				v, err := c.GetOrLoad(bg(), key(k), loader(k))
				return err == nil && v == sot[k].Load(), fmt.Sprintf("got %d, %v; source of truth %d", v, err, sot[k].Load())
			})
		}
	}
	out := make([]int64, len(cs))
	for i := range out {
		out[i] = writes[i].Load()
	}
	return out
}

func TestLocalThreeInstancesStayCoherent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[int64](t, b, 3, l1Opts(slowMachine...)...)
		waitLive(t, cs...)
		// 2 s per store in make verify; 1 s in make test (-short).
		d := 2 * time.Second
		if testing.Short() {
			d = time.Second
		}
		coherenceRun(t, cs, 8, d, nil)
	})
}

// A load whose fill the store refused (an invalidation voided its lease) is returned to the
// caller that started it, but never kept in L1, even before the invalidation's message
// arrives.
func TestLocalRefusedFillStaysOut(t *testing.T) {
	ms := NewMemoryStore()
	defer ms.Close()
	bus := &manualBus{ready: make(chan struct{})}
	c := newTestCache[int64](t, manualStore{ms, bus}, l1Opts()...)
	<-bus.ready
	bus.emit(SubscriptionLive, nil)

	var sot atomic.Int64
	sot.Store(1)
	started, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	load := func(context.Context) (int64, error) {
		v := sot.Load()
		if first.CompareAndSwap(false, true) {
			close(started)
			<-release
		}
		return v, nil
	}
	res := make(chan int64, 1)
	go func() {
		v, err := c.GetOrLoad(bg(), "k", load)
		if err != nil {
			t.Error(err)
		}
		res <- v
	}()
	waitFor(t, started, "the load")
	sot.Store(2)
	removeBehindBack(t, c, "k") // another instance's Invalidate; its message is not delivered yet
	close(release)
	if v := <-res; v != 1 {
		t.Fatalf("the caller that loaded got %d, want its own load's 1", v)
	}
	if _, ok := c.l1.entries.GetIfPresent("k"); ok {
		t.Fatal("a refused fill was kept in L1")
	}
	if v, err := c.GetOrLoad(bg(), "k", load); err != nil || v != 2 {
		t.Fatalf("next read: %d, %v; want 2", v, err)
	}
}

// A batch that waited for another process's lease keeps the value it then read in L1.
func TestLocalBatchWaitFillsL1(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		opts := append(append(append([]Option{}, b.opts...), slowMachine...), l1Opts(WithPrefix(prefix))...)
		hs := newHookStore(b.newStore(t))
		batcher := newTestCache[int64](t, hs, opts...)
		loader := newTestCache[int64](t, b.newStore(t), opts...)
		waitLive(t, batcher, loader)

		started, release := make(chan struct{}), make(chan struct{})
		go func() {
			_, err := loader.GetOrLoad(bg(), "k", func(context.Context) (int64, error) {
				close(started)
				<-release
				return 1, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
		waitFor(t, started, "the other instance's load")
		held := make(chan struct{})
		var once sync.Once
		f := func(keys []string, lks []Lookup) {
			if len(lks) == 1 && lks[0].Holder != "" {
				once.Do(func() { close(held) })
			}
		}
		hs.afterGetMany.Store(&f)
		var batchLoads atomic.Int64
		load := func(_ context.Context, missing []string) (map[string]int64, error) {
			batchLoads.Add(1)
			return map[string]int64{"k": 2}, nil
		}
		res := make(chan map[string]int64, 1)
		go func() {
			m, err := batcher.GetOrLoadMany(bg(), []string{"k"}, load)
			if err != nil {
				t.Error(err)
			}
			res <- m
		}()
		waitFor(t, held, "the batch finding the key leased")
		close(release)
		if m := <-res; m["k"] != 1 {
			t.Fatalf("the batch got %v, want the other instance's 1", m)
		}
		removeBehindBack(t, batcher, "k")
		if m, err := batcher.GetOrLoadMany(bg(), []string{"k"}, load); err != nil || m["k"] != 1 || batchLoads.Load() != 0 {
			t.Fatalf("from L1: %v, %v, %d batch loads; want 1 without a load", m, err, batchLoads.Load())
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
