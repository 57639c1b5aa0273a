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
			_, h, ok := c.entries.decode(c.cfg.prefix+"k", lk.Value)
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
