package cacheasideprom

// The Prometheus metrics: names, labels, help texts and values (scripted through a cache, and
// mapped from a Metrics snapshot), registration, lint, concurrent scrapes, the dashboard.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// testPrefix is the prefix of every test cache.
const testPrefix = "prom-test:"

// releaseAttempts is how often cacheaside tries to release a lease while the store fails
// (releaseAttempts in lease.go).
const releaseAttempts = 4

func bg() context.Context { return context.Background() }

func constLoad(v string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return v, nil }
}

// newTestCache is a cache of strings on store, closed at the end of the test.
func newTestCache(t testing.TB, store cacheaside.Store, opts ...cacheaside.Option) *cacheaside.Cache[string] {
	t.Helper()
	c, err := cacheaside.New[string](store, append([]cacheaside.Option{cacheaside.WithPrefix(testPrefix)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// poll waits for cond (a generous bound catches a hang).
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPrometheusMetrics scripts hits, misses, loads of every outcome, bad data,
// invalidations and store failures, and compares every counter after each step.
func TestPrometheusMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	store := newFaultyStore(t)
	c := newTestCache(t, store, WithPrometheus(reg, "users"), cacheaside.WithCircuitBreaker(1000, time.Hour),
		cacheaside.WithInvalidateTimeout(time.Nanosecond)) // one attempt: one failed delete per Invalidate
	ctx := bg()
	compare := func(step string, v ...int) {
		t.Helper()
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(promCounters(v...)), counterNames...), step)
	}

	//       hit l1 miss neg stale | err nf ok panic | del delp fill fillm get getm lease ping rel | waits | flight lookup | early | sie | key pattern | drops flushes | open | closed opened | undecodable
	compare("every series at zero from the start",
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

	_, err := c.GetOrLoad(ctx, "a", constLoad("A"))
	require.NoError(t, err)
	_, err = c.GetOrLoad(ctx, "a", constLoad("A"))
	require.NoError(t, err)
	_, err = c.GetOrLoad(ctx, "a", constLoad("A"))
	require.NoError(t, err)
	compare("a miss and two hits",
		2, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

	notFound := func(context.Context) (string, error) { return "", fmt.Errorf("no row: %w", cacheaside.ErrNotFound) }
	_, err = c.GetOrLoad(ctx, "nf", notFound)
	require.ErrorIs(t, err, cacheaside.ErrNotFound)
	_, err = c.GetOrLoad(ctx, "nf", notFound)
	require.ErrorIs(t, err, cacheaside.ErrNotFound)
	_, err = c.GetOrLoad(ctx, "e", func(context.Context) (string, error) { return "", errors.New("db down") })
	require.Error(t, err)
	func() {
		defer func() { require.NotNil(t, recover()) }()
		_, _ = c.GetOrLoad(ctx, "p", func(context.Context) (string, error) { panic("bad") })
	}()
	compare("not found, negative hit, error, panic",
		2, 0, 3, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

	putGarbage(t, store, testPrefix+"g")
	_, err = c.GetOrLoad(ctx, "g", constLoad("G"))
	require.NoError(t, err)
	require.NoError(t, c.Invalidate(ctx, "a", "g", "x"))
	_, err = c.InvalidatePattern(ctx, "a*")
	require.NoError(t, err)
	compare("bad data, invalidations",
		2, 0, 4, 1, 0, 1, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 1)

	store.fail.Store(true)
	_, err = c.GetOrLoad(ctx, "k", constLoad("K"))
	require.NoError(t, err, "fails open")
	// The fail-open load releases the lease its failed lookup may have been granted, trying
	// releaseAttempts times while the store fails.
	poll(t, "the fail-open release", func() bool {
		return promSeries(t, reg, "cacheaside_store_errors_total")["op=release"] == releaseAttempts
	})
	require.Error(t, c.Invalidate(ctx, "k"))
	_, err = c.InvalidatePattern(ctx, "k*")
	require.Error(t, err)
	compare("store failures",
		2, 0, 5, 1, 0, 1, 1, 3, 1, 1, 1, 0, 0, 1, 0, 0, 0, releaseAttempts, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 1)
	store.fail.Store(false)

	// Durations: one sample per load, one per store operation.
	require.Equal(t, map[string]uint64{"": 6}, histogramCounts(t, reg, "cacheaside_load_duration_seconds", "group"))
	ops := histogramCounts(t, reg, "cacheaside_store_duration_seconds", "op")
	require.Len(t, ops, len(opLabels), "every op has its series")
	require.EqualValues(t, 2, ops["delete"])
	require.EqualValues(t, 2, ops["delete_pattern"])
	require.EqualValues(t, 1, ops["lease"], "the undecodable entry was leased over")
	require.EqualValues(t, 2+releaseAttempts, ops["release"], "after the error, the panic and the fail-open load (retried)")
	require.Zero(t, ops["ping"])
}

// The breaker gauge and transitions, scraped while it is open and after it closed.
func TestPrometheusBreaker(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	store := newFaultyStore(t)
	c := newTestCache(t, store, WithPrometheus(reg, "users"), cacheaside.WithCircuitBreaker(1, 5*time.Millisecond))
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
	poll(t, "breaker closes", func() bool { // state, then its count
		return !c.Stats().BreakerOpen && promSeries(t, reg, "cacheaside_breaker_transitions_total")["state=closed"] >= 1
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
	c := newTestCache(t, cacheaside.NewMemoryStore(), WithPrometheus(reg, "shop"), cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 2))
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
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// A batch loader call counts once: under its keys' group when they share one, under other when
// they do not; its keys' requests count each in its own group.
func TestPrometheusBatchLoadGroups(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := newTestCache(t, cacheaside.NewMemoryStore(), WithPrometheus(reg, "shop"), cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 4))
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v"
		}
		return m, nil
	}
	for _, batch := range [][]string{{"user:1", "user:2"}, {"product:1", "user:3", "product:2"}, {"product:3"}} {
		_, err := c.GetOrLoadMany(bg(), batch, load)
		require.NoError(t, err)
	}
	loads := promSeries(t, reg, "cacheaside_loads_total")
	require.Equal(t, 1.0, loads["group=user,outcome=ok"], "the batch of users")
	require.Equal(t, 1.0, loads["group=product,outcome=ok"], "the batch of one product")
	require.Equal(t, 1.0, loads["group=other,outcome=ok"], "the mixed batch")
	require.Equal(t, map[string]uint64{"user": 1, "product": 1, "other": 1},
		histogramCounts(t, reg, "cacheaside_load_duration_seconds", "group"))
	requests := promSeries(t, reg, "cacheaside_requests_total")
	require.Equal(t, 3.0, requests["group=user,result=miss"])
	require.Equal(t, 3.0, requests["group=product,result=miss"])
	require.Zero(t, requests["group=other,result=miss"])
	require.EqualValues(t, 3, c.Stats().Loads, "the groups' loads add up to the loader calls")
}

// CollectAndLint finds nothing to say about any metric, with every kind of store.
func TestPrometheusLint(t *testing.T) {
	for name, store := range map[string]cacheaside.Store{"memory": cacheaside.NewMemoryStore(), "round trips": newFaultyStore(t)} {
		reg := prometheus.NewRegistry()
		c := newTestCache(t, store, WithPrometheus(reg, "lint"))
		_, err := c.GetOrLoad(bg(), "a", constLoad("v"))
		require.NoError(t, err)
		problems, err := testutil.GatherAndLint(reg)
		require.NoError(t, err)
		require.Empty(t, problems, name)
	}
}
