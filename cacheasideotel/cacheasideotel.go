// Package cacheasideotel connects a cacheaside Cache to OpenTelemetry: traces
// (WithTracerProvider) and metrics (WithMeterProvider), through the providers you pass, never
// the global ones. It lives outside the core package so that programs without OpenTelemetry
// link none of it.
//
//	c, err := cacheaside.New[User](store,
//		cacheasideotel.WithTracerProvider(tp),
//		cacheasideotel.WithMeterProvider(mp))
package cacheasideotel

import (
	"context"
	"log/slog"
	"runtime/debug"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/internal/oteltrace"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the cache's spans and instruments.
const ScopeName = oteltrace.ScopeName

// modulePath is the module whose version is the instrumentation version.
const modulePath = "github.com/cacheaside/cacheaside"

// Version returns the instrumentation version given to tracers and meters: the version of
// the cacheaside module this program was built with, as the Go toolchain recorded it
// ("(devel)" in its own tests, a pseudo-version or a tag in a program that requires it).
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	if bi.Main.Path == modulePath {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == modulePath {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return "(unknown)"
}

// WithTracerProvider traces the cache's misses with OpenTelemetry, through tracers of tp for
// ScopeName at Version: see cacheaside.WithTracer for the spans and their attributes, and
// cacheaside.WithHitSpans and WithSpanKeys. Default: no tracing.
func WithTracerProvider(tp trace.TracerProvider) cacheaside.Option {
	return cacheaside.WithTracer(NewTracer(tp))
}

// NewTracer returns tp as a cacheaside.Tracer.
func NewTracer(tp trace.TracerProvider) cacheaside.Tracer {
	return tracer{oteltrace.New(tp, Version())}
}

type tracer struct{ t *oteltrace.Tracer }

var _ cacheaside.Tracer = tracer{}

func (t tracer) Start(ctx context.Context, name string, attrs ...slog.Attr) (context.Context, cacheaside.Span) {
	return t.t.Start(ctx, name, attrs...)
}

func (t tracer) AddEvent(ctx context.Context, name string) { t.t.AddEvent(ctx, name) }
