// Package cacheasideprom exports the metrics of a cacheaside.Cache to Prometheus. It is a
// package of its own so that a program without Prometheus links none of it (nor protobuf,
// which client_golang needs): the core package only keeps the counts, and hands them to
// exporters through cacheaside.WithMetricsExporter.
package cacheasideprom

import (
	"errors"
	"fmt"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
)

// WithPrometheus exports the cache's metrics to reg (never the global registry unless you
// pass it), each with the label cache=name. New registers them and fails if reg refuses,
// for instance because another Cache registered under the same name; Close unregisters
// them. The metrics are read from the cache's own counters at scrape time (a custom
// Collector), so they cost the hot path nothing beyond the counts Stats keeps anyway. Every
// series of a fixed label set exists from the start, at 0; series of key groups
// (cacheaside.WithKeyGroups) appear with their group's first request. See README for the list.
// Default: no export. reg must not be nil, and name must be a non-empty UTF-8 string.
//
// It is cacheaside.WithName(name) and a cacheaside.WithMetricsExporter in one option: name
// also names the cache in log lines, spans and other exporters' metrics (a later WithName
// renames it everywhere).
func WithPrometheus(reg prometheus.Registerer, name string) cacheaside.Option {
	return join(cacheaside.WithName(name), cacheaside.WithMetricsExporter(exporter{reg}))
}

// join returns an option applying a then b. (cacheaside.Option is a func of an unexported
// type: only inference can name it.)
func join[O ~func(C), C any](a, b O) O {
	return func(c C) {
		a(c)
		b(c)
	}
}

type exporter struct{ reg prometheus.Registerer }

var _ cacheaside.MetricsExporter = exporter{}

// Export registers a collector of the cache's metrics on reg.
func (e exporter) Export(cache string, read func(*cacheaside.Metrics)) (cacheaside.MetricsRecorder, error) {
	if e.reg == nil {
		return nil, fmt.Errorf("%w: prometheus registerer must not be nil", cacheaside.ErrInvalidOption)
	}
	col := newCollector(cache, read)
	err := e.reg.Register(col)
	var are prometheus.AlreadyRegisteredError
	switch {
	case err == nil:
		// The collector reads the durations from the cache's histograms at scrape time: a
		// StopFunc, which the cache calls only at Close, to unregister it.
		return cacheaside.StopFunc(func() error {
			e.reg.Unregister(col)
			return nil
		}), nil
	case errors.As(err, &are):
		return nil, fmt.Errorf("prometheus: the metrics of cache %q are already registered: give each Cache its own name, or Close the other one first: %w", cache, err)
	default:
		return nil, fmt.Errorf("prometheus: registering the metrics of cache %q: %w", cache, err)
	}
}

// collector is a prometheus.Collector over one cache's metrics.
type collector struct {
	read func(*cacheaside.Metrics)

	requests, loads, loadTime       *prometheus.Desc
	storeErrors, storeTime          *prometheus.Desc
	leaseWaits, coalesced           *prometheus.Desc
	earlyRefreshes, invalidations   *prometheus.Desc
	staleIfError                    *prometheus.Desc
	l1Drops, l1Flushes              *prometheus.Desc
	breakerOpen, breakerTransitions *prometheus.Desc
	undecodable                     *prometheus.Desc
}

func newCollector(cache string, read func(*cacheaside.Metrics)) *collector {
	cl := prometheus.Labels{"cache": cache}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("cacheaside_"+name, help, labels, cl)
	}
	return &collector{
		read: read,
		requests: d("requests_total",
			"Cache requests by how they were answered: hit, l1_hit, negative_hit and stale from the cache, miss by a load.",
			"group", "result"),
		loads: d("loads_total",
			"Loader calls by outcome: ok, not_found, error, panic.",
			"group", "outcome"),
		loadTime: d("load_duration_seconds",
			"Duration of loader calls.",
			"group"),
		storeErrors: d("store_errors_total",
			"Store operations that failed or timed out, by operation.",
			"op"),
		storeTime: d("store_duration_seconds",
			"Duration of store operations, by operation (stores with network round trips only).",
			"op"),
		leaseWaits: d("lease_waits_total",
			"Waits for a lease held by another process."),
		coalesced: d("coalesced_total",
			"Calls that shared work in this process: joined a load or lease wait in flight (flight), or shared a store lookup (lookup).",
			"kind"),
		earlyRefreshes: d("early_refreshes_total",
			"Refreshes started before expiry (early refresh)."),
		staleIfError: d("stale_if_error_total",
			"Requests answered with an expired value because its load failed (stale-if-error); also counted as result stale in cacheaside_requests_total."),
		invalidations: d("invalidations_total",
			"Invalidations: keys passed to Invalidate (key), InvalidatePattern calls (pattern), tags passed to InvalidateTags (tag).",
			"kind"),
		l1Drops: d("l1_broadcast_drops_total",
			"Local cache entries dropped on another instance's invalidation broadcast (entries this instance held, not keys named)."),
		l1Flushes: d("l1_flushes_total",
			"Times the whole local cache was dropped because an invalidation may have been missed."),
		breakerOpen: d("breaker_open",
			"Whether the circuit breaker skips the store: 1 open, 0 closed."),
		breakerTransitions: d("breaker_transitions_total",
			"Circuit breaker transitions, by the state entered.",
			"state"),
		undecodable: d("undecodable_values_total",
			"Stored entries that did not decode, treated as misses and replaced."),
	}
}

// Describe implements prometheus.Collector. It describes every metric, store durations
// included even for a store that does not report them (MemoryStore), so that two caches of
// one name always collide as a whole and the registry says AlreadyRegistered.
func (p *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		p.requests, p.loads, p.loadTime, p.storeErrors, p.storeTime, p.leaseWaits, p.coalesced,
		p.earlyRefreshes, p.staleIfError, p.invalidations, p.l1Drops, p.l1Flushes, p.breakerOpen,
		p.breakerTransitions, p.undecodable,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Each call reads the cache's metrics afresh (scrapes
// may overlap).
func (p *collector) Collect(ch chan<- prometheus.Metric) {
	var m cacheaside.Metrics
	p.read(&m)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counters := func(d *prometheus.Desc, cs []cacheaside.Count, labels ...string) {
		for _, c := range cs {
			counter(d, c.N, append(labels, c.Label)...)
		}
	}
	for _, g := range m.Groups {
		counters(p.requests, g.Requests, g.Group)
		counters(p.loads, g.Loads, g.Group)
		ch <- constHistogram(p.loadTime, &g.LoadDuration, g.Group)
	}
	counters(p.storeErrors, m.StoreErrors)
	for i := range m.StoreDurations {
		ch <- constHistogram(p.storeTime, &m.StoreDurations[i].Histogram, m.StoreDurations[i].Label)
	}
	counter(p.leaseWaits, m.LeaseWaits)
	counters(p.coalesced, m.Coalesced)
	counter(p.earlyRefreshes, m.EarlyRefreshes)
	counter(p.staleIfError, m.StaleIfError)
	counters(p.invalidations, m.Invalidations)
	counter(p.l1Drops, m.L1BroadcastDrops)
	counter(p.l1Flushes, m.L1Flushes)
	open := 0.0
	if m.BreakerOpen {
		open = 1
	}
	ch <- prometheus.MustNewConstMetric(p.breakerOpen, prometheus.GaugeValue, open)
	counters(p.breakerTransitions, m.BreakerTransitions)
	counter(p.undecodable, m.UndecodableValues)
}

func constHistogram(d *prometheus.Desc, h *cacheaside.Histogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Buckets))
	for _, b := range h.Buckets {
		buckets[b.UpperBound.Seconds()] = b.Count
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets, labels...)
}
