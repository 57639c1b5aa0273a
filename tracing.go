package cacheaside

import (
	"context"
	"errors"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the cache's spans.
const tracerName = "github.com/cacheaside/cacheaside"

// WithTracerProvider traces the cache's misses with OpenTelemetry, through tracers of tp:
//
//   - cacheaside.load: each loader call, covering the load and the store write after it
//     (child span cacheaside.store.fill, .fill_many or .release); the loader runs on its
//     context, so its own spans are children. Attributes: cacheaside.cache,
//     cacheaside.outcome (ok, not_found, error, panic), cacheaside.group (WithKeyGroups),
//     cacheaside.keys (batch loads); status Error for an error or a panic.
//   - cacheaside.lease_wait: each wait for a lease another process holds, with
//     cacheaside.outcome; a load after taking the lease over is its child.
//   - cacheaside.store.delete and .delete_pattern: invalidations.
//   - an event cacheaside.coalesced on the caller's span when a call joins a load in flight.
//
// A load's span is a child of the span in the context of the call that started it. Hits
// create no span (see WithHitSpans), and spans never carry a key (see WithSpanKeys) or a
// value, nor the loader's error text. Default: nil, no tracing and no cost.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.obs.tracer = tp }
}

// WithHitSpans, with WithTracerProvider, gives every GetOrLoad call a span cacheaside.get,
// hits included, with the attribute cacheaside.result (hit, negative_hit, miss, ...); load
// spans of a miss are its children. It costs an allocation or two per call. Default: false,
// hits create no span.
func WithHitSpans(on bool) Option {
	return func(c *config) { c.obs.hitSpans = on }
}

// WithSpanKeys, with WithTracerProvider, adds the attribute cacheaside.key (the key as given
// to GetOrLoad) to the spans of single-key calls. Keys can be personal data: think before
// turning it on. Default: false.
func WithSpanKeys(on bool) Option {
	return func(c *config) { c.obs.spanKeys = on }
}

// tracing makes an observer's spans.
type tracing struct {
	tracer   trace.Tracer
	cache    attribute.KeyValue
	hitSpans bool
	keys     bool
}

func newTracing(tp trace.TracerProvider, name string, hitSpans, keys bool) *tracing {
	return &tracing{
		tracer:   tp.Tracer(tracerName),
		cache:    attribute.String("cacheaside.cache", name),
		hitSpans: hitSpans,
		keys:     keys,
	}
}

// attrs are the attributes every span of a call starts with.
func (t *tracing) attrs(g *groupCounters, key string, extra ...attribute.KeyValue) trace.SpanStartOption {
	a := make([]attribute.KeyValue, 0, 3+len(extra))
	a = append(a, t.cache)
	if g != nil && g.name != "" {
		a = append(a, attribute.String("cacheaside.group", g.name))
	}
	if t.keys && key != "" {
		a = append(a, attribute.String("cacheaside.key", key))
	}
	return trace.WithAttributes(append(a, extra...)...)
}

// startLoad starts the span of a loader call: for key, or for a batch of n keys (n > 0).
func (t *tracing) startLoad(ctx context.Context, g *groupCounters, key string, n int) (context.Context, trace.Span) {
	if n > 0 {
		return t.tracer.Start(ctx, "cacheaside.load", t.attrs(g, "", attribute.Int("cacheaside.keys", n)))
	}
	return t.tracer.Start(ctx, "cacheaside.load", t.attrs(g, key))
}

func loadSpanDone(span trace.Span, oc outcome) {
	span.SetAttributes(attribute.String("cacheaside.outcome", oc.String()))
	switch oc {
	case outcomeError:
		span.SetStatus(codes.Error, "loader returned an error")
	case outcomePanic:
		span.SetStatus(codes.Error, "loader panicked")
	}
}

// startStore starts the span of a store write.
func (t *tracing) startStore(ctx context.Context, op storeOp) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, op.spanName(), trace.WithAttributes(t.cache))
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

func storeSpanDone(span trace.Span, failed bool) {
	if failed {
		span.SetStatus(codes.Error, "store operation failed")
	}
	span.End()
}

// startWait starts the span of a wait for another process's lease.
func (t *tracing) startWait(ctx context.Context, g *groupCounters, key string) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, "cacheaside.lease_wait", t.attrs(g, key))
}

// endLeaseWait ends the span of a lease wait (nil without tracing) with how f ended.
func endLeaseWait[T any](span trace.Span, f *flight[T]) {
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
	span.SetAttributes(attribute.String("cacheaside.outcome", oc))
	if oc == "panic" || oc == "error" {
		span.SetStatus(codes.Error, "lease wait ended in "+oc)
	}
	span.End()
}

// noteJoined marks, on the caller's span, that the call joined a load in flight.
func (t *tracing) noteJoined(ctx context.Context) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent("cacheaside.coalesced")
	}
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
	ctx, span := t.tracer.Start(context.WithValue(ctx, callNoteKey{}, note), "cacheaside.get", t.attrs(c.obs.counters(key), key))
	returned := false
	defer func() {
		if r := note.result.Load(); r > 0 {
			span.SetAttributes(attribute.String("cacheaside.result", result(r-1).String()))
		}
		switch {
		case !returned:
			span.SetStatus(codes.Error, "loader panicked")
		case err != nil && !errors.Is(err, ErrNotFound):
			span.SetStatus(codes.Error, "call failed")
		}
		span.End()
	}()
	v, err = c.getOrLoad(ctx, key, load)
	returned = true
	return v, err
}
