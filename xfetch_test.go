package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The XFetch decision refreshes at remaining time r before expiry with probability
// exp(-r/(delta*beta)). 100,000 draws per point from a seeded generator: the standard error of
// a frequency is at most 0.0016, so the 0.01 tolerance is over 6 standard errors.
func TestShouldRefreshMatchesFormula(t *testing.T) {
	const (
		samples   = 100_000
		tolerance = 0.01
	)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	for _, delta := range []time.Duration{time.Millisecond, 50 * time.Millisecond, 2 * time.Second} {
		for _, beta := range []float64{0.5, 1, 3} {
			scale := float64(delta) * beta
			for _, x := range []float64{0.01, 0.1, 0.5, 1, 2, 4, 8} { // remaining, in units of delta*beta
				remaining := time.Duration(x * scale)
				rng := rand.New(rand.NewPCG(uint64(delta), math.Float64bits(beta*x)))
				hits := 0
				for range samples {
					if shouldRefresh(now, now+int64(remaining), delta, beta, 1-rng.Float64()) {
						hits++
					}
				}
				got, want := float64(hits)/samples, math.Exp(-float64(remaining)/scale)
				require.InDelta(t, want, got, tolerance, "delta %v beta %v remaining %v", delta, beta, remaining)
			}
		}
	}
}

func TestShouldRefreshEdges(t *testing.T) {
	const now = int64(1_700_000_000_000_000_000)
	d := 50 * time.Millisecond
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		u := 1 - rng.Float64()
		// beta = 0 (or delta 0: an instant load) never refreshes before expiry...
		require.False(t, shouldRefresh(now, now+1, d, 0, u))
		require.False(t, shouldRefresh(now, now+1, 0, 1, u))
		// ...and every decision refreshes at or past it.
		require.True(t, shouldRefresh(now, now, d, 0, u))
		require.True(t, shouldRefresh(now, now-int64(time.Hour), d, 1, u))
	}
	// u = 1: -ln(u) = 0, no early refresh however close.
	require.False(t, shouldRefresh(now, now+1, d, 1, 1))
	// u = 0 is outside (0,1]: clamped to the smallest positive float, where -ln(u) is about
	// 744, so it refreshes up to about 744*delta*beta before expiry, not forever before.
	require.True(t, shouldRefresh(now, now+int64(700*d), d, 1, 0))
	require.False(t, shouldRefresh(now, now+int64(800*d), d, 1, 0))
	require.False(t, shouldRefresh(now, now+int64(time.Hour), d, 1, math.NaN()))
	require.False(t, shouldRefresh(now, now+1, d, 1, 1.5))
	require.False(t, shouldRefresh(now, now+1, d, math.NaN(), 0.5))
	// Far expiries do not overflow.
	require.False(t, shouldRefresh(math.MinInt64+1, math.MaxInt64, time.Millisecond, 1, 0.5))
	require.True(t, shouldRefresh(0, math.MaxInt64, time.Duration(math.MaxInt64), math.MaxFloat64, 0.5))
	// Exactly at the threshold: remaining = delta*beta*ln 2 with u = 1/2.
	thr := int64(float64(d) * math.Ln2)
	require.True(t, shouldRefresh(now, now+thr, d, 1, 0.5))
	require.False(t, shouldRefresh(now, now+thr+int64(time.Microsecond), d, 1, 0.5))
}

func TestStaleOptionsValidate(t *testing.T) {
	for name, opt := range map[string]Option{
		"negative SWR":       WithStaleWhileRevalidate(-time.Second),
		"negative SIE":       WithStaleIfError(-1),
		"infinite beta":      WithEarlyRefresh(math.Inf(1)),
		"not a number beta":  WithEarlyRefresh(math.NaN()),
		"negative beta (-0)": WithEarlyRefresh(-1e-300),
	} {
		_, err := New[int](NewMemoryStore(), opt)
		require.ErrorIs(t, err, ErrInvalidOption, name)
	}
	c, err := New[int](NewMemoryStore(), WithStaleWhileRevalidate(0), WithStaleIfError(0), WithEarlyRefresh(0))
	require.NoError(t, err)
	require.False(t, c.fresh.timed, "all off: hits read no clock")
	require.NoError(t, c.Close())
}

// fakeClock is a Cache clock the test moves by hand. The store's own expiry (the physical
// TTL) keeps real time, so moving it ahead makes values logically expired while the store
// still holds them, with no sleeping.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// useClock makes caches read clk. Call it before the caches are used.
func useClock[T any](clk *fakeClock, cs ...*Cache[T]) {
	for _, c := range cs {
		c.fresh.now = clk.now
	}
}

// idle waits until no cache has a background refresh running.
func idle[T any](t *testing.T, cs ...*Cache[T]) {
	t.Helper()
	within(t, 20*time.Second, "background refreshes", func() {
		for _, c := range cs {
			for c.refreshes() > 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
}

func misses[T any](cs ...*Cache[T]) (n uint64) {
	return sumStats(func(s Stats) uint64 { return s.Misses }, cs...)
}

func sumStats[T any](field func(Stats) uint64, cs ...*Cache[T]) (n uint64) {
	for _, c := range cs {
		n += field(c.Stats())
	}
	return n
}

// Without early refresh and stale windows, a hit reads no clock and draws no random number,
// and the store keeps values for the TTL exactly; with them, for TTL + the longer window.
func TestPlainHitsReadNoClock(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[int](t, b, slowMachine...) // every fill must land
		var hitting atomic.Bool
		var calls atomic.Int32
		c.fresh.now = func() int64 {
			if hitting.Load() {
				calls.Add(1)
			}
			return time.Now().UnixNano()
		}
		c.fresh.rand = func() float64 {
			if hitting.Load() {
				calls.Add(1)
			}
			return rand.Float64()
		}
		load := func(context.Context) (int, error) { return 1, nil }
		_, err := c.GetOrLoad(bg(), "k", load)
		require.NoError(t, err)
		_, err = c.GetOrLoad(bg(), "gone", func(context.Context) (int, error) { return 0, ErrNotFound })
		require.ErrorIs(t, err, ErrNotFound)
		hitting.Store(true)
		for range 20 {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 0, errors.New("not a hit") })
			require.NoError(t, err)
			require.Equal(t, 1, v)
			_, err = c.GetOrLoad(bg(), "gone", load)
			require.ErrorIs(t, err, ErrNotFound)
			m, err := c.GetOrLoadMany(bg(), []string{"k", "gone"}, func(context.Context, []string) (map[string]int, error) {
				return nil, errors.New("not a hit")
			})
			require.NoError(t, err)
			require.Equal(t, map[string]int{"k": 1}, m)
		}
		require.Zero(t, calls.Load(), "clock or random source read on a plain hit")
	})
}

func TestPhysicalTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ttlOf := func(c *Cache[int], key string) time.Duration {
			sk := c.cfg.prefix + key
			if b.client == nil {
				s := c.gw.store.(*MemoryStore)
				e, ok := s.c.GetIfPresent(sk)
				require.True(t, ok)
				return time.Duration(e.expires - s.now())
			}
			d, err := b.client(t).PTTL(bg(), sk).Result()
			require.NoError(t, err)
			return d
		}
		fill := func(c *Cache[int]) {
			_, err := c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil })
			require.NoError(t, err)
			_, err = c.GetOrLoad(bg(), "nf", func(context.Context) (int, error) { return 0, ErrNotFound })
			require.ErrorIs(t, err, ErrNotFound)
		}
		plain := backendCache[int](t, b, append(slowMachine, WithTTL(100*time.Second), WithNegativeTTL(10*time.Second))...)
		fill(plain)
		require.InDelta(t, float64(95*time.Second), float64(ttlOf(plain, "k")), float64(5*time.Second), "TTL minus up to 10% jitter")
		require.InDelta(t, float64(9500*time.Millisecond), float64(ttlOf(plain, "nf")), float64(600*time.Millisecond), "negative TTL")

		for _, tc := range []struct {
			opts  []Option
			extra time.Duration
		}{
			{[]Option{WithStaleWhileRevalidate(30 * time.Second), WithStaleIfError(60 * time.Second)}, 60 * time.Second},
			{[]Option{WithStaleWhileRevalidate(30 * time.Second)}, 30 * time.Second},
			{[]Option{WithStaleIfError(20 * time.Second), WithEarlyRefresh(1)}, 20 * time.Second},
			{[]Option{WithEarlyRefresh(2)}, 0},
		} {
			clk := newFakeClock()
			c := backendCache[int](t, b, append(append(tc.opts, slowMachine...), WithTTL(100*time.Second), WithNegativeTTL(10*time.Second), WithTTLJitter(0))...)
			useClock(clk, c)
			fill(c)
			require.InDelta(t, float64(100*time.Second+tc.extra), float64(ttlOf(c, "k")), float64(time.Second), "%d", tc.extra)
			require.InDelta(t, float64(10*time.Second+tc.extra), float64(ttlOf(c, "nf")), float64(time.Second), "%d", tc.extra)
			// The logical expiry in the envelope is the TTL alone.
			lk, err := c.gw.store.GetOrLease(bg(), c.cfg.prefix+"k", "t", time.Second)
			require.NoError(t, err)
			_, h, ok := c.decode(c.cfg.prefix+"k", lk.Value)
			require.True(t, ok)
			require.Equal(t, clk.now()+int64(100*time.Second), h.Expiry)
		}
	})
}

// hotKeyReport is what a run of readers against hot keys saw.
type hotKeyReport struct {
	latencies []time.Duration
	loads     []int32       // per key
	dupBases  []int         // per key: loads that started from a version another load had started from
	waited    uint64        // reads after the first fills that were not hits: they waited for a load
	refreshes uint64        // background refreshes that loaded
	stall     time.Duration // the longest the process was kept from running or the store from answering
}

// hotKey runs readers goroutines over the caches for d, each reading keys in turn (1 ms
// apart), with a 50 ms loader that returns increasing versions per key. Every key is filled
// once before the readers start. name makes the keys unique to the run.
func hotKey(t *testing.T, name string, caches []*Cache[int64], keys, readers int, d time.Duration) hotKeyReport {
	t.Helper()
	const loadTime = 50 * time.Millisecond
	type keyState struct {
		mu      sync.Mutex
		version int64          // completed loads
		bases   map[int64]bool // versions a load started from
		dup     int
		loads   atomic.Int32
	}
	ks := make([]*keyState, keys)
	loaders := make([]func(context.Context) (int64, error), keys)
	for i := range ks {
		s := &keyState{bases: make(map[int64]bool)}
		ks[i] = s
		loaders[i] = func(context.Context) (int64, error) {
			s.loads.Add(1)
			s.mu.Lock()
			if s.bases[s.version] {
				s.dup++
			}
			s.bases[s.version] = true
			s.mu.Unlock()
			time.Sleep(loadTime)
			s.mu.Lock()
			defer s.mu.Unlock()
			s.version++
			return s.version, nil
		}
	}
	for i := range keys {
		_, err := caches[0].GetOrLoad(bg(), fmt.Sprint(name, i), loaders[i])
		require.NoError(t, err)
	}
	before := misses(caches...)
	refreshed := func() (n uint64) {
		for _, c := range caches {
			n += c.fresh.refreshes.Load()
		}
		return n
	}
	refreshesBefore := refreshed()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := caches[r%len(caches)]
			var mine []time.Duration
			for i := r; time.Now().Before(stop); i++ {
				k := i % keys
				start := time.Now()
				v, err := c.GetOrLoad(bg(), fmt.Sprint(name, k), loaders[k])
				mine = append(mine, time.Since(start))
				if err != nil || v < 1 {
					t.Errorf("GetOrLoad = %v, %v", v, err)
					return
				}
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	// The environment's stalls: how late a sleeping goroutine wakes, and how long the store
	// takes to answer a ping.
	stalled := make(chan time.Duration)
	go func() {
		var worst time.Duration
		const tick = 5 * time.Millisecond
		for time.Now().Before(stop) {
			start := time.Now()
			time.Sleep(tick)
			_ = caches[0].gw.store.Ping(bg())
			worst = max(worst, time.Since(start)-tick)
		}
		stalled <- worst
	}()
	within(t, d+30*time.Second, "readers", wg.Wait)
	idle(t, caches...)
	rep := hotKeyReport{latencies: lat, waited: misses(caches...) - before, refreshes: refreshed() - refreshesBefore, stall: <-stalled}
	for _, s := range ks {
		rep.loads = append(rep.loads, s.loads.Load())
		rep.dupBases = append(rep.dupBases, s.dup)
	}
	slices.Sort(rep.latencies)
	return rep
}

func (r hotKeyReport) log(t *testing.T) {
	n := len(r.latencies)
	if n == 0 {
		return
	}
	t.Logf("%d reads: latency p50 %v, p99 %v, max %v; loads per key %v; longest stall %v",
		n, r.latencies[n/2], r.latencies[n*99/100], r.latencies[n-1], r.loads, r.stall)
}

// maxStall is the longest the machine may keep the test process from running, or the store
// from answering, for a hot-key run to count. A refresh starts about 250 ms before expiry at
// these read rates and takes 50 ms and three round trips; a process or a Redis frozen for
// longer than the margin (by other processes on a shared machine, or the race detector's GC)
// cannot refresh in time, whatever the algorithm.
const maxStall = 100 * time.Millisecond

// steadyHotKey repeats a hot-key run, up to 4 times, while a run was not clean (a read waited,
// or a version was refreshed twice): a stall of the process or of the shared Redis longer than
// the refresh margin explains one such run (the stall seen by the process is logged; one of
// Redis is not seen), not four in a row. The last run counts whatever happened.
func steadyHotKey(t *testing.T, run func(name string) hotKeyReport) hotKeyReport {
	t.Helper()
	for attempt := 1; ; attempt++ {
		rep := run(fmt.Sprint("hot", attempt, "-"))
		rep.log(t)
		if attempt == 4 || (rep.waited == 0 && sumDup(rep) == 0) {
			return rep
		}
		t.Logf("not clean (longest stall of the process %v, margin %v): running it again", rep.stall, maxStall)
	}
}

func sumDup(r hotKeyReport) (n int) {
	for _, d := range r.dupBases {
		n += d
	}
	return n
}

// hotKeyTTLs is how many TTLs a hot-key run lasts: 4 in make verify, 3 in make test (-short),
// enough for every version but the first to be refreshed early at least once.
func hotKeyTTLs() int {
	if testing.Short() {
		return 3
	}
	return 4
}

// A hot key read by 20 goroutines for 4 TTLs (3 with -short) with early refresh never expires under its
// readers: after the first fill no read is a miss (none waits for a load), and there is about
// one load per TTL, not one per reader. The refresh starts, at the latest, when a read draws
// it: with beta 1 and a 50 ms load, about 50ms*ln(reads per 50 ms) before expiry, well in time.
func TestEarlyRefreshHotKey(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		const ttl = time.Second
		ttls := hotKeyTTLs()
		c := backendCache[int64](t, b, append(slowMachine, WithTTL(ttl), WithTTLJitter(0), WithEarlyRefresh(1))...)
		rep := steadyHotKey(t, func(name string) hotKeyReport {
			return hotKey(t, name, []*Cache[int64]{c}, 1, 20, time.Duration(ttls)*ttl)
		})
		require.Zero(t, rep.waited, "reads after the first fill that waited for a load")
		// Each value is refreshed once, in the last part of its TTL (before half its TTL with
		// probability below exp(-10) per read): at most 2 loads per TTL, and at least one per
		// TTL, or the key would have expired under its readers.
		require.Zero(t, rep.dupBases[0], "a version was refreshed twice")
		require.LessOrEqual(t, rep.loads[0], int32(2*ttls+2))
		require.GreaterOrEqual(t, rep.refreshes, uint64(ttls-1))
	})
}

// Three instances (separate clients: processes) read two hot keys: each version of each key is
// refreshed once across all of them, and no read waits.
func TestEarlyRefreshAcrossInstances(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		const ttl = time.Second
		ttls := hotKeyTTLs()
		cs := instances[int64](t, b, 3, append(slowMachine, WithTTL(ttl), WithTTLJitter(0), WithEarlyRefresh(1))...)
		rep := steadyHotKey(t, func(name string) hotKeyReport {
			return hotKey(t, name, cs, 2, 24, time.Duration(ttls)*ttl)
		})
		require.Zero(t, rep.waited, "reads after the first fill that waited for a load")
		for k := range 2 {
			require.Zero(t, rep.dupBases[k], "key %d: a version was refreshed twice", k)
			require.LessOrEqual(t, rep.loads[k], int32(2*ttls+2), "key %d", k)
		}
		require.GreaterOrEqual(t, rep.refreshes, uint64(2*(ttls-1)))
		t.Logf("refreshes per instance (all runs): %d %d %d", cs[0].fresh.refreshes.Load(), cs[1].fresh.refreshes.Load(), cs[2].fresh.refreshes.Load())
	})
}

// Stale-while-revalidate: past its TTL, within the window, a value is served at once (the
// reload is held up, and no read waits for it) while one background reload across all
// instances replaces it. Past the window it is a miss.
func TestStaleWhileRevalidate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 3, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithStaleWhileRevalidate(time.Hour))...)
		useClock(clk, cs...)
		_, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		before := misses(cs...)

		clk.advance(time.Hour + time.Minute)
		gate := make(chan struct{})
		started := make(chan struct{}, 100)
		var calls atomic.Int32
		reload := func(ctx context.Context) (string, error) {
			calls.Add(1)
			started <- struct{}{}
			select {
			case <-gate:
				return "v2", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := cs[i%3].GetOrLoad(bg(), "k", reload)
				if err != nil || v != "v1" {
					t.Errorf("stale read = %q, %v; want v1 at once", v, err)
				}
			}()
		}
		within(t, 10*time.Second, "stale reads while the reload is held up", wg.Wait)
		within(t, 10*time.Second, "the background reload", func() { <-started })
		close(gate)
		idle(t, cs...)
		require.EqualValues(t, 1, calls.Load(), "background reloads across 3 instances")
		require.Equal(t, before, misses(cs...), "reads that waited")
		require.EqualValues(t, 30, sumStats(func(s Stats) uint64 { return s.Stale }, cs...), "stale requests")
		require.Zero(t, sumStats(func(s Stats) uint64 { return s.EarlyRefreshes }, cs...), "a refresh after expiry is not early")
		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
			require.NoError(t, err)
			require.Equal(t, "v2", v)
		}
		require.EqualValues(t, 1, calls.Load())

		// v2 expires at now+1h; past its window it is a miss, loaded by the caller.
		clk.advance(2*time.Hour + time.Minute)
		v, err := cs[1].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v3", nil })
		require.NoError(t, err)
		require.Equal(t, "v3", v)
		require.Equal(t, before+1, misses(cs...))
	})
}

// Stale-if-error: while the loader fails, callers get the expired value (within the window)
// and no error; once it works again, the new value replaces it. Not-found answers and the
// caller's own cancellation are never hidden, nor is a failure past the window.
func TestStaleIfError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 3, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithStaleIfError(time.Hour))...)
		useClock(clk, cs...)
		for _, k := range []string{"k", "nf"} {
			_, err := cs[0].GetOrLoad(bg(), k, func(context.Context) (string, error) { return "v1", nil })
			require.NoError(t, err)
		}
		clk.advance(time.Hour + time.Minute)

		boom := errors.New("database down")
		var failed atomic.Int32
		failing := func(context.Context) (string, error) {
			failed.Add(1)
			time.Sleep(5 * time.Millisecond)
			return "", boom
		}
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := cs[i%3].GetOrLoad(bg(), "k", failing)
				if err != nil || v != "v1" {
					t.Errorf("GetOrLoad with the loader failing = %q, %v; want v1, nil", v, err)
				}
			}()
		}
		within(t, 20*time.Second, "readers", wg.Wait)
		require.Positive(t, failed.Load(), "the expired value is not served without trying the loader")
		var served uint64
		for _, c := range cs {
			served += c.Stats().StaleIfError
		}
		require.EqualValues(t, 30, served, "stale values served")
		require.EqualValues(t, 30, sumStats(func(s Stats) uint64 { return s.Stale }, cs...), "stale requests")

		// The caller's cancellation is its own.
		gate := make(chan struct{})
		ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
		_, err := cs[1].GetOrLoad(ctx, "k", func(lctx context.Context) (string, error) {
			select {
			case <-gate:
			case <-lctx.Done():
			}
			return "", boom
		})
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		close(gate)
		// A not-found is an answer, not a failure.
		_, err = cs[2].GetOrLoad(bg(), "nf", func(context.Context) (string, error) { return "", ErrNotFound })
		require.ErrorIs(t, err, ErrNotFound)

		// Recovery: the loader works again.
		within(t, 10*time.Second, "recovery", func() {
			for {
				v, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v2", nil })
				require.NoError(t, err)
				if v == "v2" {
					return
				}
				time.Sleep(time.Millisecond) // the cancelled caller's load may still hold the lease
			}
		})
		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", failing)
			require.NoError(t, err)
			require.Equal(t, "v2", v)
		}

		// Past the window the failure is the caller's.
		clk.advance(3 * time.Hour)
		_, err = cs[2].GetOrLoad(bg(), "k", failing)
		require.ErrorIs(t, err, boom)
	})
}

// GetOrLoadMany follows the same rules per key: stale values within the revalidate window are
// served at once and refreshed in the background, one load per key; expired ones stand in
// for a failed load within the stale-if-error window.
func TestManyStale(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 2, append(slowMachine, WithTTL(time.Hour), WithNegativeTTL(time.Hour), WithTTLJitter(0),
			WithStaleWhileRevalidate(time.Hour), WithStaleIfError(2*time.Hour))...)
		useClock(clk, cs...)
		keys := []string{"a", "b", "c"}
		m, err := cs[0].GetOrLoadMany(bg(), keys, func(_ context.Context, missing []string) (map[string]string, error) {
			return map[string]string{"a": "a1", "b": "b1"}, nil // c: not found
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a1", "b": "b1"}, m)

		clk.advance(time.Hour + time.Minute)
		gate := make(chan struct{})
		var mu sync.Mutex
		loaded := map[string]int{}
		reload := func(ctx context.Context, missing []string) (map[string]string, error) {
			mu.Lock()
			for _, k := range missing {
				loaded[k]++
			}
			mu.Unlock()
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			out := map[string]string{}
			for _, k := range missing {
				if k != "c" {
					out[k] = k + "2"
				}
			}
			return out, nil
		}
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, err := cs[i%2].GetOrLoadMany(bg(), keys, reload)
				if err != nil || len(m) != 2 || m["a"] != "a1" || m["b"] != "b1" {
					t.Errorf("stale batch = %v, %v", m, err)
				}
			}()
		}
		within(t, 10*time.Second, "stale batch reads", wg.Wait)
		close(gate)
		idle(t, cs...)
		require.Equal(t, map[string]int{"a": 1, "b": 1, "c": 1}, loaded, "one background load per key")
		m, err = cs[1].GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]string, error) {
			return nil, errors.New("must not load")
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a2", "b": "b2"}, m)

		// Past the revalidate window, within stale-if-error: a failed load serves the old values.
		clk.advance(2*time.Hour + time.Minute)
		boom := errors.New("database down")
		m, err = cs[0].GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]string, error) { return nil, boom })
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a2", "b": "b2"}, m)
		require.EqualValues(t, 3, cs[0].Stats().StaleIfError)
		require.EqualValues(t, 5*3+3, cs[0].Stats().Stale, "stale requests: 5 revalidating batches of 3 keys, then 3 stale-if-error")
		// A key with nothing to stand in fails the call.
		_, err = cs[0].GetOrLoadMany(bg(), []string{"a", "new"}, func(context.Context, []string) (map[string]string, error) { return nil, boom })
		require.ErrorIs(t, err, boom)
	})
}

// An Invalidate during a background refresh voids its fill: the value it loaded from before
// the invalidation is never stored.
func TestInvalidateDuringRefresh(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 2, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithEarlyRefresh(1))...)
		useClock(clk, cs...)
		_, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) {
			time.Sleep(2 * time.Millisecond) // delta: the refresh decision scales with it
			return "v1", nil
		})
		require.NoError(t, err)
		clk.advance(time.Hour - time.Millisecond) // 1 ms before expiry: the draw below refreshes
		cs[0].fresh.rand = func() float64 { return 0.99 }

		loading := make(chan struct{})
		gate := make(chan struct{})
		v, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) {
			close(loading)
			<-gate
			return "old", nil
		})
		require.NoError(t, err)
		require.Equal(t, "v1", v, "the caller that triggers the refresh gets the current value")
		within(t, 10*time.Second, "the refresh", func() { <-loading })
		require.NoError(t, cs[1].Invalidate(bg(), "k"))
		close(gate)
		idle(t, cs...)
		require.EqualValues(t, 1, cs[0].Stats().EarlyRefreshes)

		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "new", nil })
			require.NoError(t, err)
			require.Equal(t, "new", v)
		}
	})
}

// A refresh goes ahead only if the store still holds the entry that triggered it: a refresh
// that lost the race to another one's fill does not load again, and leaves no lease behind.
func TestRefreshOfReplacedValueSkips(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b, append(slowMachine, WithEarlyRefresh(1))...)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		sk := c.cfg.prefix + "k"
		lk, err := c.gw.store.GetOrLease(bg(), sk, "t", time.Second)
		require.NoError(t, err)
		old, _, _ := c.encode(bg(), sk, "v0", false, time.Millisecond)

		var calls atomic.Int32
		load := func(context.Context) (string, error) { calls.Add(1); return "v2", nil }
		c.refresh(bg(), "k", 0, old, true, load)
		idle(t, c)
		require.Zero(t, calls.Load(), "refreshed a value that was already replaced")
		c.refresh(bg(), "k", 0, lk.Value, true, load)
		idle(t, c)
		require.EqualValues(t, 1, calls.Load(), "the lease was left behind")
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
		require.NoError(t, err)
		require.Equal(t, "v2", v)
	})
}

// Close stops a background refresh: its loader's context is cancelled, and Close waits for it.
// The caller that triggered it has long returned, with its context cancelled.
func TestCloseStopsRefresh(t *testing.T) {
	clk := newFakeClock()
	s := NewMemoryStore()
	t.Cleanup(func() { s.Close() })
	c, err := New[string](s, WithTTL(time.Hour), WithStaleWhileRevalidate(time.Hour))
	require.NoError(t, err)
	useClock(clk, c)
	_, err = c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
	require.NoError(t, err)
	clk.advance(time.Hour + time.Minute)
	loading := make(chan struct{})
	stopped := make(chan error, 1)
	ctx, cancel := context.WithCancel(bg())
	v, err := c.GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
		close(loading)
		<-ctx.Done()
		stopped <- ctx.Err()
		return "", ctx.Err()
	})
	cancel()
	require.NoError(t, err)
	require.Equal(t, "v1", v)
	within(t, 5*time.Second, "the refresh", func() { <-loading })
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-stopped:
		t.Fatalf("the refresh stopped with its trigger's context: %v", err)
	default:
	}
	within(t, 5*time.Second, "Close", func() { require.NoError(t, c.Close()) })
	require.ErrorIs(t, <-stopped, context.Canceled)
}

// leaseCounter counts the Lease calls (refreshes and replacements) sent to the store.
type leaseCounter struct {
	Store
	leases atomic.Int32
}

func (s *leaseCounter) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	s.leases.Add(1)
	return s.Store.Lease(ctx, key, token, leaseTTL)
}

// A process runs one refresh per key at a time: concurrent stale hits start one, not one
// lease attempt each.
func TestRefreshDedupedInProcess(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		s := &leaseCounter{Store: b.newStore(t)}
		c := newTestCache[string](t, s, append(slowMachine, WithTTL(time.Hour), WithStaleWhileRevalidate(time.Hour))...)
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		clk.advance(time.Hour + time.Minute)
		gate := make(chan struct{})
		var calls atomic.Int32
		reload := func(ctx context.Context) (string, error) {
			calls.Add(1)
			select {
			case <-gate:
				return "v2", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.GetOrLoad(bg(), "k", reload)
				if err != nil || v != "v1" {
					t.Errorf("stale read = %q, %v", v, err)
				}
			}()
		}
		within(t, 10*time.Second, "stale reads", wg.Wait)
		// The refresh runs on its own goroutine: it may not have asked for its lease yet.
		stPoll(t, 10*time.Second, time.Millisecond, "the refresh's load", func() bool { return calls.Load() > 0 })
		require.EqualValues(t, 1, s.leases.Load(), "lease attempts for one key in one process")
		close(gate)
		idle(t, c)
		require.EqualValues(t, 1, calls.Load())
	})
}

// A caller waiting for another process's lease does not take a value that is past its stale
// windows when the lease ends: it replaces it, as a fresh caller would.
func TestWaiterSkipsExpiredValue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		prefix := testPrefix(t)
		c := backendCache[string](t, b, append(slowMachine, WithPrefix(prefix), WithTTL(time.Hour), WithTTLJitter(0),
			WithStaleWhileRevalidate(time.Minute), WithStaleIfError(time.Hour))...)
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "old", nil })
		require.NoError(t, err)
		clk.advance(time.Hour + 2*time.Minute) // past the revalidate window: a miss

		// Another process holds the key's lease over the value, and dies.
		lk, err := b.newStore(t).Lease(bg(), prefix+"k", "dead-process:1", 300*time.Millisecond)
		require.NoError(t, err)
		require.True(t, lk.Granted)
		got := make(chan string, 1)
		go func() {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "new", nil })
			if err != nil {
				t.Error(err)
			}
			got <- v
		}()
		b.advance(400 * time.Millisecond)
		within(t, 10*time.Second, "the waiter", func() { require.Equal(t, "new", <-got) })
	})
}

// With a local cache, hits are L1 hits: they draw the early refresh too, and the refreshed
// value replaces the L1 entry (its fill is accepted under a lease taken after the generation
// was read).
func TestEarlyRefreshFromLocalCache(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		c := backendCache[string](t, b, l1Opts(append(slowMachine, WithEarlyRefresh(1))...)...)
		useClock(clk, c)
		waitLive(t, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
			time.Sleep(2 * time.Millisecond) // delta: the refresh decision scales with it
			return "v1", nil
		})
		require.NoError(t, err)
		require.NotNil(t, c.l1.hit("k"), "the value is in L1")

		clk.advance(time.Hour - time.Millisecond) // 1 ms before expiry: the draw below refreshes
		c.fresh.rand = func() float64 { return 0.99 }
		gate := make(chan struct{})
		v, err := c.GetOrLoad(bg(), "k", func(ctx context.Context) (string, error) {
			select {
			case <-gate:
				return "v2", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		})
		require.NoError(t, err)
		require.Equal(t, "v1", v, "served from L1 at once")
		require.Equal(t, 1, c.refreshes(), "an L1 hit started the refresh")
		close(gate)
		idle(t, c)
		require.EqualValues(t, 1, c.Stats().EarlyRefreshes)

		removeBehindBack(t, c, "k") // what follows comes from L1
		v, err = c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
		require.NoError(t, err)
		require.Equal(t, "v2", v, "the refreshed value replaced the L1 entry")
	})
}

// GetOrLoadMany's L1 hits draw the early refresh as GetOrLoad's do: callers get the current
// values at once, and the keys the draw picks are refreshed together, in one background load
// with the batch loader; batches meanwhile start no other. The refreshed values replace the
// L1 entries.
func TestEarlyRefreshFromLocalCacheMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		c := backendCache[string](t, b, l1Opts(append(slices.Clone(slowMachine), WithEarlyRefresh(1))...)...)
		useClock(clk, c)
		waitLive(t, c)
		keys := []string{"a", "b", "c"}
		versioned := func(v string, missing []string) map[string]string {
			out := map[string]string{}
			for _, k := range missing {
				out[k] = k + v
			}
			return out
		}
		_, err := c.GetOrLoadMany(bg(), keys, func(_ context.Context, missing []string) (map[string]string, error) {
			time.Sleep(2 * time.Millisecond) // delta: the refresh decision scales with it
			return versioned("1", missing), nil
		})
		require.NoError(t, err)
		for _, k := range keys {
			require.NotNil(t, c.l1.hit(k), "%s is in L1", k)
		}

		clk.advance(time.Hour - time.Millisecond) // 1 ms before expiry: the draw below refreshes
		c.fresh.rand = func() float64 { return 0.99 }
		gate := make(chan struct{})
		calls := make(chan []string, 10)
		reload := func(ctx context.Context, missing []string) (map[string]string, error) {
			calls <- slices.Clone(missing)
			select {
			case <-gate:
				return versioned("2", missing), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		for range 3 {
			got, err := c.GetOrLoadMany(bg(), keys, reload)
			require.NoError(t, err)
			require.Equal(t, map[string]string{"a": "a1", "b": "b1", "c": "c1"}, got, "served from L1 at once")
			require.Equal(t, len(keys), c.refreshes(), "the L1 hits started the refresh of every key")
		}
		close(gate)
		idle(t, c)
		require.Len(t, calls, 1, "one background load for the keys of the batches")
		require.ElementsMatch(t, keys, <-calls)
		require.EqualValues(t, len(keys), c.Stats().EarlyRefreshes)

		for _, k := range keys {
			removeBehindBack(t, c, k) // what follows comes from L1
		}
		got, err := c.GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]string, error) {
			return nil, errors.New("must not load")
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a2", "b": "b2", "c": "c2"}, got, "the refreshed values replaced the L1 entries")
	})
}

// A background refresh whose loader fails is not retried by the next hit: the key's refreshes
// pause for minRefreshBackoff, doubling with each failure, and a success clears the pause.
// Without it a fast-failing database would see one reload per hit, as with no cache at all.
func TestRefreshBackoff(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		c := instances[string](t, b, 1, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithStaleWhileRevalidate(24*time.Hour))...)[0]
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		clk.advance(time.Hour + time.Minute) // stale: every hit asks for a refresh

		var calls atomic.Int32
		failing := func(context.Context) (string, error) {
			calls.Add(1)
			return "", errors.New("database down")
		}
		hits := func(n int) {
			t.Helper()
			for range n {
				v, err := c.GetOrLoad(bg(), "k", failing)
				require.NoError(t, err)
				require.Equal(t, "v1", v)
				idle(t, c) // the refresh it started, if any, is over
			}
		}
		hits(50)
		require.EqualValues(t, 1, calls.Load(), "reloads by 50 hits right after a failed one")

		clk.advance(minRefreshBackoff + time.Millisecond)
		hits(50)
		require.EqualValues(t, 2, calls.Load(), "one reload once the pause is over")
		clk.advance(minRefreshBackoff + time.Millisecond) // the second pause is twice as long
		hits(20)
		require.EqualValues(t, 2, calls.Load(), "reloads during the doubled pause")
		clk.advance(minRefreshBackoff)
		hits(20)
		require.EqualValues(t, 3, calls.Load(), "one reload after the doubled pause")

		// A success (here the caller's own load past the stale window) clears the pause: the
		// new value's refreshes start at once.
		clk.advance(48 * time.Hour)
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v2", nil })
		require.NoError(t, err)
		require.Equal(t, "v2", v)
		clk.advance(time.Hour + time.Minute)
		v, err = c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { calls.Add(1); return "v3", nil })
		require.NoError(t, err)
		require.Equal(t, "v2", v, "stale, served at once")
		idle(t, c)
		require.EqualValues(t, 4, calls.Load(), "the refresh after a success is not held back")
		v, err = c.GetOrLoad(bg(), "k", failing)
		require.NoError(t, err)
		require.Equal(t, "v3", v)
	})
}

// Batch refreshes back off as single ones do: after a failed background reload of a batch's
// keys, later batches start none for the pause; a batch load that fills the keys clears it.
func TestRefreshBackoffMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		const ttl = 100 * time.Millisecond // of the fake clock: far shorter than the pause
		c := backendCache[string](t, b, append(slices.Clone(slowMachine), WithTTL(ttl), WithTTLJitter(0), WithStaleWhileRevalidate(24*time.Hour))...)
		useClock(clk, c)
		keys := []string{"a", "b"}
		var calls atomic.Int32
		loadV := func(v string, err error) func(context.Context, []string) (map[string]string, error) {
			return func(_ context.Context, missing []string) (map[string]string, error) {
				calls.Add(1)
				out := map[string]string{}
				for _, k := range missing {
					out[k] = k + v
				}
				return out, err
			}
		}
		read := func(load func(context.Context, []string) (map[string]string, error), want string) {
			t.Helper()
			got, err := c.GetOrLoadMany(bg(), keys, load)
			require.NoError(t, err)
			require.Equal(t, map[string]string{"a": "a" + want, "b": "b" + want}, got)
			idle(t, c) // the refresh it started, if any, is over
		}
		read(loadV("1", nil), "1")
		clk.advance(ttl + time.Millisecond) // stale: every batch asks for a refresh
		calls.Store(0)
		for range 20 {
			read(loadV("", errors.New("database down")), "1")
		}
		require.EqualValues(t, 1, calls.Load(), "reloads by 20 batches right after a failed one")

		// Within the pause, a batch load that fills the keys clears it: the new values'
		// refreshes start at once.
		require.NoError(t, c.Invalidate(bg(), keys...))
		read(loadV("2", nil), "2")
		clk.advance(ttl + time.Millisecond)
		calls.Store(0)
		read(loadV("3", nil), "2")
		require.EqualValues(t, 1, calls.Load(), "the refresh after a fill is not held back")
		read(loadV("", errors.New("must not load")), "3")
	})
}

// The pause grows to maxRefreshBackoff and no further, and the keys remembered stay bounded.
func TestRefreshBackoffBounds(t *testing.T) {
	var b refreshBackoff
	now := int64(0)
	delay := time.Duration(0)
	for range 10 {
		b.failed("k", now)
		delay = time.Duration(b.keys["k"].until - now)
		require.False(t, b.allow("k", now+int64(delay)-1))
		now += int64(delay)
		require.True(t, b.allow("k", now))
	}
	require.Equal(t, maxRefreshBackoff, delay)
	now += int64(2 * maxRefreshBackoff) // long past: it starts over
	b.failed("k", now)
	require.Equal(t, minRefreshBackoff, time.Duration(b.keys["k"].until-now))

	// Past the bound by a few: each key refused scans the full map (O(maxBackoffKeys)), so
	// 3 x maxBackoffKeys took 23 s under -race on a loaded machine for the same check.
	for i := range maxBackoffKeys + 64 {
		b.failed(fmt.Sprint("x", i), now)
	}
	require.LessOrEqual(t, len(b.keys), maxBackoffKeys)
	now += int64(maxRefreshBackoff) + 1
	b.failed("late", now) // lapsed entries make room
	require.False(t, b.allow("late", now))
	require.Less(t, len(b.keys), 10)
	b.succeeded("late")
	require.True(t, b.allow("late", now))
}

// With the circuit breaker open, an L1 hit that would refresh early starts no refresh: it
// would only wait on a sick store in the background (and time out) for nothing.
func TestRefreshSkippedWithBreakerOpen(t *testing.T) {
	clk := newFakeClock()
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, l1Opts(WithEarlyRefresh(1), WithCircuitBreaker(1, time.Hour), WithInvalidateTimeout(time.Nanosecond))...)
	useClock(clk, c)
	waitLive(t, c)
	_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
		time.Sleep(2 * time.Millisecond)
		return "v1", nil
	})
	require.NoError(t, err)
	require.NotNil(t, c.l1.hit("k"))
	store.fail.Store(true)
	require.Error(t, c.Invalidate(bg(), "other")) // one failure opens the breaker
	require.True(t, c.Stats().BreakerOpen)
	errs := c.Stats().StoreErrors

	clk.advance(time.Hour - time.Millisecond)
	c.fresh.rand = func() float64 { return 0.99 } // refresh, were the store usable
	v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
	require.NoError(t, err)
	require.Equal(t, "v1", v)
	require.Zero(t, c.refreshes(), "a refresh started with the breaker open")
	idle(t, c)
	require.Equal(t, errs, c.Stats().StoreErrors, "the store was called with the breaker open")
}

// grantThenFail is a store whose Lease takes effect and then reports a failure, as a lease
// script that ran but whose reply timed out.
type grantThenFail struct {
	*MemoryStore
	Peek   struct{} // hides MemoryStore.Peek (InProcessStore): every read goes through the methods above
	leases atomic.Int32
}

func (s *grantThenFail) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	_, _ = s.MemoryStore.Lease(ctx, key, token, leaseTTL)
	s.leases.Add(1)
	return Lookup{}, errInjected
}

// A background refresh whose lease request failed releases the lease the store may have
// granted all the same, so other processes need not wait out the lease TTL to refresh.
func TestRefreshReleasesLeaseOnFailure(t *testing.T) {
	clk := newFakeClock()
	store := &grantThenFail{MemoryStore: NewMemoryStore()}
	t.Cleanup(func() { store.MemoryStore.Close() })
	c := newTestCache[string](t, store, WithTTL(time.Hour), WithTTLJitter(0), WithStaleWhileRevalidate(time.Hour), WithLeaseTTL(time.Hour))
	useClock(clk, c)
	_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
	require.NoError(t, err)
	clk.advance(time.Hour + time.Minute)
	v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
	require.NoError(t, err)
	require.Equal(t, "v1", v, "stale, served")
	idle(t, c)
	require.EqualValues(t, 1, store.leases.Load(), "the refresh asked for the lease")
	lk, err := store.MemoryStore.Lease(bg(), c.cfg.prefix+"k", "another-process", time.Minute)
	require.NoError(t, err)
	require.True(t, lk.Granted, "the key is still leased by the failed refresh (holder %q)", lk.Holder)
}
