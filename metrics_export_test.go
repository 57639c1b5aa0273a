package cacheaside

// The metrics exporters' hook: what Metrics reads (package cacheasideprom's tests pin how
// Prometheus shows it), and the exporters' life with the Cache's.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// metricsOf reads c's Metrics, as an exporter does.
func metricsOf[T any](c *Cache[T]) Metrics {
	var m Metrics
	c.obs.readMetrics(&m)
	return m
}

// countOf returns the count of label in cs (the test fails if there is none).
func countOf(t testing.TB, cs []Count, label string) uint64 {
	t.Helper()
	for _, c := range cs {
		if c.Label == label {
			return c.N
		}
	}
	t.Fatalf("no count %q in %v", label, cs)
	return 0
}

// groupOf returns the metrics of key group g.
func groupOf(t testing.TB, m Metrics, g string) GroupMetrics {
	t.Helper()
	for _, gm := range m.Groups {
		if gm.Group == g {
			return gm
		}
	}
	t.Fatalf("no group %q", g)
	return GroupMetrics{}
}

// requestsByResult returns the requests of group "" by result: hit, l1_hit, miss, negative_hit,
// stale.
func requestsByResult(t testing.TB, m Metrics) []uint64 {
	t.Helper()
	g := groupOf(t, m, "")
	out := []uint64{}
	for _, r := range []string{"hit", "l1_hit", "miss", "negative_hit", "stale"} {
		out = append(out, countOf(t, g.Requests, r))
	}
	return out
}

// L1 hits (single and batch), entries dropped on other instances' invalidations (those held
// here, not the keys named), and flushes on subscription changes and unreadable messages, in
// Stats and in Metrics.
func TestMetricsLocalCache(t *testing.T) {
	ms := NewMemoryStore()
	defer ms.Close()
	bus := &manualBus{ready: make(chan struct{})}
	c := newTestCache[string](t, manualStore{ms, bus}, l1Opts()...)
	<-bus.ready
	compare := func(step string, l1Hits, drops, flushes int) {
		t.Helper()
		m := metricsOf(c)
		require.Equal(t, []uint64{0, uint64(l1Hits), 3, 0, 0}, requestsByResult(t, m), step)
		require.Equal(t, []uint64{uint64(drops), uint64(flushes)}, []uint64{m.L1BroadcastDrops, m.L1Flushes}, step)
		s := c.Stats()
		require.Equal(t, []uint64{uint64(l1Hits), uint64(drops), uint64(flushes)}, []uint64{s.L1Hits, s.L1BroadcastDrops, s.L1Flushes}, step)
	}

	bus.emit(SubscriptionLive, nil) // the first subscription: nothing was cached to flush
	for _, k := range []string{"a", "b", "c"} {
		_, err := c.GetOrLoad(bg(), k, constLoad(k)) // misses: filled into L1
		require.NoError(t, err)
	}
	compare("three misses", 0, 0, 0)
	for range 2 {
		_, err := c.GetOrLoad(bg(), "a", constLoad("other"))
		require.NoError(t, err)
	}
	m, err := c.GetOrLoadMany(bg(), []string{"b", "c"}, func(context.Context, []string) (map[string]string, error) {
		return nil, errors.New("must not load")
	})
	require.NoError(t, err)
	require.Len(t, m, 2)
	compare("two L1 hits and a batch of two", 4, 0, 0)

	bus.emit(SubscriptionMessage, encodeKeysMsg("another instance", []string{"a", "b", "not cached here"}))
	compare("a message naming two held keys and one other", 4, 2, 0)
	bus.emit(SubscriptionMessage, encodeKeysMsg("another instance", []string{"a"}))
	compare("a key dropped already", 4, 2, 0)
	bus.emit(SubscriptionMessage, encodeAllMsg("another instance", "*"))
	compare("a pattern message: the one entry left", 4, 3, 0)

	bus.emit(SubscriptionLost, nil)
	compare("subscription lost", 4, 3, 1)
	bus.emit(SubscriptionLive, nil)
	compare("subscribed again", 4, 3, 2)
	bus.emit(SubscriptionMessage, []byte("not a message of ours"))
	compare("an unreadable message", 4, 3, 3)
}

// Early refreshes, stale-while-revalidate and stale-if-error, in Metrics: the requests served
// stale (both kinds), those served for a failed load among them, and the refreshes started
// before expiry.
func TestMetricsStale(t *testing.T) {
	clk := newFakeClock()
	c := newTestCache[string](t, NewMemoryStore(), WithTTL(time.Hour), WithTTLJitter(0),
		WithEarlyRefresh(1), WithStaleWhileRevalidate(time.Minute), WithStaleIfError(time.Hour))
	useClock(clk, c)
	c.fresh.rand = func() float64 { return 0 } // no early refresh unless a step asks for one
	compare := func(step string, hit, miss, stale, early, staleIfError, loadsOK, loadErrors int) {
		t.Helper()
		m := metricsOf(c)
		require.Equal(t, []uint64{uint64(hit), 0, uint64(miss), 0, uint64(stale)}, requestsByResult(t, m), step)
		require.Equal(t, []uint64{uint64(early), uint64(staleIfError)}, []uint64{m.EarlyRefreshes, m.StaleIfError}, step)
		g := groupOf(t, m, "")
		require.Equal(t, []uint64{uint64(loadsOK), 0, uint64(loadErrors), 0},
			[]uint64{countOf(t, g.Loads, "ok"), countOf(t, g.Loads, "not_found"), countOf(t, g.Loads, "error"), countOf(t, g.Loads, "panic")}, step)
		require.Equal(t, g.LoadDuration.Count, uint64(loadsOK+loadErrors), step)
		s := c.Stats()
		require.Equal(t, []uint64{uint64(stale), uint64(early), uint64(staleIfError)}, []uint64{s.Stale, s.EarlyRefreshes, s.StaleIfError}, step)
	}
	read := func(want string, load func(context.Context) (string, error)) {
		t.Helper()
		v, err := c.GetOrLoad(bg(), "k", load)
		require.NoError(t, err)
		require.Equal(t, want, v)
		idle(t, c)
	}

	compare("every count at zero", 0, 0, 0, 0, 0, 0, 0)
	read("v1", func(context.Context) (string, error) {
		time.Sleep(2 * time.Millisecond) // delta: the early refresh draw scales with it
		return "v1", nil
	})
	compare("a miss", 0, 1, 0, 0, 0, 1, 0)

	clk.advance(time.Hour - time.Millisecond)
	c.fresh.rand = func() float64 { return 0.99 } // 1 ms before expiry: refresh
	read("v1", constLoad("v2"))
	c.fresh.rand = func() float64 { return 0 }
	compare("a hit refreshed early", 1, 1, 0, 1, 0, 2, 0)

	clk.advance(time.Hour + 30*time.Second)
	read("v2", constLoad("v3"))
	compare("past expiry, within stale-while-revalidate: served stale, refreshed", 1, 1, 1, 1, 0, 3, 0)

	clk.advance(time.Hour + 2*time.Minute)
	read("v3", func(context.Context) (string, error) { return "", errors.New("database down") })
	compare("past stale-while-revalidate, within stale-if-error: a failed load", 1, 1, 2, 1, 1, 3, 1)
}

// Histograms: one per group for loads, one per op for the stores with round trips only, with
// cumulative buckets.
func TestMetricsHistograms(t *testing.T) {
	mem := newTestCache[string](t, NewMemoryStore())
	_, err := mem.GetOrLoad(bg(), "a", constLoad("v"))
	require.NoError(t, err)
	m := metricsOf(mem)
	require.Empty(t, m.StoreDurations, "a MemoryStore is not timed")
	h := groupOf(t, m, "").LoadDuration
	require.EqualValues(t, 1, h.Count)
	require.Len(t, h.Buckets, len(loadBuckets()))
	require.Equal(t, time.Millisecond, h.Buckets[0].UpperBound)
	require.Equal(t, 10*time.Second, h.Buckets[len(h.Buckets)-1].UpperBound)
	require.EqualValues(t, 1, h.Buckets[len(h.Buckets)-1].Count, "cumulative: the last bucket holds the fast load")

	timed := newTestCache[string](t, newFaultyStore(t))
	_, err = timed.GetOrLoad(bg(), "a", constLoad("v"))
	require.NoError(t, err)
	m = metricsOf(timed)
	require.Len(t, m.StoreDurations, int(numStoreOps))
	for _, sd := range m.StoreDurations {
		require.Len(t, sd.Buckets, len(storeBuckets()), sd.Label)
		switch sd.Label {
		case "get_or_lease", "fill":
			require.EqualValues(t, 1, sd.Count, sd.Label)
			require.Positive(t, sd.Sum, sd.Label)
		}
	}

	// Reading again reuses the slices and reads the same.
	again := m
	timed.obs.readMetrics(&again)
	require.Equal(t, m, again)
}

// stubExporter records its life; fail makes Export fail.
type stubExporter struct {
	mu      sync.Mutex
	cache   string
	read    func(*Metrics)
	loads   int
	stopped int
	fail    error
}

func (e *stubExporter) Export(cache string, read func(*Metrics)) (MetricsRecorder, error) {
	if e.fail != nil {
		return nil, e.fail
	}
	e.cache, e.read = cache, read
	return e, nil
}

func (e *stubExporter) LoadDuration(string, time.Duration) {
	e.mu.Lock()
	e.loads++
	e.mu.Unlock()
}
func (e *stubExporter) StoreDuration(string, time.Duration) {}
func (e *stubExporter) Stop() error {
	e.mu.Lock()
	e.stopped++
	e.mu.Unlock()
	return nil
}

// Several exporters all start with New, under the cache's name, all record, and all stop
// with Close; if one fails, New stops those it started and fails.
func TestMetricsExporters(t *testing.T) {
	a, b := &stubExporter{}, &stubExporter{}
	c, err := New[string](NewMemoryStore(), WithPrefix(testPrefix(t)), WithMetricsExporter(a), WithName("users"), WithMetricsExporter(b))
	require.NoError(t, err)
	_, err = c.GetOrLoad(bg(), "k", constLoad("v"))
	require.NoError(t, err)
	for _, e := range []*stubExporter{a, b} {
		require.Equal(t, "users", e.cache)
		require.Equal(t, 1, e.loads)
		var m Metrics
		e.read(&m)
		require.EqualValues(t, 1, countOf(t, groupOf(t, m, "").Requests, "miss"))
	}
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	require.Equal(t, []int{1, 1}, []int{a.stopped, b.stopped}, "Close stops every exporter, once")

	unnamed := &stubExporter{}
	prefix := testPrefix(t)
	newTestCache[string](t, NewMemoryStore(), WithPrefix(prefix), WithMetricsExporter(unnamed))
	require.Equal(t, prefix, unnamed.cache, "without WithName, the prefix names the cache")

	first, refused := &stubExporter{}, &stubExporter{fail: errors.New("refused")}
	_, err = New[string](NewMemoryStore(), WithName("x"), WithMetricsExporter(first), WithMetricsExporter(refused))
	require.ErrorContains(t, err, `cacheaside: metrics exporter for cache "x": refused`)
	require.Equal(t, 1, first.stopped, "the exporter started before the failure is stopped")
}

func TestMetricsOptionsValidate(t *testing.T) {
	for name, opt := range map[string]Option{
		"nil exporter": WithMetricsExporter(nil),
		"empty name":   WithName(""),
		"bad name":     WithName("\xff"),
	} {
		_, err := New[string](NewMemoryStore(), opt)
		require.ErrorIs(t, err, ErrInvalidOption, name)
	}
}

// An exporter whose recorder is a StopFunc is never called for a duration (the cache's rec
// stays nil: its calls run as without the exporter), and is stopped by Close; a recorder that
// takes durations beside it still gets them all.
func TestMetricsStopFuncTakesNoDurations(t *testing.T) {
	stops := 0
	onlyStop := exporterFunc(func(string, func(*Metrics)) (MetricsRecorder, error) {
		return StopFunc(func() error { stops++; return nil }), nil
	})
	c, err := New[string](newFaultyStore(t), WithPrefix(testPrefix(t)), WithMetricsExporter(onlyStop))
	require.NoError(t, err)
	require.Nil(t, c.obs.rec, "no recorder on the cache's calls")
	_, err = c.GetOrLoad(bg(), "k", constLoad("v"))
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Equal(t, 1, stops)

	timing := &stubExporter{}
	c = newTestCache[string](t, newFaultyStore(t), WithMetricsExporter(onlyStop), WithMetricsExporter(timing))
	require.Same(t, timing, c.obs.rec, "only the recorder that takes durations")
	_, err = c.GetOrLoad(bg(), "k", constLoad("v"))
	require.NoError(t, err)
	require.Equal(t, 1, timing.loads)
}

type exporterFunc func(string, func(*Metrics)) (MetricsRecorder, error)

func (f exporterFunc) Export(cache string, read func(*Metrics)) (MetricsRecorder, error) {
	return f(cache, read)
}
