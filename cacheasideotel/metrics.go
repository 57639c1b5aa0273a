package cacheasideotel

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// WithMeterProvider exports the cache's metrics with OpenTelemetry, through a meter of mp (for
// ScopeName at Version; never the global provider unless you pass it). The instruments are
// those of the Prometheus metrics (cacheasideprom.WithPrometheus), with the same labels as
// attributes, dots for underscores and no _total suffix:
//
//	cacheaside.requests            counter     cache, group, result
//	cacheaside.loads               counter     cache, group, outcome
//	cacheaside.load.duration       histogram s cache, group
//	cacheaside.store.errors        counter     cache, op
//	cacheaside.store.duration      histogram s cache, op (stores with round trips only)
//	cacheaside.lease_waits         counter     cache
//	cacheaside.coalesced           counter     cache, kind
//	cacheaside.early_refreshes     counter     cache
//	cacheaside.stale_if_error      counter     cache
//	cacheaside.invalidations       counter     cache, kind
//	cacheaside.l1.broadcast_drops  counter     cache
//	cacheaside.l1.flushes          counter     cache
//	cacheaside.breaker.open        gauge       cache (1 open, 0 closed)
//	cacheaside.breaker.transitions counter     cache, state
//	cacheaside.undecodable_values  counter     cache
//
// The counters and the gauge are asynchronous, read from the cache's own counters at each
// collection, so they cost the hot path nothing; the histograms are recorded as each load or
// store call ends. The cache attribute is the name given to cacheaside.WithName (or cacheasideprom.WithPrometheus), else the prefix.
// New fails if the instruments cannot be created; Close unregisters the callback.
func WithMeterProvider(mp metric.MeterProvider) cacheaside.Option {
	return cacheaside.WithMetricsExporter(exporter{mp})
}

type exporter struct{ mp metric.MeterProvider }

var (
	_ cacheaside.MetricsExporter = exporter{}
	_ cacheaside.MetricsRecorder = (*recorder)(nil)
)

// Bucket bounds, in seconds, as the Prometheus histograms'.
var (
	loadBounds  = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	storeBounds = []float64{0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5}
)

// recorder is one cache's instruments.
type recorder struct {
	cache     attribute.KeyValue
	loadTime  metric.Float64Histogram
	storeTime metric.Float64Histogram
	reg       metric.Registration
	stopped   atomic.Bool
	groups    sync.Map // group -> metric.RecordOption, reused by the load histogram
	ops       sync.Map // op -> metric.RecordOption, reused by the store histogram
}

func (e exporter) Export(cache string, read func(*cacheaside.Metrics)) (cacheaside.MetricsRecorder, error) {
	m := e.mp.Meter(ScopeName, metric.WithInstrumentationVersion(Version()))
	r := &recorder{cache: attribute.String("cache", cache)}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	r.loadTime, err = m.Float64Histogram("cacheaside.load.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of loader calls."), metric.WithExplicitBucketBoundaries(loadBounds...))
	check(err)
	r.storeTime, err = m.Float64Histogram("cacheaside.store.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of store operations, by operation (stores with network round trips only)."),
		metric.WithExplicitBucketBoundaries(storeBounds...))
	check(err)
	counter := func(name, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithDescription(desc))
		check(err)
		return c
	}
	requests := counter("cacheaside.requests", "Cache requests by how they were answered: hit, l1_hit, negative_hit and stale from the cache, miss by a load.")
	loads := counter("cacheaside.loads", "Loader calls by outcome: ok, not_found, error, panic.")
	storeErrors := counter("cacheaside.store.errors", "Store operations that failed or timed out, by operation.")
	leaseWaits := counter("cacheaside.lease_waits", "Waits for a lease held by another process.")
	coalesced := counter("cacheaside.coalesced", "Calls that shared work in this process: joined a load or lease wait in flight (flight), or shared a store lookup (lookup).")
	early := counter("cacheaside.early_refreshes", "Refreshes started before expiry (early refresh).")
	staleIfError := counter("cacheaside.stale_if_error", "Requests answered with an expired value because its load failed (stale-if-error).")
	invalidations := counter("cacheaside.invalidations", "Invalidations: keys passed to Invalidate (key), InvalidatePattern calls (pattern), tags passed to InvalidateTags (tag).")
	l1Drops := counter("cacheaside.l1.broadcast_drops", "Local cache entries dropped on another instance's invalidation broadcast.")
	l1Flushes := counter("cacheaside.l1.flushes", "Times the whole local cache was dropped because an invalidation may have been missed.")
	transitions := counter("cacheaside.breaker.transitions", "Circuit breaker transitions, by the state entered.")
	undecodable := counter("cacheaside.undecodable_values", "Stored entries that did not decode, treated as misses and replaced.")
	breakerOpen, err := m.Int64ObservableGauge("cacheaside.breaker.open", metric.WithDescription("Whether the circuit breaker skips the store: 1 open, 0 closed."))
	check(err)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	var mu sync.Mutex // one collection at a time reuses snap
	var snap cacheaside.Metrics
	r.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		mu.Lock()
		defer mu.Unlock()
		read(&snap)
		one := func(c metric.Int64ObservableCounter, n uint64) {
			o.ObserveInt64(c, int64(n), metric.WithAttributes(r.cache))
		}
		family := func(c metric.Int64ObservableCounter, label string, counts []cacheaside.Count, extra ...attribute.KeyValue) {
			for _, n := range counts {
				kv := append([]attribute.KeyValue{r.cache, attribute.String(label, n.Label)}, extra...)
				o.ObserveInt64(c, int64(n.N), metric.WithAttributes(kv...))
			}
		}
		for _, g := range snap.Groups {
			group := attribute.String("group", g.Group)
			family(requests, "result", g.Requests, group)
			family(loads, "outcome", g.Loads, group)
		}
		family(storeErrors, "op", snap.StoreErrors)
		one(leaseWaits, snap.LeaseWaits)
		family(coalesced, "kind", snap.Coalesced)
		one(early, snap.EarlyRefreshes)
		one(staleIfError, snap.StaleIfError)
		family(invalidations, "kind", snap.Invalidations)
		one(l1Drops, snap.L1BroadcastDrops)
		one(l1Flushes, snap.L1Flushes)
		open := int64(0)
		if snap.BreakerOpen {
			open = 1
		}
		o.ObserveInt64(breakerOpen, open, metric.WithAttributes(r.cache))
		family(transitions, "state", snap.BreakerTransitions)
		one(undecodable, snap.UndecodableValues)
		return nil
	}, requests, loads, storeErrors, leaseWaits, coalesced, early, staleIfError, invalidations,
		l1Drops, l1Flushes, transitions, undecodable, breakerOpen)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// with returns the measurement option of the label name=value, made once per value (the
// values are bounded: key groups and store operations).
func (r *recorder) with(m *sync.Map, name, value string) metric.RecordOption {
	if opt, ok := m.Load(value); ok {
		return opt.(metric.RecordOption)
	}
	opt, _ := m.LoadOrStore(value, metric.WithAttributeSet(attribute.NewSet(r.cache, attribute.String(name, value))))
	return opt.(metric.RecordOption)
}

func (r *recorder) LoadDuration(group string, d time.Duration) {
	if !r.stopped.Load() {
		r.loadTime.Record(context.Background(), d.Seconds(), r.with(&r.groups, "group", group))
	}
}

func (r *recorder) StoreDuration(op string, d time.Duration) {
	if !r.stopped.Load() {
		r.storeTime.Record(context.Background(), d.Seconds(), r.with(&r.ops, "op", op))
	}
}

func (r *recorder) Stop() error {
	r.stopped.Store(true)
	return r.reg.Unregister()
}
