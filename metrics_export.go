package cacheaside

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"
)

// The core exports no metrics itself, so that a program without a monitoring system links
// none: package cacheasideprom's WithPrometheus and package cacheasideotel's WithMeterProvider
// are MetricsExporters, built on the hook below.

// MetricsExporter publishes a Cache's metrics to a monitoring system (WithMetricsExporter):
// package cacheasideprom's WithPrometheus is one, for Prometheus, and package cacheasideotel's
// WithMeterProvider another, for OpenTelemetry.
type MetricsExporter interface {
	// Export starts publishing the metrics of the cache named cache (the name given to
	// WithName, else the prefix). read fills m with the cache's counters and duration
	// histograms at the time of the call: safe from any goroutine, also after Close, and
	// allocating a few small slices per key group and histogram (call it at collection time,
	// never per event); calls that overlap need a Metrics each. New calls Export once and
	// fails if it fails (stopping the exporters it started before); Close calls the
	// recorder's Stop.
	Export(cache string, read func(m *Metrics)) (MetricsRecorder, error)
}

// MetricsRecorder is one cache's Export. It receives the durations the cache measures as it
// measures them (not every monitoring system can read a histogram kept elsewhere), on the
// caller's goroutine: it must be cheap and safe for concurrent use. An exporter that reads the
// durations from Metrics instead (as cacheasideprom's does) returns a StopFunc, which the cache
// never calls for a duration.
type MetricsRecorder interface {
	// LoadDuration records one loader call of key group group ("" without WithKeyGroups).
	LoadDuration(group string, d time.Duration)
	// StoreDuration records one store operation op (the op label of the Prometheus metrics);
	// only stores with round trips are timed (not an InProcessStore).
	StoreDuration(op string, d time.Duration)
	// Stop ends the export: called once, by Close.
	Stop() error
}

// StopFunc is the MetricsRecorder of an exporter that reads every duration from Metrics: the
// cache calls it only to Stop, never for a duration, so the export costs the cache's calls
// nothing as they run (the Prometheus collector is one: it reads everything at scrape time).
type StopFunc func() error

// LoadDuration does nothing: the cache does not call it.
func (StopFunc) LoadDuration(string, time.Duration) {}

// StoreDuration does nothing: the cache does not call it.
func (StopFunc) StoreDuration(string, time.Duration) {}

// Stop calls f.
func (f StopFunc) Stop() error { return f() }

// WithMetricsExporter publishes the cache's metrics through e, in addition to the exporters
// of earlier WithMetricsExporter options (each is started, in order, by New, and stopped by
// Close). Default: none.
func WithMetricsExporter(e MetricsExporter) Option {
	return func(c *config) {
		if e == nil {
			c.invalid("metrics exporter must not be nil")
			return
		}
		c.obs.exporters = append(c.obs.exporters, e)
	}
}

// WithName names the cache in its metrics (the cache label of every exporter), log lines and
// spans. Give each Cache exporting to one registry its own name. name must be a non-empty
// UTF-8 string. Default: the prefix (WithPrefix).
func WithName(name string) Option {
	return func(c *config) {
		if name == "" || !utf8.ValidString(name) {
			c.invalid("cache name must be a non-empty UTF-8 string, got %q", name)
			return
		}
		c.obs.name = name
	}
}

// Metrics is a snapshot of the metrics every exporter publishes, with the labels of the
// Prometheus metrics (see README, Observability): what a MetricsExporter reads. The durations
// are in it as histograms too (for exporters that read them at collection time), besides
// going to the MetricsRecorder as they are measured.
type Metrics struct {
	Groups             []GroupMetrics   // one per key group seen ("" without WithKeyGroups)
	StoreErrors        []Count          // by op
	StoreDurations     []LabelHistogram // by op; none for an InProcessStore (not timed)
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
	Group        string
	Requests     []Count   // by result: hit, l1_hit, miss, negative_hit, stale
	Loads        []Count   // by outcome: ok, not_found, error, panic
	LoadDuration Histogram // of the loader calls counted in Loads
}

// Count is one counter of a labelled family: its label value and its count.
type Count struct {
	Label string
	N     uint64
}

// Histogram is a snapshot of a duration histogram. Buckets are cumulative, by upper bound
// (inclusive), in increasing order; the +Inf bucket is Count. The bounds are fixed for the
// life of a Cache (README, Observability, lists them).
type Histogram struct {
	Count   uint64
	Sum     time.Duration
	Buckets []Bucket
}

// Bucket is one cumulative bucket of a Histogram: the observations of at most UpperBound.
type Bucket struct {
	UpperBound time.Duration
	Count      uint64
}

// LabelHistogram is one histogram of a labelled family: its label value and its histogram.
type LabelHistogram struct {
	Label string
	Histogram
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
		g.loadTime.read(&gm.LoadDuration)
		m.Groups = append(m.Groups, gm)
	})
	m.StoreErrors = m.StoreErrors[:0]
	for op := range numStoreOps {
		m.StoreErrors = append(m.StoreErrors, Count{op.String(), o.storeErrors[op].Load()})
	}
	if o.timed {
		m.StoreDurations = slices.Grow(m.StoreDurations[:0], int(numStoreOps))[:numStoreOps]
		for op := range numStoreOps {
			m.StoreDurations[op].Label = op.String()
			o.storeTime[op].read(&m.StoreDurations[op].Histogram)
		}
	} else {
		m.StoreDurations = m.StoreDurations[:0]
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

// read fills s with the histogram's counts, reusing its bucket slice.
func (h *histogram) read(s *Histogram) {
	var cumulative []uint64
	s.Count, s.Sum, cumulative = h.snapshot()
	s.Buckets = slices.Grow(s.Buckets[:0], len(h.bounds))[:len(h.bounds)]
	for i, b := range h.bounds {
		s.Buckets[i] = Bucket{b, cumulative[i]}
	}
}

// export starts every exporter, in order; if one fails, it stops those it started.
func (o *observer) export(es []MetricsExporter) error {
	for _, e := range es {
		rec, err := e.Export(o.name, o.readMetrics)
		if err == nil && rec == nil {
			err = errors.New("the exporter returned no MetricsRecorder")
		}
		if err != nil {
			o.stopExport()
			o.recs = nil
			return fmt.Errorf("cacheaside: metrics exporter for cache %q: %w", o.name, err)
		}
		o.recs = append(o.recs, rec)
	}
	var timing recorders // the recorders that take durations as they are measured
	for _, r := range o.recs {
		if _, ok := r.(StopFunc); !ok {
			timing = append(timing, r)
		}
	}
	switch len(timing) {
	case 0: // rec stays nil: loads and store calls record nothing
	case 1:
		o.rec = timing[0]
	default:
		o.rec = timing
	}
	return nil
}

// stopExport stops every exporter started (Close calls it once). It leaves rec as it is: a
// load still ending may record into a stopped recorder, which must take it.
func (o *observer) stopExport() {
	for _, r := range o.recs {
		_ = r.Stop()
	}
}

// recorders fans durations out to several exporters' recorders.
type recorders []MetricsRecorder

func (rs recorders) LoadDuration(group string, d time.Duration) {
	for _, r := range rs {
		r.LoadDuration(group, d)
	}
}

func (rs recorders) StoreDuration(op string, d time.Duration) {
	for _, r := range rs {
		r.StoreDuration(op, d)
	}
}

func (rs recorders) Stop() error {
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Stop())
	}
	return errors.Join(errs...)
}
