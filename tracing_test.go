package cacheaside

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/oteltrace"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// otelTracer is the OpenTelemetry adapter of package cacheasideotel, as the core's tests can
// have it (cacheasideotel imports this package).
type otelTracer struct{ t *oteltrace.Tracer }

func (o otelTracer) Start(ctx context.Context, name string, attrs ...slog.Attr) (context.Context, Span) {
	return o.t.Start(ctx, name, attrs...)
}

func (o otelTracer) AddEvent(ctx context.Context, name string) { o.t.AddEvent(ctx, name) }

func withOTel(tp trace.TracerProvider) Option {
	return WithTracer(otelTracer{oteltrace.New(tp, "test")})
}

func newRecorder(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return sr, tp
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func spansNamed(sr *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// requireNoKey fails if any attribute of any span holds key.
func requireNoKey(t *testing.T, sr *tracetest.SpanRecorder, key string) {
	t.Helper()
	for _, s := range sr.Ended() {
		for _, kv := range s.Attributes() {
			require.NotContains(t, kv.Value.String(), key, "span %s attribute %s", s.Name(), kv.Key)
		}
	}
}

// A miss has a load span, with the store write as its child; a hit has no span.
func TestTracingMissAndHit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		sr, tp := newRecorder(t)
		// slowMachine: the second read must hit, so the first read's fill must land; with the
		// default 50 ms store timeout a loaded machine once failed it (the read loaded "other").
		c := backendCache[string](t, b, append(slowMachine, withOTel(tp), WithKeyGroups(KeyGroupBefore(":"), 4), WithName("users"))...)

		// The caller's span is the load span's parent; the loader runs in the load span.
		ctx, parent := tp.Tracer("test").Start(bg(), "request")
		var loaderSpan atomic.Value
		v, err := c.GetOrLoad(ctx, "user:42", func(ctx context.Context) (string, error) {
			loaderSpan.Store(spanContextOf(ctx))
			return "v", nil
		})
		parent.End()
		require.NoError(t, err)
		require.Equal(t, "v", v)

		loads := spansNamed(sr, "cacheaside.load")
		require.Len(t, loads, 1)
		load := loads[0]
		require.Equal(t, parent.SpanContext().SpanID(), load.Parent().SpanID())
		require.Equal(t, load.SpanContext(), loaderSpan.Load(), "the loader runs in the load span")
		a := spanAttrs(load)
		require.Equal(t, "users", a["cacheaside.cache"].AsString())
		require.Equal(t, "user", a["cacheaside.group"].AsString())
		require.Equal(t, "ok", a["cacheaside.outcome"].AsString())
		require.Equal(t, codes.Unset, load.Status().Code)

		fills := spansNamed(sr, "cacheaside.store.fill")
		require.Len(t, fills, 1)
		require.Equal(t, load.SpanContext().SpanID(), fills[0].Parent().SpanID(), "the store write is the load's child")
		requireNoKey(t, sr, "user:42")
		requireNoKey(t, sr, "42")

		sr.Reset()
		for range 5 {
			v, err = c.GetOrLoad(bg(), "user:42", constLoad("other"))
			require.NoError(t, err)
			require.Equal(t, "v", v)
		}
		require.Empty(t, sr.Started(), "hits create no span")
	})
}

func spanContextOf(ctx context.Context) any {
	return trace.SpanFromContext(ctx).SpanContext()
}

// Loader errors and panics set the load span's outcome and status, never the error text.
func TestTracingLoadOutcomes(t *testing.T) {
	sr, tp := newRecorder(t)
	c := newTestCache[string](t, NewMemoryStore(), withOTel(tp))
	_, err := c.GetOrLoad(bg(), "nf", func(context.Context) (string, error) { return "", ErrNotFound })
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.GetOrLoad(bg(), "e", func(context.Context) (string, error) { return "", errors.New("secret-error-text") })
	require.Error(t, err)
	func() {
		defer func() { require.NotNil(t, recover()) }()
		_, _ = c.GetOrLoad(bg(), "p", func(context.Context) (string, error) { panic("boom") })
	}()
	loads := spansNamed(sr, "cacheaside.load")
	require.Len(t, loads, 3)
	want := []struct {
		outcome string
		code    codes.Code
	}{{"not_found", codes.Unset}, {"error", codes.Error}, {"panic", codes.Error}}
	for i, s := range loads {
		require.Equal(t, want[i].outcome, spanAttrs(s)["cacheaside.outcome"].AsString())
		require.Equal(t, want[i].code, s.Status().Code)
		require.NotContains(t, s.Status().Description, "secret-error-text")
	}
	require.Len(t, spansNamed(sr, "cacheaside.store.fill"), 1, "the not-found is filled")
	require.Len(t, spansNamed(sr, "cacheaside.store.release"), 2, "the error and the panic release the lease")
}

// A caller of another process waits for the lease in a lease_wait span; a caller of the
// loading process that joins its load gets an event on its own span.
func TestTracingLeaseWaitAndJoin(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		sr, tp := newRecorder(t)
		cs := instances[string](t, b, 2, append(slowMachine, withOTel(tp))...)
		started := make(chan struct{})
		release := make(chan struct{})
		var once sync.Once
		load := func(context.Context) (string, error) {
			once.Do(func() { close(started) })
			<-release
			return "v", nil
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = cs[0].GetOrLoad(bg(), "k", load)
		}()
		<-started
		joinCtx, joinSpan := tp.Tracer("test").Start(bg(), "joiner")
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, _ = cs[0].GetOrLoad(joinCtx, "k", load)
		}()
		go func() {
			defer wg.Done()
			_, _ = cs[1].GetOrLoad(bg(), "k", load)
		}()
		stPoll(t, 10*time.Second, time.Millisecond, "parked", func() bool {
			return cs[0].obs.coalescedN[coalescedFlight].Load() == 1 && cs[1].Stats().LeaseWaits == 1
		})
		close(release)
		within(t, 20*time.Second, "callers", wg.Wait)
		joinSpan.End()

		waits := spansNamed(sr, "cacheaside.lease_wait")
		require.Len(t, waits, 1)
		require.Equal(t, "ok", spanAttrs(waits[0])["cacheaside.outcome"].AsString())
		require.Len(t, spansNamed(sr, "cacheaside.load"), 1, "one load in all")
		joiner := spansNamed(sr, "joiner")[0]
		require.Len(t, joiner.Events(), 1)
		require.Equal(t, "cacheaside.coalesced", joiner.Events()[0].Name)
	})
}

// WithHitSpans gives every call a span with its result; WithSpanKeys adds the key.
func TestTracingHitSpansAndKeys(t *testing.T) {
	sr, tp := newRecorder(t)
	c := newTestCache[string](t, NewMemoryStore(), withOTel(tp), WithHitSpans(true), WithSpanKeys(true))
	_, err := c.GetOrLoad(bg(), "k1", constLoad("v"))
	require.NoError(t, err)
	_, err = c.GetOrLoad(bg(), "k1", constLoad("v"))
	require.NoError(t, err)
	_, err = c.GetOrLoad(bg(), "nf", func(context.Context) (string, error) { return "", ErrNotFound })
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.GetOrLoad(bg(), "nf", constLoad("v"))
	require.ErrorIs(t, err, ErrNotFound)
	_, err = c.GetOrLoad(bg(), "e", func(context.Context) (string, error) { return "", errors.New("x") })
	require.Error(t, err)

	gets := spansNamed(sr, "cacheaside.get")
	require.Len(t, gets, 5)
	for i, want := range []struct{ key, result string }{
		{"k1", "miss"}, {"k1", "hit"}, {"nf", "miss"}, {"nf", "negative_hit"}, {"e", "miss"},
	} {
		a := spanAttrs(gets[i])
		require.Equal(t, want.result, a["cacheaside.result"].AsString(), i)
		require.Equal(t, want.key, a["cacheaside.key"].AsString(), i)
	}
	require.Equal(t, codes.Error, gets[4].Status().Code)
	require.Equal(t, codes.Unset, gets[3].Status().Code, "a not-found is no error")
	load := spansNamed(sr, "cacheaside.load")[0]
	require.Equal(t, gets[0].SpanContext().SpanID(), load.Parent().SpanID(), "a miss's load is a child of its call")
	require.Equal(t, "k1", spanAttrs(load)["cacheaside.key"].AsString())
}

// Invalidations are traced as store writes.
func TestTracingInvalidate(t *testing.T) {
	sr, tp := newRecorder(t)
	c := newTestCache[string](t, NewMemoryStore(), withOTel(tp))
	require.NoError(t, c.Invalidate(bg(), "a"))
	_, err := c.InvalidatePattern(bg(), "a*")
	require.NoError(t, err)
	require.Len(t, spansNamed(sr, "cacheaside.store.delete"), 1)
	require.Len(t, spansNamed(sr, "cacheaside.store.delete_pattern"), 1)
}

// A batch load has one span, with the number of keys, and its fill_many as a child.
func TestTracingBatch(t *testing.T) {
	sr, tp := newRecorder(t)
	c := newTestCache[string](t, NewMemoryStore(), withOTel(tp), WithSpanKeys(true))
	m, err := c.GetOrLoadMany(bg(), []string{"a", "b", "c"}, func(_ context.Context, missing []string) (map[string]string, error) {
		return map[string]string{"a": "A", "b": "B"}, nil
	})
	require.NoError(t, err)
	require.Len(t, m, 2)
	loads := spansNamed(sr, "cacheaside.load")
	require.Len(t, loads, 1)
	a := spanAttrs(loads[0])
	require.EqualValues(t, 3, a["cacheaside.keys"].AsInt64())
	require.NotContains(t, a, attribute.Key("cacheaside.key"), "no single key for a batch")
	fills := spansNamed(sr, "cacheaside.store.fill_many")
	require.Len(t, fills, 1)
	require.Equal(t, loads[0].SpanContext().SpanID(), fills[0].Parent().SpanID())
	s := c.Stats()
	require.EqualValues(t, 3, s.Misses)
	require.EqualValues(t, 1, s.Loads)
}
