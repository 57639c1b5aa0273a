package cacheaside

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
)

// Tracer is what a Cache needs of a tracing system: package cacheasideotel adapts
// OpenTelemetry to it (cacheasideotel.WithTracerProvider), and another system can be adapted
// the same way. The core package links no tracing library.
type Tracer interface {
	// Start starts a span named name, a child of the span in ctx if any, with attrs, and
	// returns a context carrying it. Attribute values are strings, ints and bools.
	Start(ctx context.Context, name string, attrs ...slog.Attr) (context.Context, Span)
	// AddEvent adds an event named name to the span in ctx, if there is one and it records.
	AddEvent(ctx context.Context, name string)
}

// Span is a span a Tracer started.
type Span interface {
	// SetAttributes sets attributes of the span.
	SetAttributes(attrs ...slog.Attr)
	// SetError marks the span as failed, with a description written by the Cache (never the
	// text of a loader's error).
	SetError(description string)
	// End ends the span.
	End()
}

// WithTracer traces the cache's misses through t (for OpenTelemetry:
// cacheasideotel.WithTracerProvider, which calls it):
//
//   - cacheaside.load: each loader call, covering the load and the store write after it
//     (child span cacheaside.store.fill, .fill_many or .release); the loader runs on its
//     context, so its own spans are children. Attributes: cacheaside.cache (the name given to
//     WithName, else the prefix), cacheaside.outcome (ok, not_found, error, panic),
//     cacheaside.group (WithKeyGroups), cacheaside.keys (batch loads); status Error for an
//     error or a panic.
//   - cacheaside.lease_wait: each wait for a lease another process holds, with
//     cacheaside.outcome; a load after taking the lease over is its child.
//   - cacheaside.store.delete and .delete_pattern: invalidations.
//   - an event cacheaside.coalesced on the caller's span when a call joins a load in flight.
//
// A load's span is a child of the span in the context of the call that started it. Hits
// create no span (see WithHitSpans), and spans never carry a key (see WithSpanKeys) or a
// value, nor the loader's error text. Default: nil, no tracing and no cost.
func WithTracer(t Tracer) Option {
	return func(c *config) { c.obs.tracer = t }
}

// WithHitSpans, with WithTracer, gives every GetOrLoad call a span cacheaside.get,
// hits included, with the attribute cacheaside.result (hit, negative_hit, miss, ...); load
// spans of a miss are its children. It costs an allocation or two per call. Default: false,
// hits create no span.
func WithHitSpans(on bool) Option {
	return func(c *config) { c.obs.hitSpans = on }
}

// WithSpanKeys, with WithTracer, adds the attribute cacheaside.key (the key as given
// to GetOrLoad) to the spans of single-key calls. Keys can be personal data: think before
// turning it on. Default: false.
func WithSpanKeys(on bool) Option {
	return func(c *config) { c.obs.spanKeys = on }
}

// tracing makes an observer's spans.
type tracing struct {
	tracer   Tracer
	cache    slog.Attr
	hitSpans bool
	keys     bool
}

func newTracing(t Tracer, name string, hitSpans, keys bool) *tracing {
	return &tracing{
		tracer:   t,
		cache:    slog.String("cacheaside.cache", name),
		hitSpans: hitSpans,
		keys:     keys,
	}
}

// attrs are the attributes every span of a call starts with.
func (t *tracing) attrs(g *groupCounters, key string, extra ...slog.Attr) []slog.Attr {
	a := make([]slog.Attr, 0, 3+len(extra))
	a = append(a, t.cache)
	if g != nil && g.name != "" {
		a = append(a, slog.String("cacheaside.group", g.name))
	}
	if t.keys && key != "" {
		a = append(a, slog.String("cacheaside.key", key))
	}
	return append(a, extra...)
}

// startLoad starts the span of a loader call: for key, or for a batch of n keys (n > 0).
func (t *tracing) startLoad(ctx context.Context, g *groupCounters, key string, n int) (context.Context, Span) {
	if n > 0 {
		return t.tracer.Start(ctx, "cacheaside.load", t.attrs(g, "", slog.Int("cacheaside.keys", n))...)
	}
	return t.tracer.Start(ctx, "cacheaside.load", t.attrs(g, key)...)
}

func loadSpanDone(span Span, oc outcome) {
	span.SetAttributes(slog.String("cacheaside.outcome", oc.String()))
	switch oc {
	case outcomeError:
		span.SetError("loader returned an error")
	case outcomePanic:
		span.SetError("loader panicked")
	}
}

// startStore starts the span of a store write.
func (t *tracing) startStore(ctx context.Context, op storeOp) (context.Context, Span) {
	return t.tracer.Start(ctx, op.spanName(), t.cache)
}

func (op storeOp) spanName() string {
	switch op {
	case opFill:
		return "cacheaside.store.fill"
	case opFillMany:
		return "cacheaside.store.fill_many"
	case opRelease:
		return "cacheaside.store.release"
	case opDelete:
		return "cacheaside.store.delete"
	case opDeletePattern:
		return "cacheaside.store.delete_pattern"
	default:
		return "cacheaside.store"
	}
}

func storeSpanDone(span Span, failed bool) {
	if failed {
		span.SetError("store operation failed")
	}
	span.End()
}

// startWait starts the span of a wait for another process's lease.
func (t *tracing) startWait(ctx context.Context, g *groupCounters, key string) (context.Context, Span) {
	return t.tracer.Start(ctx, "cacheaside.lease_wait", t.attrs(g, key)...)
}

// endLeaseWait ends the span of a lease wait (nil without tracing) with how f ended.
func endLeaseWait[T any](span Span, f *flight[T]) {
	if span == nil {
		return
	}
	oc := "ok"
	switch {
	case f.retry:
		oc = "retry" // the store failed or refused: the callers read again
	case f.panicked != nil:
		oc = "panic"
	case errors.Is(f.err, ErrNotFound):
		oc = "not_found"
	case f.err != nil:
		oc = "error"
	}
	span.SetAttributes(slog.String("cacheaside.outcome", oc))
	if oc == "panic" || oc == "error" {
		span.SetError("lease wait ended in " + oc)
	}
	span.End()
}

// noteJoined marks, on the caller's span, that the call joined a load in flight.
func (t *tracing) noteJoined(ctx context.Context) {
	t.tracer.AddEvent(ctx, "cacheaside.coalesced")
}

// callNoteKey is the context key of a traced GetOrLoad call's note.
type callNoteKey struct{}

// callNote is where a traced GetOrLoad call learns how it was answered.
type callNote struct {
	o      *observer
	result atomic.Int32 // result+1; 0 until known
}

// noteCallResult tells the traced GetOrLoad call of ctx, if any, how it was answered.
func noteCallResult(ctx context.Context, o *observer, r result) {
	if n, ok := ctx.Value(callNoteKey{}).(*callNote); ok && n.o == o {
		n.result.CompareAndSwap(0, int32(r)+1)
	}
}

// tracedGetOrLoad is GetOrLoad with a span for the call (WithHitSpans).
func tracedGetOrLoad[T any](c *Cache[T], ctx context.Context, key string, load func(context.Context) (T, error)) (v T, err error) {
	t := c.obs.tr
	note := &callNote{o: c.obs}
	ctx, span := t.tracer.Start(context.WithValue(ctx, callNoteKey{}, note), "cacheaside.get", t.attrs(c.obs.counters(key), key)...)
	returned := false
	defer func() {
		if r := note.result.Load(); r > 0 {
			span.SetAttributes(slog.String("cacheaside.result", result(r-1).String()))
		}
		switch {
		case !returned:
			span.SetError("loader panicked")
		case err != nil && !errors.Is(err, ErrNotFound):
			span.SetError("call failed")
		}
		span.End()
	}()
	v, err = c.getOrLoad(ctx, key, load)
	returned = true
	return v, err
}
