// Package oteltrace holds the OpenTelemetry side of cacheaside's tracing adapter (exported by
// package cacheasideotel). It does not import cacheaside, so that the core package's own tests
// can use it.
package oteltrace

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the cache's spans and metrics.
const ScopeName = "github.com/cacheaside/cacheaside"

// Tracer starts OpenTelemetry spans.
type Tracer struct{ t trace.Tracer }

// New returns a Tracer over tp's tracer for ScopeName, at instrumentation version version.
func New(tp trace.TracerProvider, version string) *Tracer {
	return &Tracer{tp.Tracer(ScopeName, trace.WithInstrumentationVersion(version))}
}

// Start starts a span.
func (t *Tracer) Start(ctx context.Context, name string, attrs ...slog.Attr) (context.Context, *Span) {
	ctx, s := t.t.Start(ctx, name, trace.WithAttributes(Attributes(attrs)...))
	return ctx, &Span{s}
}

// AddEvent adds an event to the span in ctx, if it records.
func (t *Tracer) AddEvent(ctx context.Context, name string) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(name)
	}
}

// Span is an OpenTelemetry span.
type Span struct{ s trace.Span }

// SetAttributes sets attributes.
func (s *Span) SetAttributes(attrs ...slog.Attr) { s.s.SetAttributes(Attributes(attrs)...) }

// SetError sets the status Error with description.
func (s *Span) SetError(description string) { s.s.SetStatus(codes.Error, description) }

// End ends the span.
func (s *Span) End() { s.s.End() }

// Attributes converts slog attributes to OpenTelemetry's.
func Attributes(attrs []slog.Attr) []attribute.KeyValue {
	kv := make([]attribute.KeyValue, len(attrs))
	for i, a := range attrs {
		v := a.Value.Resolve()
		switch v.Kind() {
		case slog.KindString:
			kv[i] = attribute.String(a.Key, v.String())
		case slog.KindInt64:
			kv[i] = attribute.Int64(a.Key, v.Int64())
		case slog.KindUint64:
			kv[i] = attribute.Int64(a.Key, int64(v.Uint64()))
		case slog.KindBool:
			kv[i] = attribute.Bool(a.Key, v.Bool())
		case slog.KindFloat64:
			kv[i] = attribute.Float64(a.Key, v.Float64())
		default:
			kv[i] = attribute.String(a.Key, v.String())
		}
	}
	return kv
}
