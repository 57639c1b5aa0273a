package cacheaside

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// WithPrometheus exports the cache's metrics to reg (never the global registry unless you
// pass it), each with the label cache=name. New registers them and fails if reg refuses,
// for instance because another Cache registered under the same name; Close unregisters
// them. The metrics are read from the cache's own counters at scrape time (a custom
// Collector), so they cost the hot path nothing beyond the counts Stats keeps anyway. Every
// series of a fixed label set exists from the start, at 0; series of key groups
// (WithKeyGroups) appear with their group's first request. See README for the list.
// Default: no export. reg must not be nil, and name must be a non-empty UTF-8 string; name
// also names the cache in log lines and spans.
func WithPrometheus(reg prometheus.Registerer, name string) Option {
	return func(c *config) {
		if reg == nil {
			c.invalid("prometheus registerer must not be nil")
			return
		}
		if name == "" || !utf8.ValidString(name) {
			c.invalid("prometheus cache name must be a non-empty UTF-8 string, got %q", name)
			return
		}
		c.obs.registerer, c.obs.name = reg, name
	}
}

func registerCollector(reg prometheus.Registerer, col prometheus.Collector, name string) error {
	err := reg.Register(col)
	var are prometheus.AlreadyRegisteredError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &are):
		return fmt.Errorf("cacheaside: prometheus: the metrics of cache %q are already registered: give each Cache its own name, or Close the other one first: %w", name, err)
	default:
		return fmt.Errorf("cacheaside: prometheus: registering the metrics of cache %q: %w", name, err)
	}
}

// promCollector is a prometheus.Collector over an observer's counters.
type promCollector struct {
	o *observer

	requests, loads, loadTime       *prometheus.Desc
	storeErrors, storeTime          *prometheus.Desc
	leaseWaits, coalesced           *prometheus.Desc
	earlyRefreshes, invalidations   *prometheus.Desc
	staleIfError                    *prometheus.Desc
	l1Drops, l1Flushes              *prometheus.Desc
	breakerOpen, breakerTransitions *prometheus.Desc
	undecodable                     *prometheus.Desc
}

func newPromCollector(o *observer) *promCollector {
	cl := prometheus.Labels{"cache": o.name}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("cacheaside_"+name, help, labels, cl)
	}
	return &promCollector{
		o: o,
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
func (p *promCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		p.requests, p.loads, p.loadTime, p.storeErrors, p.storeTime, p.leaseWaits, p.coalesced,
		p.earlyRefreshes, p.staleIfError, p.invalidations, p.l1Drops, p.l1Flushes, p.breakerOpen,
		p.breakerTransitions, p.undecodable,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (p *promCollector) Collect(ch chan<- prometheus.Metric) {
	o := p.o
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	o.eachGroup(func(g *groupCounters) {
		for r := range numResults {
			counter(p.requests, g.requests.load(r), g.name, r.String())
		}
		for oc := range numOutcomes {
			counter(p.loads, g.loads[oc].Load(), g.name, oc.String())
		}
		ch <- constHistogram(p.loadTime, &g.loadTime, g.name)
	})
	for op := range numStoreOps {
		counter(p.storeErrors, o.storeErrors[op].Load(), op.String())
		if o.timed {
			ch <- constHistogram(p.storeTime, &o.storeTime[op], op.String())
		}
	}
	counter(p.leaseWaits, o.leaseWaits.Load())
	for k := range numCoalesceKinds {
		counter(p.coalesced, o.coalescedN[k].Load(), k.String())
	}
	counter(p.earlyRefreshes, o.earlyRefreshes.Load())
	counter(p.staleIfError, o.staleOnError.Load())
	for k := range numInvalidationKinds {
		counter(p.invalidations, o.invalidations[k].Load(), k.String())
	}
	counter(p.l1Drops, o.l1Drops.Load())
	counter(p.l1Flushes, o.l1Flushes.Load())
	open := 0.0
	if o.breaker != nil && o.breaker.Open() {
		open = 1
	}
	ch <- prometheus.MustNewConstMetric(p.breakerOpen, prometheus.GaugeValue, open)
	counter(p.breakerTransitions, o.transitions[0].Load(), "closed")
	counter(p.breakerTransitions, o.transitions[1].Load(), "open")
	counter(p.undecodable, o.undecodable.Load())
}

func constHistogram(d *prometheus.Desc, h *histogram, labels ...string) prometheus.Metric {
	count, sum, cumulative := h.snapshot()
	buckets := make(map[float64]uint64, len(cumulative))
	for i, b := range h.bounds {
		buckets[b.Seconds()] = cumulative[i]
	}
	return prometheus.MustNewConstHistogram(d, count, sum.Seconds(), buckets, labels...)
}
