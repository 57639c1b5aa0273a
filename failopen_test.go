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
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// goroutineStacks returns the stack of every goroutine, one per element.
func goroutineStacks() [][]byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Split(buf[:n], []byte("\n\n"))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// strays returns the stacks of the goroutines that strayMarkers name.
func strays() [][]byte {
	var out [][]byte
	for _, g := range goroutineStacks() {
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
// get a CPU. Each load therefore lasts until the breaker is open (no lookup starts any more)
// and every caller still in GetOrLoad is parked on a flight (callersOnFlights), then a while:
// the callers then reach the first load, or the one after it, whatever the scheduling. (A
// margin of time instead of the parking, 100 ms past two store timeouts, still saw 4 loads
// in a CI run under -race.)
func checkConcurrentOneKey(t *testing.T, c *Cache[string]) {
	t.Helper()
	const callers = 20
	var loads, entered atomic.Int64
	load := func(ctx context.Context) (string, error) {
		loads.Add(1)
		for deadline := time.Now().Add(10 * time.Second); entered.Load() < callers || !c.gw.breaker.Open() || !callersOnFlights(); {
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

// callersOnFlights reports whether every goroutine of checkConcurrentOneKey that is still
// alive is parked on a flight: sharing a load (await) or waiting for the running one to end
// before it shares the next (loadWithoutStore). None is still looking up the store.
func callersOnFlights() bool {
	for _, g := range goroutineStacks() {
		if !bytes.Contains(g, []byte("created by github.com/cacheaside/cacheaside.checkConcurrentOneKey")) {
			continue
		}
		if !bytes.Contains(g, []byte("cacheaside.await[")) && !bytes.Contains(g, []byte(").loadWithoutStore(")) {
			return false
		}
	}
	return true
}
