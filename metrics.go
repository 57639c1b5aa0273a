package cacheaside

// Observability: what the core tells about its work, and where it goes.
//
// The core reports each event with one call on c.obs, an *observer, whose methods are the
// internal recorder interface (not public, and no per-event callback: see README,
// Observability). The observer keeps every count itself, in atomics: Stats reads them, and
// so do the metrics exporters (metrics_export.go; package cacheasideprom's collector, at
// scrape time), so a hit costs one atomic add whether metrics are exported or not, and no
// allocation. Durations go to small
// lock-free bucket arrays, measured only where the core takes the time anyway (loads) or makes
// a network round trip (store operations of stores other than MemoryStore). Logging
// (logging.go) and tracing (tracing.go) are off unless their options are given; neither ever
// runs on a hit (unless WithHitSpans asks for spans on hits).
//
// L1 hits, drops and flushes come from local.go and broadcast.go; stale results (stale-while-
// revalidate and stale-if-error), stale-if-error serves and early refreshes from xfetch.go.

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/internal/breaker"
)

// observeConfig is what the observability options set.
type observeConfig struct {
	name      string // the cache label; "" until WithName
	groupOf   func(key string) string
	groupMax  int
	logger    *slog.Logger // nil: no logging
	logEvery  time.Duration
	tracer    Tracer // nil: no tracing
	hitSpans  bool
	spanKeys  bool
	exporters []MetricsExporter // none: no metrics export
}

// groupCounters are the counts kept per key group (one set without WithKeyGroups).
type groupCounters struct {
	name     string
	requests requestCounts
	loads    [numOutcomes]atomic.Uint64
	loadTime histogram
}

func newGroupCounters(name string) *groupCounters {
	g := &groupCounters{name: name}
	g.requests.init()
	g.loadTime.init(loadBuckets())
	return g
}

// observer receives every event of one Cache. See the top of this file.
type observer struct {
	name   string // for the cache label, log lines and spans
	prefix string
	timed  bool // store operations are round trips: measure them

	all    *groupCounters // without key groups
	groups *keyGroups     // nil without WithKeyGroups

	storeErrors    [numStoreOps]atomic.Uint64
	storeTime      [numStoreOps]histogram // only when timed
	coalescedN     [numCoalesceKinds]atomic.Uint64
	invalidations  [numInvalidationKinds]atomic.Uint64
	transitions    [2]atomic.Uint64 // [0] to closed, [1] to open
	leaseWaits     atomic.Uint64
	earlyRefreshes atomic.Uint64
	staleOnError   atomic.Uint64
	undecodable    atomic.Uint64
	l1Drops        atomic.Uint64
	l1Flushes      atomic.Uint64

	breaker   *breaker.Breaker  // set by New once built
	log       *logSink          // nil: no logging
	tr        *tracing          // nil: no tracing
	rec       MetricsRecorder   // nil without WithMetricsExporter; all of recs
	recs      []MetricsRecorder // the exporters' recorders, stopped by unregister
	exporters []MetricsExporter // started by register

	noteResult bool // hit spans are on: requests tell the call's span their result
}

func newObserver(cfg *config, timed bool) *observer {
	oc := cfg.obs
	o := &observer{name: oc.name, prefix: cfg.prefix, timed: timed}
	if o.name == "" {
		o.name = cfg.prefix
	}
	if oc.groupOf != nil {
		o.groups = newKeyGroups(oc.groupOf, oc.groupMax)
	} else {
		o.all = newGroupCounters("")
	}
	if timed {
		for i := range o.storeTime {
			o.storeTime[i].init(storeBuckets())
		}
	}
	if oc.logger != nil {
		o.log = newLogSink(oc.logger, o.name, oc.logEvery)
	}
	if oc.tracer != nil {
		o.tr = newTracing(oc.tracer, o.name, oc.hitSpans, oc.spanKeys)
		o.noteResult = oc.hitSpans
	}
	o.exporters = oc.exporters
	return o
}

// register starts the metrics exporters, if any; unregister (at Close) stops them.
func (o *observer) register() error { return o.export(o.exporters) }

func (o *observer) unregister() { o.stopExport() }

// counters returns the counts of key's group: one atomic load and a map read with key
// groups, nothing without.
func (o *observer) counters(key string) *groupCounters {
	if o.groups == nil {
		return o.all
	}
	return o.groups.of(key)
}

// userKey strips the cache prefix from a store key.
func (o *observer) userKey(sk string) string { return strings.TrimPrefix(sk, o.prefix) }

// request counts one GetOrLoad answered with r (key is the caller's key). It is the only event
// of a hit: one atomic add, on a stripe of the calling goroutine's for an L1 hit.
func (o *observer) request(ctx context.Context, key string, r result) {
	o.counters(key).requests.add(r)
	if o.noteResult {
		noteCallResult(ctx, o, r)
	}
}

// count counts one key of a batch answered with r.
func (o *observer) count(key string, r result) { o.counters(key).requests.add(r) }

// loadObs is a loader call being observed: loadStart begins it, loadDone counts it, end closes
// its span.
type loadObs struct {
	start time.Time
	c     *groupCounters
	span  Span // nil without tracing
}

// loadStart begins observing the loader call for the store key sk. The returned context
// carries the load's span, if tracing: give it to the loader.
func (o *observer) loadStart(ctx context.Context, sk string) (context.Context, loadObs) {
	key := o.userKey(sk)
	l := loadObs{start: time.Now(), c: o.counters(key)}
	if o.tr != nil {
		ctx, l.span = o.tr.startLoad(ctx, l.c, key, 0)
	}
	return ctx, l
}

// loadStartMany is loadStart for one batch loader call over keys (the caller's keys).
func (o *observer) loadStartMany(ctx context.Context, keys []string) (context.Context, loadObs) {
	l := loadObs{start: time.Now(), c: o.batchCounters(keys)}
	if o.tr != nil {
		ctx, l.span = o.tr.startLoad(ctx, l.c, "", len(keys))
	}
	return ctx, l
}

// batchCounters returns the counts of a batch loader call over keys: those of the keys' group
// if they all have one, else those of OtherGroup. A call is counted once, however many groups
// it loads for: the groups' loads add up to the loader calls.
func (o *observer) batchCounters(keys []string) *groupCounters {
	if o.groups == nil {
		return o.all
	}
	if len(keys) == 0 {
		return o.groups.other
	}
	g := o.groups.of(keys[0])
	for _, k := range keys[1:] {
		if o.groups.of(k) != g {
			return o.groups.other
		}
	}
	return g
}

// loadDone counts the loader call by its outcome and duration, and returns the duration.
func (o *observer) loadDone(l *loadObs, err error, pe *PanicError) time.Duration {
	d := time.Since(l.start)
	oc := outcomeOf(err, pe)
	l.c.loads[oc].Add(1)
	l.c.loadTime.observe(d)
	if o.rec != nil {
		o.rec.LoadDuration(l.c.name, d)
	}
	if l.span != nil {
		loadSpanDone(l.span, oc)
	}
	return d
}

// end closes the load's span (after the store write it covers).
func (l loadObs) end() {
	if l.span != nil {
		l.span.End()
	}
}

// storeObs is a store operation being observed.
type storeObs struct {
	op    storeOp
	start time.Time // zero unless timed
	span  Span      // nil unless tracing a write
}

// storeStart begins observing op. It takes the time only for stores with round trips, and
// starts a span only for writes (fill, release, delete), never for a read.
func (o *observer) storeStart(ctx context.Context, op storeOp) (context.Context, storeObs) {
	s := storeObs{op: op}
	if o.timed {
		s.start = time.Now()
	}
	if o.tr != nil && op.isWrite() {
		ctx, s.span = o.tr.startStore(ctx, op)
	}
	return ctx, s
}

// storeEnd counts the operation's duration and failure. callerLeft says the caller's own
// context ended, which is no failure of the store.
func (o *observer) storeEnd(s storeObs, err error, callerLeft bool) {
	failed := err != nil && !callerLeft
	if o.timed && (err == nil || failed) {
		d := time.Since(s.start)
		o.storeTime[s.op].observe(d)
		if o.rec != nil {
			o.rec.StoreDuration(s.op.String(), d)
		}
	}
	if failed {
		o.storeErrors[s.op].Add(1)
		if o.log != nil {
			o.log.storeFailed(s.op, err)
		}
	}
	if s.span != nil {
		storeSpanDone(s.span, failed)
	}
}

func (op storeOp) isWrite() bool {
	switch op {
	case opFill, opFillMany, opRelease, opDelete, opDeletePattern, opAddTags, opRemoveTags:
		return true
	}
	return false
}

// coalesced counts a call that shared work in this process. Joining a flight is also noted on
// the caller's span, when tracing.
func (o *observer) coalesced(ctx context.Context, k coalesceKind) {
	o.coalescedN[k].Add(1)
	if o.tr != nil && k == coalescedFlight {
		o.tr.noteJoined(ctx)
	}
}

// leaseWaitStart counts a wait for another process's lease and starts its span.
func (o *observer) leaseWaitStart(ctx context.Context, sk string) (context.Context, Span) {
	o.leaseWaits.Add(1)
	if o.tr == nil {
		return ctx, nil
	}
	return o.tr.startWait(ctx, o.counters(o.userKey(sk)), o.userKey(sk))
}

// invalidated counts n invalidations of kind k.
func (o *observer) invalidated(k invalidationKind, n int) { o.invalidations[k].Add(uint64(n)) }

// undecodableValue counts stored bytes that did not decode (treated as a miss).
func (o *observer) undecodableValue() { o.undecodable.Add(1) }

// earlyRefresh counts a background refresh started before expiry (XFetch).
func (o *observer) earlyRefresh() { o.earlyRefreshes.Add(1) }

// staleIfError counts an expired value served instead of a failed load's error
// (WithStaleIfError); the request is also counted with result stale.
func (o *observer) staleIfError() { o.staleOnError.Add(1) }

// l1Dropped counts n local-cache entries dropped on another instance's invalidation
// broadcast: entries that were there, not the keys the message named.
func (o *observer) l1Dropped(n int) { o.l1Drops.Add(uint64(n)) }

// l1Flushed counts a drop of the whole local cache (this instance may have missed an
// invalidation).
func (o *observer) l1Flushed() { o.l1Flushes.Add(1) }

// breakerChanged is the circuit breaker's transition callback.
func (o *observer) breakerChanged(open bool) {
	if open {
		o.transitions[1].Add(1)
	} else {
		o.transitions[0].Add(1)
	}
	if o.log != nil {
		o.log.breakerChanged(open)
	}
}

// histogram is a lock-free duration histogram: one atomic add per bucket and one for the sum.
type histogram struct {
	bounds []time.Duration // upper bounds (inclusive), shared, read-only
	counts []atomic.Uint64 // len(bounds)+1, the last for +Inf
	sum    atomic.Int64    // nanoseconds
}

func (h *histogram) init(bounds []time.Duration) {
	h.bounds = bounds
	h.counts = make([]atomic.Uint64, len(bounds)+1)
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(h.bounds) && d > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// snapshot returns the total count, the sum, and the cumulative count of each bound.
func (h *histogram) snapshot() (count uint64, sum time.Duration, cumulative []uint64) {
	cumulative = make([]uint64, len(h.bounds))
	for i := range h.bounds {
		count += h.counts[i].Load()
		cumulative[i] = count
	}
	count += h.counts[len(h.bounds)].Load()
	return count, time.Duration(h.sum.Load()), cumulative
}

// loadBuckets are the bounds of the load duration histogram: 1 ms to the default load timeout.
func loadBuckets() []time.Duration {
	return []time.Duration{
		time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
		25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
		500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
	}
}

// storeBuckets are the bounds of the store operation histogram: 250 µs to past the default
// store timeout.
func storeBuckets() []time.Duration {
	return []time.Duration{
		250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
		5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
		100 * time.Millisecond, 500 * time.Millisecond,
	}
}
