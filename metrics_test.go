package cacheaside

// Observability: the counters behind Stats and the Prometheus metrics, key groups, and the
// hit path's cost (no allocation added by metrics, logging, tracing or key groups).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// errInjected is what a faultyStore answers while it fails: like a go-redis error, it names
// an address.
var errInjected = errors.New("dial tcp 127.0.0.1:1: connect: connection refused")

// faultyStore is a MemoryStore that fails every operation while fail is set. Being no
// *MemoryStore itself, it counts as a store with round trips: its durations are measured.
type faultyStore struct {
	*MemoryStore
	Peek struct{} // hides MemoryStore.Peek (InProcessStore): every read goes through the methods above
	fail atomic.Bool
}

func newFaultyStore(t testing.TB) *faultyStore {
	s := &faultyStore{MemoryStore: NewMemoryStore()}
	t.Cleanup(func() { s.MemoryStore.Close() })
	return s
}

func (s *faultyStore) err() error {
	if s.fail.Load() {
		return errInjected
	}
	return nil
}

func (s *faultyStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	if err := s.err(); err != nil {
		return Lookup{}, err
	}
	return s.MemoryStore.GetOrLease(ctx, key, token, leaseTTL)
}

func (s *faultyStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.MemoryStore.GetOrLeaseMany(ctx, keys, token, leaseTTL)
}

func (s *faultyStore) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	if err := s.err(); err != nil {
		return Lookup{}, err
	}
	return s.MemoryStore.Lease(ctx, key, token, leaseTTL)
}

func (s *faultyStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	if err := s.err(); err != nil {
		return false, err
	}
	return s.MemoryStore.Fill(ctx, key, token, value, ttl)
}

func (s *faultyStore) FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.MemoryStore.FillMany(ctx, token, entries)
}

func (s *faultyStore) Release(ctx context.Context, key, token string) (bool, error) {
	if err := s.err(); err != nil {
		return false, err
	}
	return s.MemoryStore.Release(ctx, key, token)
}

func (s *faultyStore) Delete(ctx context.Context, keys ...string) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.Delete(ctx, keys...)
}

func (s *faultyStore) DeletePattern(ctx context.Context, pattern string) (int, error) {
	if err := s.err(); err != nil {
		return 0, err
	}
	return s.MemoryStore.DeletePattern(ctx, pattern)
}

func (s *faultyStore) Ping(ctx context.Context) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.MemoryStore.Ping(ctx)
}

func constLoad(v string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return v, nil }
}

// putGarbage stores bytes that are no entry of any cache at sk, through the store's lease.
func putGarbage(t testing.TB, s Store, sk string) {
	t.Helper()
	lk, err := s.Lease(bg(), sk, "garbage-writer", time.Minute)
	require.NoError(t, err)
	require.True(t, lk.Granted)
	ok, err := s.Fill(bg(), sk, "garbage-writer", []byte("not an envelope"), time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
}

// TestStatsCounts scripts every kind of request and load, on every backend, and reads the
// counts back from Stats.
func TestStatsCounts(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		store := b.newStore(t)
		c := newTestCache[string](t, store, slowMachine...) // no lookup may time out: counts are exact
		ctx := bg()

		require.Zero(t, c.Stats().HitRatio())
		v, err := c.GetOrLoad(ctx, "a", constLoad("A")) // miss, load ok
		require.NoError(t, err)
		require.Equal(t, "A", v)
		for range 3 {
			_, err = c.GetOrLoad(ctx, "a", constLoad("other")) // hits
			require.NoError(t, err)
		}
		notFound := func(context.Context) (string, error) { return "", ErrNotFound }
		_, err = c.GetOrLoad(ctx, "nf", notFound) // miss, load not_found
		require.ErrorIs(t, err, ErrNotFound)
		_, err = c.GetOrLoad(ctx, "nf", notFound) // negative hit
		require.ErrorIs(t, err, ErrNotFound)
		boom := errors.New("database down")
		_, err = c.GetOrLoad(ctx, "e", func(context.Context) (string, error) { return "", boom }) // miss, load error
		require.ErrorIs(t, err, boom)
		func() {
			defer func() { require.NotNil(t, recover()) }()
			_, _ = c.GetOrLoad(ctx, "p", func(context.Context) (string, error) { panic("bad") }) // load panic
		}()
		putGarbage(t, store, c.cfg.prefix+"g")
		v, err = c.GetOrLoad(ctx, "g", constLoad("G")) // undecodable: a miss, replaced
		require.NoError(t, err)
		require.Equal(t, "G", v)
		m, err := c.GetOrLoadMany(ctx, []string{"a", "b", "nf"}, func(_ context.Context, missing []string) (map[string]string, error) {
			require.Equal(t, []string{"b"}, missing)
			return map[string]string{"b": "B"}, nil
		}) // a and nf hit, b missed: one more load
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "A", "b": "B"}, m)
		require.NoError(t, c.Invalidate(ctx, "a", "b"))
		_, err = c.InvalidatePattern(ctx, "x*")
		require.NoError(t, err)

		s := c.Stats()
		require.Equal(t, Stats{
			Hits: 4, NegativeHits: 2, Misses: 4 /* a, nf, e, g */ + 1, /* b */
			Loads: 6, LoadsNotFound: 1, LoadErrors: 1, LoadPanics: 1, LoadTime: s.LoadTime,
			Invalidations: 2, PatternInvalidations: 1, UndecodableValues: 1,
		}, s)
		require.Positive(t, s.LoadTime)
		require.Equal(t, s.LoadTime/6, s.MeanLoadTime())
		require.EqualValues(t, 11, s.Requests())
		require.InDelta(t, 6.0/11, s.HitRatio(), 1e-9)
	})
}

// Lease waits and coalesced calls, with real concurrency: callers of one instance join its
// load, callers of another wait for the lease. In Stats and in Prometheus.
func TestStatsLeaseWaitsAndCoalesced(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		cs := make([]*Cache[string], 2)
		for i := range cs {
			cs[i] = backendCache[string](t, b, append(slowMachine, WithPrefix(prefix), WithName("users"))...)
		}
		started := make(chan struct{})
		release := make(chan struct{})
		var calls atomic.Int32
		load := func(context.Context) (string, error) {
			if calls.Add(1) == 1 {
				close(started)
			}
			<-release
			return "v", nil
		}
		var wg sync.WaitGroup
		call := func(c *Cache[string]) {
			defer wg.Done()
			v, err := c.GetOrLoad(bg(), "k", load)
			if err != nil || v != "v" {
				t.Errorf("GetOrLoad = %q, %v", v, err)
			}
		}
		wg.Add(1)
		go call(cs[0])
		<-started
		const joiners = 4
		for range joiners {
			wg.Add(2)
			go call(cs[0])
			go call(cs[1])
		}
		// Wait until every caller is parked: on instance 0 joined to the load, on instance 1
		// waiting for the lease (one of them) or joined to that wait (the others).
		flights := func(c *Cache[string]) uint64 { return c.obs.coalescedN[coalescedFlight].Load() }
		stPoll(t, 10*time.Second, time.Millisecond, "callers parked", func() bool {
			return flights(cs[0]) == joiners && cs[1].Stats().LeaseWaits+flights(cs[1]) == joiners
		})
		close(release)
		within(t, 20*time.Second, "callers", wg.Wait)
		require.EqualValues(t, 1, calls.Load())

		s0, s1 := cs[0].Stats(), cs[1].Stats()
		require.EqualValues(t, 1, s0.Loads)
		require.EqualValues(t, 1+joiners, s0.Misses)
		require.Zero(t, s0.LeaseWaits, "instance 0 held the lease")
		require.EqualValues(t, 1, s1.LeaseWaits, "instance 1 waits once; its other callers join that wait")
		require.Zero(t, s1.Loads)
		require.EqualValues(t, joiners, s1.Misses)
		require.GreaterOrEqual(t, s1.Coalesced, uint64(joiners-1))

		ms := []Metrics{metricsOf(cs[0]), metricsOf(cs[1])}
		for i, n := range []uint64{0, 1} {
			require.Equal(t, n, ms[i].LeaseWaits, "instance %d", i)
		}
		for i, s := range []Stats{s0, s1} {
			c := ms[i].Coalesced
			require.Len(t, c, 2, "flight and lookup")
			require.EqualValues(t, flights(cs[i]), countOf(t, c, "flight"), "instance %d", i)
			require.EqualValues(t, s.Coalesced, countOf(t, c, "flight")+countOf(t, c, "lookup"), "instance %d: Metrics and Stats agree", i)
		}
		require.EqualValues(t, joiners, countOf(t, ms[0].Coalesced, "flight"), "instance 0's callers joined its load")
		require.EqualValues(t, joiners-1, countOf(t, ms[1].Coalesced, "flight"), "instance 1's callers joined its lease wait")
	})
}

// Store failures count per operation (the failed lookup, and the release of the lease that
// lookup may have been granted, after the fail-open load), and every call still gets its value.
func TestStatsStoreFailures(t *testing.T) {
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithCircuitBreaker(1000, time.Hour))
	_, err := c.GetOrLoad(bg(), "warm", constLoad("w")) // the store has answered: no trip on the first failure
	require.NoError(t, err)
	store.fail.Store(true)
	for i := range 3 {
		v, err := c.GetOrLoad(bg(), fmt.Sprint("k", i), constLoad("v"))
		require.NoError(t, err, "fails open")
		require.Equal(t, "v", v)
	}
	stPoll(t, 10*time.Second, time.Millisecond, "background releases tried", func() bool {
		// each retried while the store fails, then counted as unreleased
		return c.obs.storeErrors[opRelease].Load() == 3*releaseAttempts && c.Stats().UnreleasedLeases == 3
	})
	require.EqualValues(t, 3, c.obs.storeErrors[opGetOrLease].Load())
	s := c.Stats()
	require.EqualValues(t, 3+3*releaseAttempts, s.StoreErrors)
	require.False(t, s.BreakerOpen)
	require.EqualValues(t, 4, s.Loads)
	require.EqualValues(t, 4, s.Misses)
}

// The breaker's state and transitions: it opens on failures, stays open while probes fail,
// and closes once the store answers.
func TestStatsBreaker(t *testing.T) {
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithCircuitBreaker(2, 5*time.Millisecond))
	_, err := c.GetOrLoad(bg(), "warm", constLoad("w"))
	require.NoError(t, err)
	store.fail.Store(true)
	for i := 0; !c.Stats().BreakerOpen; i++ {
		require.Less(t, i, 10, "the breaker opens after 2 failures")
		_, err := c.GetOrLoad(bg(), fmt.Sprint("k", i), constLoad("v"))
		require.NoError(t, err)
	}
	stPoll(t, 10*time.Second, time.Millisecond, "failed probes", func() bool {
		return c.obs.storeErrors[opPing].Load() >= 2
	})
	require.True(t, c.Stats().BreakerOpen)
	store.fail.Store(false)
	// The transition is counted by the goroutine that closed the breaker, just after the
	// state flips: wait for the count rather than racing it.
	stPoll(t, 10*time.Second, time.Millisecond, "breaker closes", func() bool {
		return !c.Stats().BreakerOpen && c.obs.transitions[0].Load() >= 1
	})
	require.EqualValues(t, 1, c.Stats().BreakerOpens)
	require.EqualValues(t, 1, c.obs.transitions[0].Load(), "closed once")
}

// Key groups: the first max names get their own counts, any other folds into "other", from
// many goroutines at once, and memory stays bounded.
func TestKeyGroups(t *testing.T) {
	const max = 3
	c := newTestCache[string](t, NewMemoryStore(), WithKeyGroups(KeyGroupBefore(":"), max))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				// groups g0..g99 across goroutines; "user" from all of them
				_, _ = c.GetOrLoad(bg(), fmt.Sprintf("g%d:%d", (g*200+i)%100, i), constLoad("v"))
				_, _ = c.GetOrLoad(bg(), fmt.Sprintf("user:%d", i), constLoad("v"))
			}
		}()
	}
	wg.Wait()
	counts := map[string]uint64{}
	c.obs.eachGroup(func(g *groupCounters) {
		counts[g.name] = g.requests.load(resultHit) + g.requests.load(resultMiss)
	})
	require.Len(t, counts, max+1, "at most max groups plus other: %v", counts)
	require.Contains(t, counts, OtherGroup)
	var total uint64
	for _, n := range counts {
		total += n
	}
	require.EqualValues(t, 8*200*2, total, "every request counted once")
	require.Equal(t, c.Stats().Requests(), total)

	// Names that are empty or not UTF-8 fold into other too.
	c2 := newTestCache[string](t, NewMemoryStore(), WithKeyGroups(func(k string) string { return k }, 10))
	_, _ = c2.GetOrLoad(bg(), "", constLoad("v"))
	_, _ = c2.GetOrLoad(bg(), "\xff", constLoad("v"))
	_, _ = c2.GetOrLoad(bg(), "ok", constLoad("v"))
	names := []string{}
	c2.obs.eachGroup(func(g *groupCounters) { names = append(names, g.name) })
	require.ElementsMatch(t, []string{"ok", OtherGroup}, names)
	require.Equal(t, "user", KeyGroupBefore(":")("user:1:2"))
	require.Equal(t, "plain", KeyGroupBefore(":")("plain"))
}

func TestObservabilityOptionsValidate(t *testing.T) {
	for name, opt := range map[string]Option{
		"nil group func":   WithKeyGroups(nil, 3),
		"zero group bound": WithKeyGroups(KeyGroupBefore(":"), 0),
	} {
		_, err := New[string](NewMemoryStore(), opt)
		require.ErrorIs(t, err, ErrInvalidOption, name)
	}
}

// The hit path: metrics, key groups, logging and tracing add no allocation to a hit. The
// counts behind Stats are always on; counting a request allocates nothing.
func TestHitAllocsUnchangedByObservability(t *testing.T) {
	ctx := bg()
	allocs := func(opts ...Option) float64 {
		store := NewMemoryStore()
		t.Cleanup(func() { store.Close() })
		c := newTestCache[string](t, store, opts...)
		_, err := c.GetOrLoad(ctx, "user:1", constLoad("v"))
		require.NoError(t, err)
		before := c.Stats().Hits
		n := testing.AllocsPerRun(500, func() {
			if v, err := c.GetOrLoad(ctx, "user:1", constLoad("other")); err != nil || v != "v" {
				t.Fatalf("not a hit: %q, %v", v, err)
			}
		})
		require.Greater(t, c.Stats().Hits, before+500-1, "every call was a counted hit")
		return n
	}
	plain := allocs()
	full := allocs(
		WithName("alloc"), WithMetricsExporter(&stubExporter{}),
		WithKeyGroups(KeyGroupBefore(":"), 8),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		withOTel(sdktrace.NewTracerProvider()),
	)
	t.Logf("allocations per memory-store hit: %v without options, %v with metrics, groups, logger, tracer", plain, full)
	require.Equal(t, plain, full)

	c := newTestCache[string](t, NewMemoryStore(), WithKeyGroups(KeyGroupBefore(":"), 8))
	c.obs.request(ctx, "user:1", resultHit)
	require.Zero(t, testing.AllocsPerRun(1000, func() { c.obs.request(ctx, "user:1", resultHit) }))
	require.Zero(t, testing.AllocsPerRun(1000, func() { c.obs.request(ctx, "other:1", resultHit) }))
}

// leaseFailing is a store (with round trips) whose Lease fails: a batch finds an expired or
// undecodable entry, cannot lease over it, and loads without the store.
type leaseFailing struct{ *MemoryStore }

func (leaseFailing) Lease(context.Context, string, string, time.Duration) (Lookup, error) {
	return Lookup{}, errInjected
}

// The keys of a batch loaded without the store count as requests: misses, or stale when
// stale-if-error serves them, whether the whole lookup failed or only the lease over a bad
// entry.
func TestStatsBatchWithoutStore(t *testing.T) {
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v"
		}
		return m, nil
	}
	t.Run("lookup failed", func(t *testing.T) {
		store := newFaultyStore(t)
		c := newTestCache[string](t, store, WithCircuitBreaker(1000, time.Hour))
		store.fail.Store(true)
		_, err := c.GetOrLoadMany(bg(), []string{"a", "b"}, load)
		require.NoError(t, err)
		require.EqualValues(t, 2, c.Stats().Misses)
	})
	t.Run("lease over a bad entry failed", func(t *testing.T) {
		ms := NewMemoryStore()
		t.Cleanup(func() { ms.Close() })
		clk := newFakeClock()
		c := newTestCache[string](t, leaseFailing{ms}, WithTTL(time.Hour), WithTTLJitter(0), WithStaleIfError(time.Hour),
			WithCircuitBreaker(1000, time.Hour))
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "old", constLoad("v0")) // a miss, filled under the lease its lookup was granted
		require.NoError(t, err)
		putGarbage(t, ms, c.cfg.prefix+"bad")
		_, err = c.GetOrLoadMany(bg(), []string{"bad"}, load)
		require.NoError(t, err)
		s := c.Stats()
		require.EqualValues(t, 2, s.Misses, "old, then bad")

		clk.advance(time.Hour + time.Minute) // old is expired, within stale-if-error
		m, err := c.GetOrLoadMany(bg(), []string{"old"}, func(context.Context, []string) (map[string]string, error) {
			return nil, errors.New("database down")
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"old": "v0"}, m)
		s = c.Stats()
		require.EqualValues(t, 2, s.Misses)
		require.EqualValues(t, 1, s.Stale)
		require.EqualValues(t, 1, s.StaleIfError)
	})
}
