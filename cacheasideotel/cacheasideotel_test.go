package cacheasideotel_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/cacheasideotel"
	"github.com/cacheaside/cacheaside/cacheasideprom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func load(v string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return v, nil }
}

// series names one data point: instrument (as its Prometheus name) and sorted labels.
func series(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k, v := range labels {
		keys = append(keys, k+"="+v)
	}
	sort.Strings(keys)
	return name + "{" + strings.Join(keys, ",") + "}"
}

func labelsOf(set attribute.Set) map[string]string {
	m := map[string]string{}
	for _, kv := range set.ToSlice() {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

// promName is the Prometheus name of an OpenTelemetry instrument of the cache.
func promName(otel string, counter bool) string {
	n := strings.ReplaceAll(otel, ".", "_")
	if counter {
		n += "_total"
	}
	return n
}

// The OpenTelemetry instruments carry the same counts as the Prometheus metrics, series by
// series; the histograms count what Prometheus's count; Close withdraws the instruments.
func TestMetricsMatchPrometheus(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	reg := prometheus.NewPedanticRegistry()
	ms := cacheaside.NewMemoryStore()
	defer ms.Close()
	store := struct{ cacheaside.Store }{ms} // a store with round trips: store durations are measured
	c, err := cacheaside.New[string](store, cacheaside.WithPrefix("otel-metrics:"),
		cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 4),
		cacheasideprom.WithPrometheus(reg, "users"), cacheasideotel.WithMeterProvider(mp))
	require.NoError(t, err)

	ctx := context.Background()
	for _, k := range []string{"user:1", "user:1", "user:2", "order:1"} {
		_, err := c.GetOrLoad(ctx, k, load("v"))
		require.NoError(t, err)
	}
	_, err = c.GetOrLoad(ctx, "user:3", func(context.Context) (string, error) { return "", cacheaside.ErrNotFound })
	require.ErrorIs(t, err, cacheaside.ErrNotFound)
	require.NoError(t, c.Invalidate(ctx, "user:1", "user:2"))
	_, err = c.InvalidatePattern(ctx, "order:*")
	require.NoError(t, err)

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	require.Len(t, rm.ScopeMetrics, 1)
	require.Equal(t, cacheasideotel.ScopeName, rm.ScopeMetrics[0].Scope.Name)
	require.Equal(t, cacheasideotel.Version(), rm.ScopeMetrics[0].Scope.Version)
	require.NotEmpty(t, rm.ScopeMetrics[0].Scope.Version)

	otel := map[string]float64{} // series -> value
	hist := map[string]uint64{}  // series -> count
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			require.True(t, d.IsMonotonic, m.Name)
			for _, p := range d.DataPoints {
				otel[series(promName(m.Name, true), labelsOf(p.Attributes))] = float64(p.Value)
			}
		case metricdata.Gauge[int64]:
			for _, p := range d.DataPoints {
				otel[series(promName(m.Name, false), labelsOf(p.Attributes))] = float64(p.Value)
			}
		case metricdata.Histogram[float64]:
			require.Equal(t, "s", m.Unit, m.Name)
			for _, p := range d.DataPoints {
				hist[series(promName(m.Name, false)+"_seconds", labelsOf(p.Attributes))] = p.Count
			}
		default:
			t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
		}
	}

	prom := map[string]float64{}
	promHist := map[string]uint64{}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				prom[series(mf.GetName(), labels)] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				prom[series(mf.GetName(), labels)] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil && m.GetHistogram().GetSampleCount() > 0:
				promHist[series(mf.GetName(), labels)] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	// Prometheus names its breaker gauge breaker_open and its L1 counters l1_...: the same.
	require.Equal(t, prom, otel, "every counter series, same labels and values")
	require.Equal(t, promHist, hist, "every histogram series with samples, same counts")
	require.Equal(t, float64(3), otel[series("cacheaside_requests_total", map[string]string{"cache": "users", "group": "user", "result": "miss"})], "user:1, user:2, user:3")
	require.Contains(t, hist, series("cacheaside_store_duration_seconds", map[string]string{"cache": "users", "op": "get_or_lease"}))

	require.NoError(t, c.Close())
	rm = metricdata.ResourceMetrics{}
	require.NoError(t, reader.Collect(ctx, &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				require.Empty(t, s.DataPoints, "%s after Close", m.Name)
			}
		}
	}
}

// Spans come from the tracer of ScopeName at Version.
func TestTracerScope(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	c, err := cacheaside.New[string](cacheaside.NewMemoryStore(), cacheaside.WithPrefix("otel-trace:"),
		cacheasideotel.WithTracerProvider(tp))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.GetOrLoad(context.Background(), "k", load("v"))
	require.NoError(t, err)
	var names []string
	for _, s := range sr.Ended() {
		names = append(names, s.Name())
		require.Equal(t, cacheasideotel.ScopeName, s.InstrumentationScope().Name)
		require.Equal(t, cacheasideotel.Version(), s.InstrumentationScope().Version)
	}
	require.Equal(t, []string{"cacheaside.store.fill", "cacheaside.load"}, names, fmt.Sprint(names))
}
