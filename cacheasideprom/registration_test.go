package cacheasideprom

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

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
