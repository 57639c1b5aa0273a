package cacheaside

// Guarantee 3, fail open: with the store refusing connections, hanging, or restarting,
// GetOrLoad returns the loader's value with no error, never waits on the store for long, and
// stops waiting on it at all once the circuit breaker opens. Clients are built with go-redis
// defaults on purpose: those are what users hand us (see /work/shared/NOTES-failure.md).
//
// Timing bounds here are generous upper bounds that catch a hang (or a full go-redis timeout
// per call), never tight assertions; the measured times are logged.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// refusedAddr returns a local address with nothing listening on it.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// strayMarkers name the goroutines a fail-open test starts, directly or through the client:
// every one of them must be gone once the test's cleanups (cache, client, server) have run.
var strayMarkers = [][]byte{
	[]byte("github.com/redis/go-redis/"),
	[]byte("github.com/alicebob/miniredis/"),
	[]byte("cacheaside.guard"),
	[]byte("cacheaside.(*Cache"),
	[]byte("cacheaside/internal/breaker"),
	[]byte("cacheaside.startHungListener"),
}

// strays returns the stacks of the goroutines that strayMarkers name.
func strays() [][]byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out [][]byte
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		for _, m := range strayMarkers {
			if bytes.Contains(g, m) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// noStrays fails the test if, after all its other cleanups, goroutines of the client, the
// server or the cache outlive it (more than there were when it began) for more than 5 s. Call
// it first in the test, so its cleanup runs last.
func noStrays(t *testing.T) {
	t.Helper()
	base := len(strays())
	t.Cleanup(func() {
		start := time.Now()
		left := strays()
		for len(left) > base && time.Since(start) < 5*time.Second {
			time.Sleep(20 * time.Millisecond)
			left = strays()
		}
		if len(left) > base {
			t.Errorf("%d goroutines of the client, server or cache outlived the test by 5s (%d before it):\n%s",
				len(left), base, bytes.Join(left, []byte("\n\n")))
		} else if waited := time.Since(start); waited > 100*time.Millisecond {
			t.Logf("client/cache goroutines took %v to end after cleanup", waited)
		}
	})
}

// hungListener accepts connections and never writes a byte: a hung Redis.
type hungListener struct {
	ln       net.Listener
	mu       sync.Mutex
	conns    []net.Conn
	accepted atomic.Int64
	done     chan struct{}
}

// startHungListener starts a hung listener, closed (with every connection it accepted) at
// cleanup. Start it before the client, so the client is closed first.
func startHungListener(t *testing.T) *hungListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hungListener{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			h.mu.Lock()
			h.conns = append(h.conns, conn)
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-h.done
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.conns {
			c.Close()
		}
	})
	return h
}

func (h *hungListener) addr() string { return h.ln.Addr().String() }

// failOpenClient returns a go-redis client closed at cleanup.
func failOpenClient(t *testing.T, opt *redis.Options) *redis.Client {
	t.Helper()
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func valueOf(key string) string { return "value-of-" + key }

// checkFailsOpen runs the common fail-open checks on a cache whose store is unusable (and has
// never answered): 50 sequential GetOrLoad calls, a GetOrLoadMany and an Invalidate.
func checkFailsOpen(t *testing.T, c *Cache[string]) {
	t.Helper()
	const calls = 50
	var loads atomic.Int64
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) {
			loads.Add(1)
			return valueOf(key), nil
		}
	}

	durs := make([]time.Duration, calls)
	openAfterFirst := false
	var total time.Duration
	within(t, 30*time.Second, "50 sequential GetOrLoad calls on an unusable store", func() {
		start := time.Now()
		for i := range calls {
			key := fmt.Sprintf("key-%d", i%7)
			t0 := time.Now()
			v, err := c.GetOrLoad(bg(), key, load(key))
			durs[i] = time.Since(t0)
			if err != nil || v != valueOf(key) {
				t.Errorf("call %d: GetOrLoad(%q) = %q, %v; want %q, nil", i, key, v, err, valueOf(key))
			}
			if i == 0 {
				openAfterFirst = c.gw.breaker.Open()
			}
		}
		total = time.Since(start)
	})
	var last40 time.Duration
	for _, d := range durs[calls-40:] {
		last40 += d
	}
	t.Logf("50 calls: total %v, first %v, slowest %v, last 40 together %v; breaker open after first call: %v; loader calls %d",
		total, durs[0], slices.Max(durs), last40, openAfterFirst, loads.Load())

	if total > 5*time.Second {
		t.Errorf("50 calls took %v, want < 5s: the store is not bounded, or every call waits on it", total)
	}
	if !c.gw.breaker.Open() {
		t.Errorf("breaker is closed after 50 calls on an unusable store; want open")
	}
	if last40 > time.Second {
		t.Errorf("the last 40 calls took %v together, want < 1s: calls still wait on the store with the breaker open", last40)
	}
	if got := loads.Load(); got != calls {
		t.Errorf("loader called %d times, want %d (one per sequential call, nothing can be cached)", got, calls)
	}

	keys := []string{"m1", "m2", "m3", "m2"}
	var gotMissing []string
	var m map[string]string
	var err error
	var manyTook time.Duration
	within(t, 10*time.Second, "GetOrLoadMany on an unusable store", func() {
		t0 := time.Now()
		m, err = c.GetOrLoadMany(bg(), keys, func(_ context.Context, missing []string) (map[string]string, error) {
			gotMissing = slices.Clone(missing)
			out := make(map[string]string, len(missing))
			for _, k := range missing {
				out[k] = valueOf(k)
			}
			return out, nil
		})
		manyTook = time.Since(t0)
	})
	t.Logf("GetOrLoadMany took %v, loader asked for %v", manyTook, gotMissing)
	want := map[string]string{"m1": valueOf("m1"), "m2": valueOf("m2"), "m3": valueOf("m3")}
	if err != nil || !mapsEqual(m, want) {
		t.Errorf("GetOrLoadMany = %v, %v; want %v, nil", m, err, want)
	}
	slices.Sort(gotMissing)
	if !slices.Equal(gotMissing, []string{"m1", "m2", "m3"}) {
		t.Errorf("GetOrLoadMany's loader got %v, want every key once: [m1 m2 m3]", gotMissing)
	}
	if manyTook > 2*time.Second {
		t.Errorf("GetOrLoadMany took %v with the breaker open, want < 2s", manyTook)
	}

	var invErr error
	var invTook time.Duration
	// Invalidate has its own budget (10 s by default, retrying): the caller's context bounds it
	// sooner, and the error says the keys may be stale.
	within(t, 10*time.Second, "Invalidate on an unusable store", func() {
		ctx, cancel := context.WithTimeout(bg(), 1500*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		invErr = c.Invalidate(ctx, "key-1", "m1")
		invTook = time.Since(t0)
	})
	t.Logf("Invalidate took %v and returned %v", invTook, invErr)
	if !errors.Is(invErr, ErrInvalidationFailed) || !errors.Is(invErr, context.DeadlineExceeded) {
		t.Errorf("Invalidate on an unusable store returned %v, want ErrInvalidationFailed and the caller's deadline", invErr)
	}
	if invTook > 4*time.Second {
		t.Errorf("Invalidate took %v, want about 1.5s (bounded by the caller's context)", invTook)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestFailOpenRefusedPort(t *testing.T) {
	noStrays(t)
	addr := refusedAddr(t)
	client := failOpenClient(t, &redis.Options{Addr: addr}) // defaults: dial retries ~1.7 s per call
	c := newTestCache[string](t, NewRedisStore(client))
	checkFailsOpen(t, c)
}

func TestFailOpenHungListener(t *testing.T) {
	noStrays(t)
	h := startHungListener(t)
	client := failOpenClient(t, &redis.Options{Addr: h.addr()}) // defaults: ReadTimeout 3 s
	c := newTestCache[string](t, NewRedisStore(client))
	checkFailsOpen(t, c)
	t.Logf("hung listener accepted %d connections", h.accepted.Load())

	t.Run("concurrent callers on one key", func(t *testing.T) {
		// A fresh cache, so the callers arrive while the first read is still hanging.
		c := newTestCache[string](t, NewRedisStore(client))
		checkConcurrentOneKey(t, c)
	})
}

// checkConcurrentOneKey has 20 goroutines ask for one key at once while the store hangs: all
// get the value, and in-process coalescing keeps the loader to very few calls.
//
// A fail-open load is joined only by calls that arrived before it began (loadWithoutStore),
// and calls reach it in waves: each after its lookup failed, one store timeout after the
// lookup ahead of it on the key. So the loads are one per wave, and a load of a fixed 100 ms
// counted 4 waves on a loaded machine under -race, where 20 goroutines take a while to all
// get a CPU. Each load therefore lasts until every caller has entered GetOrLoad and the
// breaker is open (no lookup starts any more), then long enough for the lookups still in
// flight to fail (one running and one queued per key, a store timeout each) and 100 ms: the
// callers then reach the first load, or the one after it, whatever the scheduling.
func checkConcurrentOneKey(t *testing.T, c *Cache[string]) {
	t.Helper()
	const callers = 20
	var loads, entered atomic.Int64
	load := func(ctx context.Context) (string, error) {
		loads.Add(1)
		for deadline := time.Now().Add(10 * time.Second); entered.Load() < callers || !c.gw.breaker.Open(); {
			if time.Now().After(deadline) {
				break // the checks below fail: the breaker stays closed, or callers were lost
			}
			time.Sleep(time.Millisecond)
		}
		select { // a load that takes a while, so the callers overlap it
		case <-time.After(2*c.cfg.storeTimeout + 100*time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		return valueOf("hot"), nil
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	durs := make([]time.Duration, callers)
	errs := make([]error, callers)
	vals := make([]string, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			entered.Add(1)
			vals[i], errs[i] = c.GetOrLoad(bg(), "hot", load)
			durs[i] = time.Since(t0)
		}()
	}
	within(t, 20*time.Second, "20 concurrent GetOrLoad calls on a hung store", func() {
		close(start)
		wg.Wait()
	})
	t.Logf("%d concurrent callers: loader calls %d, fastest %v, slowest %v, breaker open: %v",
		callers, loads.Load(), slices.Min(durs), slices.Max(durs), c.gw.breaker.Open())
	for i := range callers {
		if errs[i] != nil || vals[i] != valueOf("hot") {
			t.Errorf("caller %d: GetOrLoad = %q, %v; want %q, nil", i, vals[i], errs[i], valueOf("hot"))
		}
	}
	if n := loads.Load(); n < 1 || n > 3 {
		t.Errorf("loader called %d times for %d concurrent callers of one key, want 1..3", n, callers)
	}
	if slowest := slices.Max(durs); slowest > 5*time.Second {
		t.Errorf("slowest concurrent caller took %v, want < 5s", slowest)
	}
	if !c.gw.breaker.Open() {
		t.Errorf("breaker closed after the hung store failed; want open")
	}
}

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

func TestFailOpenContextTimeoutsEnabled(t *testing.T) {
	noStrays(t)
	h := startHungListener(t)
	client := failOpenClient(t, &redis.Options{Addr: h.addr(), ContextTimeoutEnabled: true})
	store := NewRedisStore(client)
	if !store.trusted {
		t.Fatalf("RedisStore over a client with ContextTimeoutEnabled does not take the goroutine-free path")
	}
	c := newTestCache[string](t, store)
	checkFailsOpen(t, c)

	t.Run("concurrent callers on one key", func(t *testing.T) {
		c := newTestCache[string](t, NewRedisStore(client))
		checkConcurrentOneKey(t, c)
	})
}

// slowStore is a healthy store that takes a while to answer a read, honouring ctx like a
// client with ContextTimeoutEnabled: a caller can leave in the middle of it.
type slowStore struct {
	Store
	delay time.Duration
}

func (s slowStore) wait(ctx context.Context) error {
	tm := time.NewTimer(s.delay)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slowStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	if err := s.wait(ctx); err != nil {
		return Lookup{}, err
	}
	return s.Store.GetOrLease(ctx, key, token, leaseTTL)
}

func (s slowStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Store.GetOrLeaseMany(ctx, keys, token, leaseTTL)
}

func TestFailOpenCallerCancelIsNotAStoreFailure(t *testing.T) {
	noStrays(t)
	srv := miniredis.RunT(t)
	client := failOpenClient(t, &redis.Options{Addr: srv.Addr()})
	isCancel := func(err error) bool { return errors.Is(err, context.Canceled) }
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return valueOf(key), nil }
	}

	t.Run("already cancelled", func(t *testing.T) {
		// A cold cache: before the store's first answer, one failure would trip the breaker.
		c := newTestCache[string](t, NewRedisStore(client))
		ctx, cancel := context.WithCancel(bg())
		cancel()
		for i := range 200 {
			key := fmt.Sprintf("k%d", i%10)
			if _, err := c.GetOrLoad(ctx, key, load(key)); !isCancel(err) {
				t.Fatalf("GetOrLoad with a cancelled context = %v, want context.Canceled", err)
			}
		}
		if _, err := c.GetOrLoadMany(ctx, []string{"a", "b"}, func(context.Context, []string) (map[string]string, error) {
			return nil, nil
		}); !isCancel(err) {
			t.Fatalf("GetOrLoadMany with a cancelled context = %v, want context.Canceled", err)
		}
		if c.gw.breaker.Open() {
			t.Fatalf("breaker opened by callers whose context was cancelled")
		}
	})

	t.Run("cancelled during the store call of a cold cache", func(t *testing.T) {
		// The read takes 30 ms (under the store timeout) and every caller leaves after 5 ms,
		// in the middle of it, before the store has ever answered this cache.
		store := slowStore{Store: NewRedisStore(client), delay: 30 * time.Millisecond}
		for i := range 10 {
			c := newTestCache[string](t, store)
			ctx, cancel := context.WithCancel(bg())
			time.AfterFunc(5*time.Millisecond, cancel)
			var err error
			within(t, 5*time.Second, "GetOrLoad cancelled mid-call", func() {
				_, err = c.GetOrLoad(ctx, "k", load("k"))
			})
			if !isCancel(err) {
				t.Fatalf("cache %d: GetOrLoad cancelled during the store call = %v, want context.Canceled", i, err)
			}
			ctx, cancel = context.WithCancel(bg())
			time.AfterFunc(5*time.Millisecond, cancel)
			within(t, 5*time.Second, "GetOrLoadMany cancelled mid-call", func() {
				_, err = c.GetOrLoadMany(ctx, []string{"a", "b"}, func(_ context.Context, missing []string) (map[string]string, error) {
					return map[string]string{}, nil
				})
			})
			if !isCancel(err) {
				t.Fatalf("cache %d: GetOrLoadMany cancelled during the store call = %v, want context.Canceled", i, err)
			}
			if c.gw.breaker.Open() {
				t.Fatalf("cache %d: breaker opened by a caller that left during the store call", i)
			}
			// The store is fine: the cache still uses it.
			if v, err := c.GetOrLoad(bg(), "k2", load("k2")); err != nil || v != valueOf("k2") {
				t.Fatalf("cache %d: GetOrLoad after the cancellations = %q, %v", i, v, err)
			}
			if c.gw.breaker.Open() {
				t.Fatalf("cache %d: breaker open after a successful call", i)
			}
		}
	})

	t.Run("cancelled at random points", func(t *testing.T) {
		// The store timeout is raised from 50 ms so that only a misattributed cancellation can
		// open the breaker: miniredis runs each script on a fresh Lua state under one lock, and
		// with -race on a small machine, plus the operations that cancelled callers leave
		// running on the client's pool, it can genuinely take longer than 50 ms to answer.
		c := newTestCache[string](t, NewRedisStore(client), WithStoreTimeout(time.Second))
		const workers, perWorker = 8, 100
		var ok, cancelled atomic.Int64
		var sawOpen atomic.Bool
		var wg sync.WaitGroup
		slowLoad := func(key string) func(context.Context) (string, error) {
			return func(ctx context.Context) (string, error) {
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
				return valueOf(key), nil
			}
		}
		within(t, 30*time.Second, "randomly cancelled calls", func() {
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range perWorker {
						// Mostly fresh keys, some shared: a key whose lookup a cancelled
						// caller left behind stays leased (see
						// TestFailOpenCancelledLookupLeavesNoOrphanLease), and its later
						// callers can only wait for their own cancellation.
						key := fmt.Sprintf("r%d-%d", w, i)
						if i%4 == 0 {
							key = fmt.Sprintf("shared%d", i%3)
						}
						ctx, cancel := context.WithCancel(bg())
						tm := time.AfterFunc(time.Duration(rand.IntN(20000))*time.Microsecond, cancel)
						v, err := c.GetOrLoad(ctx, key, slowLoad(key))
						tm.Stop()
						cancel()
						switch {
						case err == nil && v == valueOf(key):
							ok.Add(1)
						case isCancel(err):
							cancelled.Add(1)
						default:
							t.Errorf("GetOrLoad(%q) = %q, %v; want the value or context.Canceled", key, v, err)
						}
						if c.gw.breaker.Open() {
							sawOpen.Store(true)
						}
						if i%10 == 0 {
							_ = c.Invalidate(bg(), key) // keep some misses coming
						}
					}
				}()
			}
			wg.Wait()
		})
		t.Logf("%d calls: %d returned the value, %d were cancelled", workers*perWorker, ok.Load(), cancelled.Load())
		if sawOpen.Load() || c.gw.breaker.Open() {
			t.Fatalf("breaker opened on a healthy store by callers cancelling their contexts")
		}
	})
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

// startDelayProxy forwards TCP connections to target, delaying every chunk of the server's
// replies by delay: a store that executes commands at once but whose answers arrive late. It
// is closed, with its connections, at cleanup.
func startDelayProxy(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, cs...)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			track(client, server)
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(server, client)
				server.Close()
			}()
			go func() {
				defer wg.Done()
				defer client.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						time.Sleep(delay)
						if _, werr := client.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// A caller that leaves while its read-or-lease is on the wire must not leave the key leased
// to nobody. The store executes the command (granting this call's token the lease) and the
// reply arrives after the caller left; RedisStore's guard returns at the caller's
// cancellation while the command goes on. Cache.GetOrLoad then returns ctx.Err() and drops
// the token, unlike a lookup that failed on the store's side, whose token it fills under
// (loadWithoutStore). Nothing loads under the lease and nothing releases it: every later
// caller of the key, in every process, waits for it to expire (the lease TTL: the load
// timeout, 10 s by default).
func TestFailOpenCancelledLookupLeavesNoOrphanLease(t *testing.T) {
	noStrays(t)
	srv := miniredis.RunT(t)
	client := failOpenClient(t, &redis.Options{Addr: startDelayProxy(t, srv.Addr(), 30*time.Millisecond)})
	prefix := testPrefix(t)
	// A store timeout well above the proxy's delay: every store operation succeeds.
	c := newTestCache[string](t, NewRedisStore(client), WithPrefix(prefix), WithStoreTimeout(time.Second))
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return valueOf(key), nil }
	}
	if v, err := c.GetOrLoad(bg(), "warm", load("warm")); err != nil || v != valueOf("warm") {
		t.Fatalf("warm-up GetOrLoad = %q, %v", v, err)
	}

	// leaveMidLookup runs call(ctx, n) on a context cancelled 5 ms in, while the store's reply
	// is still delayed, until the store holds a lease for key(n) that a call was granted
	// (under load, a call may be cancelled before its command is sent), and returns that n.
	leaveMidLookup := func(t *testing.T, key func(n int) string, call func(ctx context.Context, n int) error) int {
		t.Helper()
		for n := range 5 {
			ctx, cancel := context.WithCancel(bg())
			time.AfterFunc(5*time.Millisecond, cancel)
			if err := call(ctx, n); !errors.Is(err, context.Canceled) {
				t.Fatalf("call cancelled mid-lookup = %v, want context.Canceled", err)
			}
			deadline := time.Now().Add(500 * time.Millisecond)
			for time.Now().Before(deadline) {
				if srv.Exists(prefix + key(n)) {
					return n
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		t.Fatalf("the store never saw a cancelled lookup: scenario not reproduced")
		return 0
	}

	t.Run("GetOrLoad", func(t *testing.T) {
		key := func(n int) string { return fmt.Sprintf("k%d", n) }
		n := leaveMidLookup(t, key, func(ctx context.Context, n int) error {
			_, err := c.GetOrLoad(ctx, key(n), load(key(n)))
			return err
		})
		ctx, cancel := context.WithTimeout(bg(), time.Second)
		defer cancel()
		t0 := time.Now()
		v, err := c.GetOrLoad(ctx, key(n), load(key(n)))
		t.Logf("next GetOrLoad of the key: %q, %v after %v", v, err, time.Since(t0))
		if err != nil || v != valueOf(key(n)) {
			t.Errorf("GetOrLoad after a caller left mid-lookup = %q, %v within 1s; want %q, nil: "+
				"the lease granted to the caller that left is held by nobody until its TTL", v, err, valueOf(key(n)))
		}
	})

	t.Run("GetOrLoadMany", func(t *testing.T) {
		loadMany := func(_ context.Context, missing []string) (map[string]string, error) {
			out := make(map[string]string, len(missing))
			for _, k := range missing {
				out[k] = valueOf(k)
			}
			return out, nil
		}
		keys := func(n int) []string { return []string{fmt.Sprintf("m%d-a", n), fmt.Sprintf("m%d-b", n)} }
		n := leaveMidLookup(t, func(n int) string { return keys(n)[0] }, func(ctx context.Context, n int) error {
			_, err := c.GetOrLoadMany(ctx, keys(n), loadMany)
			return err
		})
		ctx, cancel := context.WithTimeout(bg(), time.Second)
		defer cancel()
		t0 := time.Now()
		m, err := c.GetOrLoadMany(ctx, keys(n), loadMany)
		t.Logf("next GetOrLoadMany of the keys: %v, %v after %v", m, err, time.Since(t0))
		if err != nil || len(m) != 2 {
			t.Errorf("GetOrLoadMany after a caller left mid-lookup = %v, %v within 1s; want both values, nil: "+
				"the leases granted to the caller that left are held by nobody until their TTL", m, err)
		}
	})
}
