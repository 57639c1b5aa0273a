package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// promCounters is the exposition of every counter and gauge of cache "users" (key groups
// off), with the values given in order: requests hit, l1_hit, miss, negative_hit, stale;
// loads error, not_found, ok, panic; store errors delete, delete_pattern, fill, fill_many,
// get_or_lease, get_or_lease_many, lease, ping, release; lease waits; coalesced flight,
// lookup; early refreshes; invalidations key, pattern; l1 drops; l1 flushes; breaker open;
// transitions closed, open; undecodable.
func promCounters(v ...int) string {
	return fmt.Sprintf(`
# HELP cacheaside_requests_total Cache requests by how they were answered: hit, l1_hit, negative_hit and stale from the cache, miss by a load.
# TYPE cacheaside_requests_total counter
cacheaside_requests_total{cache="users",group="",result="hit"} %d
cacheaside_requests_total{cache="users",group="",result="l1_hit"} %d
cacheaside_requests_total{cache="users",group="",result="miss"} %d
cacheaside_requests_total{cache="users",group="",result="negative_hit"} %d
cacheaside_requests_total{cache="users",group="",result="stale"} %d
# HELP cacheaside_loads_total Loader calls by outcome: ok, not_found, error, panic.
# TYPE cacheaside_loads_total counter
cacheaside_loads_total{cache="users",group="",outcome="error"} %d
cacheaside_loads_total{cache="users",group="",outcome="not_found"} %d
cacheaside_loads_total{cache="users",group="",outcome="ok"} %d
cacheaside_loads_total{cache="users",group="",outcome="panic"} %d
# HELP cacheaside_store_errors_total Store operations that failed or timed out, by operation.
# TYPE cacheaside_store_errors_total counter
cacheaside_store_errors_total{cache="users",op="delete"} %d
cacheaside_store_errors_total{cache="users",op="delete_pattern"} %d
cacheaside_store_errors_total{cache="users",op="fill"} %d
cacheaside_store_errors_total{cache="users",op="fill_many"} %d
cacheaside_store_errors_total{cache="users",op="get_or_lease"} %d
cacheaside_store_errors_total{cache="users",op="get_or_lease_many"} %d
cacheaside_store_errors_total{cache="users",op="lease"} %d
cacheaside_store_errors_total{cache="users",op="ping"} %d
cacheaside_store_errors_total{cache="users",op="publish"} 0
cacheaside_store_errors_total{cache="users",op="release"} %d
# HELP cacheaside_lease_waits_total Waits for a lease held by another process.
# TYPE cacheaside_lease_waits_total counter
cacheaside_lease_waits_total{cache="users"} %d
# HELP cacheaside_coalesced_total Calls that shared work in this process: joined a load or lease wait in flight (flight), or shared a store lookup (lookup).
# TYPE cacheaside_coalesced_total counter
cacheaside_coalesced_total{cache="users",kind="flight"} %d
cacheaside_coalesced_total{cache="users",kind="lookup"} %d
# HELP cacheaside_early_refreshes_total Refreshes started before expiry (early refresh).
# TYPE cacheaside_early_refreshes_total counter
cacheaside_early_refreshes_total{cache="users"} %d
# HELP cacheaside_invalidations_total Invalidations: keys passed to Invalidate (key), InvalidatePattern calls (pattern).
# TYPE cacheaside_invalidations_total counter
cacheaside_invalidations_total{cache="users",kind="key"} %d
cacheaside_invalidations_total{cache="users",kind="pattern"} %d
# HELP cacheaside_l1_broadcast_drops_total Local cache entries dropped on another instance's invalidation broadcast.
# TYPE cacheaside_l1_broadcast_drops_total counter
cacheaside_l1_broadcast_drops_total{cache="users"} %d
# HELP cacheaside_l1_flushes_total Times the whole local cache was dropped because an invalidation may have been missed.
# TYPE cacheaside_l1_flushes_total counter
cacheaside_l1_flushes_total{cache="users"} %d
# HELP cacheaside_breaker_open Whether the circuit breaker skips the store: 1 open, 0 closed.
# TYPE cacheaside_breaker_open gauge
cacheaside_breaker_open{cache="users"} %d
# HELP cacheaside_breaker_transitions_total Circuit breaker transitions, by the state entered.
# TYPE cacheaside_breaker_transitions_total counter
cacheaside_breaker_transitions_total{cache="users",state="closed"} %d
cacheaside_breaker_transitions_total{cache="users",state="open"} %d
# HELP cacheaside_undecodable_values_total Stored entries that did not decode, treated as misses and replaced.
# TYPE cacheaside_undecodable_values_total counter
cacheaside_undecodable_values_total{cache="users"} %d
`, toAny(v)...)
}

func toAny(v []int) []any {
	out := make([]any, len(v))
	for i, x := range v {
		out[i] = x
	}
	return out
}

var counterNames = []string{
	"cacheaside_requests_total", "cacheaside_loads_total", "cacheaside_store_errors_total",
	"cacheaside_lease_waits_total", "cacheaside_coalesced_total", "cacheaside_early_refreshes_total",
	"cacheaside_invalidations_total", "cacheaside_l1_broadcast_drops_total", "cacheaside_l1_flushes_total",
	"cacheaside_breaker_open", "cacheaside_breaker_transitions_total", "cacheaside_undecodable_values_total",
}

// histogramCounts returns the sample count of every series of the histogram name, by the
// value of label.
func histogramCounts(t *testing.T, g prometheus.Gatherer, name, label string) map[string]uint64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		require.Equal(t, dto.MetricType_HISTOGRAM, mf.GetType())
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] = m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return out
}

// TestPrometheusMetrics scripts hits, misses, loads of every outcome, bad data,
// invalidations and store failures, and compares every counter after each step.
func TestPrometheusMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithPrometheus(reg, "users"), WithCircuitBreaker(1000, time.Hour))
	ctx := bg()
	compare := func(step string, v ...int) {
		t.Helper()
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(promCounters(v...)), counterNames...), step)
	}

	//       hit l1 miss neg stale | err nf ok panic | del delp fill fillm get getm lease ping rel | waits | flight lookup | early | key pattern | drops flushes | open | closed opened | undecodable
	compare("every series at zero from the start",
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

	_, err := c.GetOrLoad(ctx, "a", constLoad("A"))
	require.NoError(t, err)
	_, err = c.GetOrLoad(ctx, "a", constLoad("A"))
	require.NoError(t, err)
	_, err = c.GetOrLoad(ctx, "a", constLoad("A"))
	require.NoError(t, err)
	compare("a miss and two hits",
		2, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

	notFound := func(context.Context) (string, error) { return "", fmt.Errorf("no row: %w", ErrNotFound) }
	_, err = c.GetOrLoad(ctx, "nf", notFound)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.GetOrLoad(ctx, "nf", notFound)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.GetOrLoad(ctx, "e", func(context.Context) (string, error) { return "", errors.New("db down") })
	require.Error(t, err)
	func() {
		defer func() { require.NotNil(t, recover()) }()
		_, _ = c.GetOrLoad(ctx, "p", func(context.Context) (string, error) { panic("bad") })
	}()
	compare("not found, negative hit, error, panic",
		2, 0, 3, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

	putGarbage(t, store, c.cfg.prefix+"g")
	_, err = c.GetOrLoad(ctx, "g", constLoad("G"))
	require.NoError(t, err)
	require.NoError(t, c.Invalidate(ctx, "a", "g", "x"))
	_, err = c.InvalidatePattern(ctx, "a*")
	require.NoError(t, err)
	compare("bad data, invalidations",
		2, 0, 4, 1, 0, 1, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 1)

	store.fail.Store(true)
	_, err = c.GetOrLoad(ctx, "k", constLoad("K"))
	require.NoError(t, err, "fails open")
	// The fail-open load releases the lease its failed lookup may have been granted.
	stPoll(t, 10*time.Second, time.Millisecond, "the fail-open release", func() bool { return c.obs.storeErrors[opRelease].Load() == 1 })
	require.Error(t, c.Invalidate(ctx, "k"))
	_, err = c.InvalidatePattern(ctx, "k*")
	require.Error(t, err)
	compare("store failures",
		2, 0, 5, 1, 0, 1, 1, 3, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 1)
	store.fail.Store(false)

	// Durations: one sample per load, one per store operation.
	require.Equal(t, map[string]uint64{"": 6}, histogramCounts(t, reg, "cacheaside_load_duration_seconds", "group"))
	ops := histogramCounts(t, reg, "cacheaside_store_duration_seconds", "op")
	require.Len(t, ops, int(numStoreOps), "every op has its series")
	require.EqualValues(t, 2, ops["delete"])
	require.EqualValues(t, 2, ops["delete_pattern"])
	require.EqualValues(t, 1, ops["lease"], "the undecodable entry was leased over")
	require.EqualValues(t, 3, ops["release"], "after the error, the panic and the fail-open load")
	require.Zero(t, ops["ping"])
}

// The breaker gauge and transitions, scraped while it is open and after it closed.
func TestPrometheusBreaker(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithPrometheus(reg, "users"), WithCircuitBreaker(1, 5*time.Millisecond))
	_, err := c.GetOrLoad(bg(), "warm", constLoad("w"))
	require.NoError(t, err)
	store.fail.Store(true)
	_, err = c.GetOrLoad(bg(), "k", constLoad("v"))
	require.NoError(t, err)
	gauge := func(v int) string {
		return fmt.Sprintf(`
# HELP cacheaside_breaker_open Whether the circuit breaker skips the store: 1 open, 0 closed.
# TYPE cacheaside_breaker_open gauge
cacheaside_breaker_open{cache="users"} %d
`, v)
	}
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(gauge(1)), "cacheaside_breaker_open"))
	store.fail.Store(false)
	stPoll(t, 10*time.Second, time.Millisecond, "breaker closes", func() bool { // state, then its count
		return !c.Stats().BreakerOpen && c.obs.transitions[0].Load() >= 1
	})
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(gauge(0)+`
# HELP cacheaside_breaker_transitions_total Circuit breaker transitions, by the state entered.
# TYPE cacheaside_breaker_transitions_total counter
cacheaside_breaker_transitions_total{cache="users",state="closed"} 1
cacheaside_breaker_transitions_total{cache="users",state="open"} 1
`), "cacheaside_breaker_open", "cacheaside_breaker_transitions_total"))
}

// Key groups label requests and loads; groups beyond the bound fold into other.
func TestPrometheusKeyGroups(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := newTestCache[string](t, NewMemoryStore(), WithPrometheus(reg, "shop"), WithKeyGroups(KeyGroupBefore(":"), 2))
	for _, k := range []string{"user:1", "user:1", "product:1", "order:1", "cart:1", "cart:1"} {
		_, err := c.GetOrLoad(bg(), k, constLoad("v"))
		require.NoError(t, err)
	}
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP cacheaside_requests_total Cache requests by how they were answered: hit, l1_hit, negative_hit and stale from the cache, miss by a load.
# TYPE cacheaside_requests_total counter
cacheaside_requests_total{cache="shop",group="other",result="hit"} 1
cacheaside_requests_total{cache="shop",group="other",result="l1_hit"} 0
cacheaside_requests_total{cache="shop",group="other",result="miss"} 2
cacheaside_requests_total{cache="shop",group="other",result="negative_hit"} 0
cacheaside_requests_total{cache="shop",group="other",result="stale"} 0
cacheaside_requests_total{cache="shop",group="product",result="hit"} 0
cacheaside_requests_total{cache="shop",group="product",result="l1_hit"} 0
cacheaside_requests_total{cache="shop",group="product",result="miss"} 1
cacheaside_requests_total{cache="shop",group="product",result="negative_hit"} 0
cacheaside_requests_total{cache="shop",group="product",result="stale"} 0
cacheaside_requests_total{cache="shop",group="user",result="hit"} 1
cacheaside_requests_total{cache="shop",group="user",result="l1_hit"} 0
cacheaside_requests_total{cache="shop",group="user",result="miss"} 1
cacheaside_requests_total{cache="shop",group="user",result="negative_hit"} 0
cacheaside_requests_total{cache="shop",group="user",result="stale"} 0
`), "cacheaside_requests_total"))
	require.Equal(t, map[string]uint64{"user": 1, "product": 1, "other": 2},
		histogramCounts(t, reg, "cacheaside_load_duration_seconds", "group"))
	problems, err := testutil.CollectAndLint(c.obs.prom)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// CollectAndLint finds nothing to say about any metric, with every kind of store.
func TestPrometheusLint(t *testing.T) {
	for name, store := range map[string]Store{"memory": NewMemoryStore(), "round trips": newFaultyStore(t)} {
		c := newTestCache[string](t, store, WithPrometheus(prometheus.NewRegistry(), "lint"))
		_, err := c.GetOrLoad(bg(), "a", constLoad("v"))
		require.NoError(t, err)
		problems, err := testutil.CollectAndLint(c.obs.prom)
		require.NoError(t, err)
		require.Empty(t, problems, name)
	}
}

// New registers, Close unregisters; two caches of one name on one registry are refused with a
// clear error; caches of different names, stores and key group settings share a registry.
func TestPrometheusRegistration(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, err := New[string](NewMemoryStore(), WithPrometheus(reg, "a"))
	require.NoError(t, err)

	for _, store := range []Store{NewMemoryStore(), newFaultyStore(t)} {
		_, err = New[string](store, WithPrometheus(reg, "a"))
		require.Error(t, err)
		var are prometheus.AlreadyRegisteredError
		require.ErrorAs(t, err, &are)
		require.Contains(t, err.Error(), `cacheaside: prometheus: the metrics of cache "a" are already registered`)
	}

	b := newTestCache[string](t, newFaultyStore(t), WithPrometheus(reg, "b"))
	g := newTestCache[string](t, NewMemoryStore(), WithPrometheus(reg, "g"), WithKeyGroups(KeyGroupBefore(":"), 4))
	for _, c := range []*Cache[string]{a, b, g} {
		_, err := c.GetOrLoad(bg(), "user:1", constLoad("v"))
		require.NoError(t, err)
	}
	_, err = reg.Gather()
	require.NoError(t, err, "the pedantic registry accepts the mix")

	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "idempotent")
	again := newTestCache[string](t, NewMemoryStore(), WithPrometheus(reg, "a"))
	_, err = again.GetOrLoad(bg(), "user:1", constLoad("v"))
	require.NoError(t, err)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP cacheaside_loads_total Loader calls by outcome: ok, not_found, error, panic.
# TYPE cacheaside_loads_total counter
cacheaside_loads_total{cache="a",group="",outcome="error"} 0
cacheaside_loads_total{cache="a",group="",outcome="not_found"} 0
cacheaside_loads_total{cache="a",group="",outcome="ok"} 1
cacheaside_loads_total{cache="a",group="",outcome="panic"} 0
cacheaside_loads_total{cache="b",group="",outcome="error"} 0
cacheaside_loads_total{cache="b",group="",outcome="not_found"} 0
cacheaside_loads_total{cache="b",group="",outcome="ok"} 1
cacheaside_loads_total{cache="b",group="",outcome="panic"} 0
cacheaside_loads_total{cache="g",group="other",outcome="error"} 0
cacheaside_loads_total{cache="g",group="other",outcome="not_found"} 0
cacheaside_loads_total{cache="g",group="other",outcome="ok"} 0
cacheaside_loads_total{cache="g",group="other",outcome="panic"} 0
cacheaside_loads_total{cache="g",group="user",outcome="error"} 0
cacheaside_loads_total{cache="g",group="user",outcome="not_found"} 0
cacheaside_loads_total{cache="g",group="user",outcome="ok"} 1
cacheaside_loads_total{cache="g",group="user",outcome="panic"} 0
`), "cacheaside_loads_total"), "a's old series are gone with Close; the new a starts afresh")
}

// Scrapes run concurrently with traffic (the race detector watches).
func TestPrometheusConcurrentScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newTestCache[string](t, NewMemoryStore(), WithPrometheus(reg, "busy"), WithKeyGroups(KeyGroupBefore(":"), 4))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = c.GetOrLoad(bg(), fmt.Sprintf("g%d:%d", (i+j)%8, j%16), constLoad("v"))
			}
		}()
	}
	for range 50 {
		_, err := reg.Gather()
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	s := c.Stats()
	var total float64
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "cacheaside_requests_total" {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	require.EqualValues(t, s.Requests(), total, "Stats and Prometheus read the same counters")
}
