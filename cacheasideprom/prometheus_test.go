package cacheasideprom

// The Prometheus metrics: names, labels, help texts and values (scripted through a cache, and
// mapped from a Metrics snapshot), registration, lint, concurrent scrapes, the dashboard.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
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

// errInjected is what a faultyStore answers while it fails.
var errInjected = errors.New("dial tcp 127.0.0.1:1: connect: connection refused")

// faultyStore is a MemoryStore that fails every operation while fail is set. Being no
// *MemoryStore itself, it counts as a store with round trips: its durations are measured.
type faultyStore struct {
	*cacheaside.MemoryStore
	Peek struct{} // hides MemoryStore.Peek (InProcessStore): every read goes through the methods below
	fail atomic.Bool
}

func newFaultyStore(t testing.TB) *faultyStore {
	s := &faultyStore{MemoryStore: cacheaside.NewMemoryStore()}
	t.Cleanup(func() { s.MemoryStore.Close() })
	return s
}

func (s *faultyStore) err() error {
	if s.fail.Load() {
		return errInjected
	}
	return nil
}

func (s *faultyStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (cacheaside.Lookup, error) {
	if err := s.err(); err != nil {
		return cacheaside.Lookup{}, err
	}
	return s.MemoryStore.GetOrLease(ctx, key, token, leaseTTL)
}

func (s *faultyStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]cacheaside.Lookup, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.MemoryStore.GetOrLeaseMany(ctx, keys, token, leaseTTL)
}

func (s *faultyStore) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (cacheaside.Lookup, error) {
	if err := s.err(); err != nil {
		return cacheaside.Lookup{}, err
	}
	return s.MemoryStore.Lease(ctx, key, token, leaseTTL)
}

func (s *faultyStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	if err := s.err(); err != nil {
		return false, err
	}
	return s.MemoryStore.Fill(ctx, key, token, value, ttl)
}

func (s *faultyStore) FillMany(ctx context.Context, token string, entries []cacheaside.FillEntry) ([]bool, error) {
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

// putGarbage stores bytes that are no entry of any cache at sk, through the store's lease.
func putGarbage(t testing.TB, s cacheaside.Store, sk string) {
	t.Helper()
	lk, err := s.Lease(bg(), sk, "garbage-writer", time.Minute)
	require.NoError(t, err)
	require.True(t, lk.Granted)
	ok, err := s.Fill(bg(), sk, "garbage-writer", []byte("not an envelope"), time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
}

// promHelp is the help text of every metric, as the collector describes it.
var promHelp = map[string]string{
	"cacheaside_requests_total":            "Cache requests by how they were answered: hit, l1_hit, negative_hit and stale from the cache, miss by a load.",
	"cacheaside_loads_total":               "Loader calls by outcome: ok, not_found, error, panic.",
	"cacheaside_store_errors_total":        "Store operations that failed or timed out, by operation.",
	"cacheaside_lease_waits_total":         "Waits for a lease held by another process.",
	"cacheaside_coalesced_total":           "Calls that shared work in this process: joined a load or lease wait in flight (flight), or shared a store lookup (lookup).",
	"cacheaside_early_refreshes_total":     "Refreshes started before expiry (early refresh).",
	"cacheaside_stale_if_error_total":      "Requests answered with an expired value because its load failed (stale-if-error); also counted as result stale in cacheaside_requests_total.",
	"cacheaside_invalidations_total":       "Invalidations: keys passed to Invalidate (key), InvalidatePattern calls (pattern), tags passed to InvalidateTags (tag).",
	"cacheaside_l1_broadcast_drops_total":  "Local cache entries dropped on another instance's invalidation broadcast (entries this instance held, not keys named).",
	"cacheaside_l1_flushes_total":          "Times the whole local cache was dropped because an invalidation may have been missed.",
	"cacheaside_breaker_open":              "Whether the circuit breaker skips the store: 1 open, 0 closed.",
	"cacheaside_breaker_transitions_total": "Circuit breaker transitions, by the state entered.",
	"cacheaside_undecodable_values_total":  "Stored entries that did not decode, treated as misses and replaced.",
}

// Label sets after cache, in the order the registry sorts the series.
var (
	noLabels      = []string{""}
	resultLabels  = []string{`group="",result="hit"`, `group="",result="l1_hit"`, `group="",result="miss"`, `group="",result="negative_hit"`, `group="",result="stale"`}
	outcomeLabels = []string{`group="",outcome="error"`, `group="",outcome="not_found"`, `group="",outcome="ok"`, `group="",outcome="panic"`}
	opLabels      = []string{`op="add_tags"`, `op="delete"`, `op="delete_pattern"`, `op="fill"`, `op="fill_many"`, `op="get_or_lease"`, `op="get_or_lease_many"`, `op="lease"`, `op="ping"`, `op="publish"`, `op="release"`, `op="remove_tags"`, `op="tagged_keys"`}
)

// expo is the exposition of metric name of cache "users", for testutil: its HELP and TYPE
// lines, then a series for each label set in labels (after cache) with the value of the same
// index.
func expo(name string, labels []string, values ...int) string {
	typ := "counter"
	if !strings.HasSuffix(name, "_total") {
		typ = "gauge"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, promHelp[name], name, typ)
	for i, l := range labels {
		if l != "" {
			l = "," + l
		}
		fmt.Fprintf(&b, "%s{cache=\"users\"%s} %d\n", name, l, values[i])
	}
	return b.String()
}

// promCounters is the exposition of every counter and gauge of cache "users" (key groups
// off), with the values given in order: requests hit, l1_hit, miss, negative_hit, stale;
// loads error, not_found, ok, panic; store errors delete, delete_pattern, fill, fill_many,
// get_or_lease, get_or_lease_many, lease, ping, release (add_tags, publish, remove_tags,
// tagged_keys: 0); lease waits; coalesced flight, lookup; early refreshes; stale-if-error;
// invalidations key, pattern (tag: 0); l1 drops; l1
// flushes; breaker open; transitions closed, open; undecodable.
func promCounters(v ...int) string {
	take := func(n int) []int {
		out := append([]int(nil), v[:n]...)
		v = v[n:]
		return out
	}
	return expo("cacheaside_requests_total", resultLabels, take(5)...) +
		expo("cacheaside_loads_total", outcomeLabels, take(4)...) +
		expo("cacheaside_store_errors_total", opLabels, slices.Concat([]int{0}, take(8), []int{0}, take(1), []int{0, 0})...) +
		expo("cacheaside_lease_waits_total", noLabels, take(1)...) +
		expo("cacheaside_coalesced_total", []string{`kind="flight"`, `kind="lookup"`}, take(2)...) +
		expo("cacheaside_early_refreshes_total", noLabels, take(1)...) +
		expo("cacheaside_stale_if_error_total", noLabels, take(1)...) +
		expo("cacheaside_invalidations_total", []string{`kind="key"`, `kind="pattern"`, `kind="tag"`}, append(take(2), 0)...) +
		expo("cacheaside_l1_broadcast_drops_total", noLabels, take(1)...) +
		expo("cacheaside_l1_flushes_total", noLabels, take(1)...) +
		expo("cacheaside_breaker_open", noLabels, take(1)...) +
		expo("cacheaside_breaker_transitions_total", []string{`state="closed"`, `state="open"`}, take(2)...) +
		expo("cacheaside_undecodable_values_total", noLabels, take(1)...)
}

var counterNames = []string{
	"cacheaside_requests_total", "cacheaside_loads_total", "cacheaside_store_errors_total",
	"cacheaside_lease_waits_total", "cacheaside_coalesced_total", "cacheaside_early_refreshes_total", "cacheaside_stale_if_error_total",
	"cacheaside_invalidations_total", "cacheaside_l1_broadcast_drops_total", "cacheaside_l1_flushes_total",
	"cacheaside_breaker_open", "cacheaside_breaker_transitions_total", "cacheaside_undecodable_values_total",
}

// gathered returns the metric family name gathered from g, or nil.
func gathered(t *testing.T, g prometheus.Gatherer, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// histogramCounts returns the sample count of every series of the histogram name, by the
// value of label.
func histogramCounts(t *testing.T, g prometheus.Gatherer, name, label string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	mf := gathered(t, g, name)
	if mf == nil {
		return out
	}
	require.Equal(t, dto.MetricType_HISTOGRAM, mf.GetType())
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] = m.GetHistogram().GetSampleCount()
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

// New registers, Close unregisters; two caches of one name on one registry are refused with a
// clear error; caches of different names, stores and key group settings share a registry.
func TestPrometheusRegistration(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, err := cacheaside.New[string](cacheaside.NewMemoryStore(), WithPrometheus(reg, "a"))
	require.NoError(t, err)

	for _, store := range []cacheaside.Store{cacheaside.NewMemoryStore(), newFaultyStore(t)} {
		_, err = cacheaside.New[string](store, WithPrometheus(reg, "a"))
		require.Error(t, err)
		var are prometheus.AlreadyRegisteredError
		require.ErrorAs(t, err, &are)
		require.Contains(t, err.Error(), `cacheaside: metrics exporter for cache "a": prometheus: the metrics of cache "a" are already registered`)
	}

	b := newTestCache(t, newFaultyStore(t), WithPrometheus(reg, "b"))
	g := newTestCache(t, cacheaside.NewMemoryStore(), WithPrometheus(reg, "g"), cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 4))
	for _, c := range []*cacheaside.Cache[string]{a, b, g} {
		_, err := c.GetOrLoad(bg(), "user:1", constLoad("v"))
		require.NoError(t, err)
	}
	_, err = reg.Gather()
	require.NoError(t, err, "the pedantic registry accepts the mix")

	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "idempotent")
	again := newTestCache(t, cacheaside.NewMemoryStore(), WithPrometheus(reg, "a"))
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
	c := newTestCache(t, cacheaside.NewMemoryStore(), WithPrometheus(reg, "busy"), cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 4))
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

// promSeries returns the value of every series of the counter or gauge name gathered from g,
// keyed by its labels other than cache ("kind=flight"; "" for none).
func promSeries(t *testing.T, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	mf := gathered(t, g, name)
	for _, m := range mf.GetMetric() {
		var labels []string
		for _, lp := range m.GetLabel() {
			if lp.GetName() != "cache" {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
		}
		v := m.GetCounter().GetValue()
		if mf.GetType() == dto.MetricType_GAUGE {
			v = m.GetGauge().GetValue()
		}
		out[strings.Join(labels, ",")] = v
	}
	return out
}

// The Grafana dashboard in examples/ queries only metrics the collector exports, so a rename
// cannot leave a panel empty.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	newTestCache(t, newFaultyStore(t), WithPrometheus(reg, "dash")) // a store with round trips: timed
	mfs, err := reg.Gather()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	dash, err := os.ReadFile("../examples/grafana/cacheaside-dashboard.json")
	require.NoError(t, err)
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`cacheaside_[a-z0-9_]+`).FindAllString(string(dash), -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(m, suffix); ok && exported[base] {
				m = base
			}
		}
		used[m] = true
	}
	require.NotEmpty(t, used)
	for m := range used {
		require.True(t, exported[m], "the dashboard queries %s, which the collector does not export", m)
	}
	for m := range exported {
		if !used[m] {
			t.Logf("not on the dashboard: %s", m)
		}
	}
}

// Every field of a Metrics snapshot, each with its own value, shows as the series of the
// metric it feeds: the mapping pinned whole, histograms (buckets in seconds) included.
func TestCollectorMapsEveryField(t *testing.T) {
	h := func(n uint64) cacheaside.Histogram {
		return cacheaside.Histogram{Count: n + 1, Sum: time.Duration(n) * time.Millisecond, Buckets: []cacheaside.Bucket{
			{UpperBound: time.Millisecond, Count: n - 1}, {UpperBound: 2500 * time.Microsecond, Count: n},
		}}
	}
	read := func(m *cacheaside.Metrics) {
		*m = cacheaside.Metrics{
			Groups: []cacheaside.GroupMetrics{{
				Group:        "user",
				Requests:     []cacheaside.Count{{Label: "hit", N: 1}, {Label: "l1_hit", N: 2}, {Label: "miss", N: 3}, {Label: "negative_hit", N: 4}, {Label: "stale", N: 5}},
				Loads:        []cacheaside.Count{{Label: "ok", N: 6}, {Label: "not_found", N: 7}, {Label: "error", N: 8}, {Label: "panic", N: 9}},
				LoadDuration: h(10),
			}},
			StoreErrors:        []cacheaside.Count{{Label: "fill", N: 11}, {Label: "get_or_lease", N: 12}},
			StoreDurations:     []cacheaside.LabelHistogram{{Label: "fill", Histogram: h(13)}},
			LeaseWaits:         14,
			Coalesced:          []cacheaside.Count{{Label: "flight", N: 15}, {Label: "lookup", N: 16}},
			EarlyRefreshes:     17,
			StaleIfError:       18,
			Invalidations:      []cacheaside.Count{{Label: "key", N: 19}, {Label: "pattern", N: 20}, {Label: "tag", N: 21}},
			L1BroadcastDrops:   22,
			L1Flushes:          23,
			BreakerOpen:        true,
			BreakerTransitions: []cacheaside.Count{{Label: "closed", N: 24}, {Label: "open", N: 25}},
			UndecodableValues:  26,
		}
	}
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(newCollector("c", read)))
	series := func(name string, labels ...string) string {
		var b strings.Builder
		typ := "counter"
		if !strings.HasSuffix(name, "_total") {
			typ = "gauge"
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, promHelp[name], name, typ)
		for _, l := range labels {
			fmt.Fprintf(&b, "%s{cache=\"c\"%s\n", name, l)
		}
		return b.String()
	}
	want := series("cacheaside_requests_total", `,group="user",result="hit"} 1`, `,group="user",result="l1_hit"} 2`,
		`,group="user",result="miss"} 3`, `,group="user",result="negative_hit"} 4`, `,group="user",result="stale"} 5`) +
		series("cacheaside_loads_total", `,group="user",outcome="error"} 8`, `,group="user",outcome="not_found"} 7`,
			`,group="user",outcome="ok"} 6`, `,group="user",outcome="panic"} 9`) +
		`# HELP cacheaside_load_duration_seconds Duration of loader calls.
# TYPE cacheaside_load_duration_seconds histogram
cacheaside_load_duration_seconds_bucket{cache="c",group="user",le="0.001"} 9
cacheaside_load_duration_seconds_bucket{cache="c",group="user",le="0.0025"} 10
cacheaside_load_duration_seconds_bucket{cache="c",group="user",le="+Inf"} 11
cacheaside_load_duration_seconds_sum{cache="c",group="user"} 0.01
cacheaside_load_duration_seconds_count{cache="c",group="user"} 11
` + series("cacheaside_store_errors_total", `,op="fill"} 11`, `,op="get_or_lease"} 12`) +
		`# HELP cacheaside_store_duration_seconds Duration of store operations, by operation (stores with network round trips only).
# TYPE cacheaside_store_duration_seconds histogram
cacheaside_store_duration_seconds_bucket{cache="c",op="fill",le="0.001"} 12
cacheaside_store_duration_seconds_bucket{cache="c",op="fill",le="0.0025"} 13
cacheaside_store_duration_seconds_bucket{cache="c",op="fill",le="+Inf"} 14
cacheaside_store_duration_seconds_sum{cache="c",op="fill"} 0.013
cacheaside_store_duration_seconds_count{cache="c",op="fill"} 14
` + series("cacheaside_lease_waits_total", `} 14`) +
		series("cacheaside_coalesced_total", `,kind="flight"} 15`, `,kind="lookup"} 16`) +
		series("cacheaside_early_refreshes_total", `} 17`) +
		series("cacheaside_stale_if_error_total", `} 18`) +
		series("cacheaside_invalidations_total", `,kind="key"} 19`, `,kind="pattern"} 20`, `,kind="tag"} 21`) +
		series("cacheaside_l1_broadcast_drops_total", `} 22`) +
		series("cacheaside_l1_flushes_total", `} 23`) +
		series("cacheaside_breaker_open", `} 1`) +
		series("cacheaside_breaker_transitions_total", `,state="closed"} 24`, `,state="open"} 25`) +
		series("cacheaside_undecodable_values_total", `} 26`)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want)))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

func TestWithPrometheusValidates(t *testing.T) {
	for name, opt := range map[string]cacheaside.Option{
		"nil registerer": WithPrometheus(nil, "c"),
		"empty name":     WithPrometheus(prometheus.NewRegistry(), ""),
		"bad name":       WithPrometheus(prometheus.NewRegistry(), "\xff"),
	} {
		_, err := cacheaside.New[string](cacheaside.NewMemoryStore(), opt)
		require.ErrorIs(t, err, cacheaside.ErrInvalidOption, name)
	}
}

// WithPrometheus adds no allocation to a hit, and names the cache (the same name the other
// exporters see).
func TestWithPrometheusHitAllocsAndName(t *testing.T) {
	ctx := bg()
	allocs := func(opts ...cacheaside.Option) float64 {
		c := newTestCache(t, cacheaside.NewMemoryStore(), opts...)
		_, err := c.GetOrLoad(ctx, "user:1", constLoad("v"))
		require.NoError(t, err)
		return testing.AllocsPerRun(500, func() {
			if v, err := c.GetOrLoad(ctx, "user:1", constLoad("other")); err != nil || v != "v" {
				t.Fatalf("not a hit: %q, %v", v, err)
			}
		})
	}
	require.Equal(t, allocs(), allocs(WithPrometheus(prometheus.NewRegistry(), "alloc"), cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 8)))

	var named string
	newTestCache(t, cacheaside.NewMemoryStore(), WithPrometheus(prometheus.NewRegistry(), "users"),
		cacheaside.WithMetricsExporter(nameExporter{&named}))
	require.Equal(t, "users", named)
}

type nameExporter struct{ name *string }

func (e nameExporter) Export(cache string, _ func(*cacheaside.Metrics)) (cacheaside.MetricsRecorder, error) {
	*e.name = cache
	return e, nil
}
func (nameExporter) LoadDuration(string, time.Duration)  {}
func (nameExporter) StoreDuration(string, time.Duration) {}
func (nameExporter) Stop() error                         { return nil }
