package cacheaside

import (
	"fmt"
	"time"
)

// MetricsExporter publishes a Cache's metrics to a monitoring system other than Prometheus
// (WithMetricsExporter): package cacheasideotel's WithMeterProvider is one, for OpenTelemetry.
type MetricsExporter interface {
	// Export starts publishing the metrics of the cache named cache (the name given to
	// WithPrometheus, else the prefix). read fills m with the cache's counters at the time of
	// the call: cheap, safe from any goroutine, also after Close. New calls Export once and
	// fails if it fails; Close calls the recorder's Stop.
	Export(cache string, read func(m *Metrics)) (MetricsRecorder, error)
}

// MetricsRecorder is one cache's Export. It receives the durations the cache measures as it
// measures them (not every monitoring system can read a histogram kept elsewhere), on the
// caller's goroutine: it must be cheap and safe for concurrent use.
type MetricsRecorder interface {
	// LoadDuration records one loader call of key group group ("" without WithKeyGroups).
	LoadDuration(group string, d time.Duration)
	// StoreDuration records one store operation op (the op label of the Prometheus metrics);
	// only stores with round trips are timed (not an InProcessStore).
	StoreDuration(op string, d time.Duration)
	// Stop ends the export: called once, by Close.
	Stop() error
}

// WithMetricsExporter publishes the cache's metrics through e, in addition to (or instead of)
// WithPrometheus. Default: nil, none.
func WithMetricsExporter(e MetricsExporter) Option {
	return func(c *config) {
		if e == nil {
			c.invalid("metrics exporter must not be nil")
			return
		}
		c.obs.exporter = e
	}
}

// Metrics is a snapshot of the counters the Prometheus metrics export, with the same labels
// (see README, Observability): what a MetricsExporter reads. Durations are not in it: they go
// to the MetricsRecorder as they are measured.
type Metrics struct {
	Groups             []GroupMetrics // one per key group seen ("" without WithKeyGroups)
	StoreErrors        []Count        // by op
	LeaseWaits         uint64
	Coalesced          []Count // by kind: flight, lookup
	EarlyRefreshes     uint64
	StaleIfError       uint64
	Invalidations      []Count // by kind: key, pattern
	L1BroadcastDrops   uint64
	L1Flushes          uint64
	BreakerOpen        bool
	BreakerTransitions []Count // by state entered: closed, open
	UndecodableValues  uint64
}

// GroupMetrics are the counters of one key group.
type GroupMetrics struct {
	Group    string
	Requests []Count // by result: hit, l1_hit, miss, negative_hit, stale
	Loads    []Count // by outcome: ok, not_found, error, panic
}

// Count is one counter of a labelled family: its label value and its count.
type Count struct {
	Label string
	N     uint64
}

// readMetrics fills m, reusing its slices.
func (o *observer) readMetrics(m *Metrics) {
	m.Groups = m.Groups[:0]
	o.eachGroup(func(g *groupCounters) {
		gm := GroupMetrics{Group: g.name, Requests: make([]Count, numResults), Loads: make([]Count, numOutcomes)}
		for r := range numResults {
			gm.Requests[r] = Count{r.String(), g.requests.load(r)}
		}
		for oc := range numOutcomes {
			gm.Loads[oc] = Count{oc.String(), g.loads[oc].Load()}
		}
		m.Groups = append(m.Groups, gm)
	})
	m.StoreErrors = m.StoreErrors[:0]
	for op := range numStoreOps {
		m.StoreErrors = append(m.StoreErrors, Count{op.String(), o.storeErrors[op].Load()})
	}
	m.LeaseWaits = o.leaseWaits.Load()
	m.Coalesced = m.Coalesced[:0]
	for k := range numCoalesceKinds {
		m.Coalesced = append(m.Coalesced, Count{k.String(), o.coalescedN[k].Load()})
	}
	m.EarlyRefreshes = o.earlyRefreshes.Load()
	m.StaleIfError = o.staleOnError.Load()
	m.Invalidations = m.Invalidations[:0]
	for k := range numInvalidationKinds {
		m.Invalidations = append(m.Invalidations, Count{k.String(), o.invalidations[k].Load()})
	}
	m.L1BroadcastDrops = o.l1Drops.Load()
	m.L1Flushes = o.l1Flushes.Load()
	m.BreakerOpen = o.breaker != nil && o.breaker.Open()
	m.BreakerTransitions = append(m.BreakerTransitions[:0],
		Count{"closed", o.transitions[0].Load()}, Count{"open", o.transitions[1].Load()})
	m.UndecodableValues = o.undecodable.Load()
}

// export starts the MetricsExporter, if any.
func (o *observer) export(e MetricsExporter) error {
	rec, err := e.Export(o.name, o.readMetrics)
	if err != nil {
		return fmt.Errorf("cacheaside: metrics exporter for cache %q: %w", o.name, err)
	}
	o.rec = rec
	return nil
}
