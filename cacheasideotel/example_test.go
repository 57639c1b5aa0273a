package cacheasideotel_test

import (
	"context"
	"fmt"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/cacheasideotel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Traces and metrics through the providers the program set up (never the global ones).
func Example() {
	tp := sdktrace.NewTracerProvider() // with your exporter
	defer func() { _ = tp.Shutdown(context.Background()) }()
	reader := sdkmetric.NewManualReader() // or a PeriodicReader with your exporter
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	users, err := cacheaside.New[string](cacheaside.NewMemoryStore(), cacheaside.WithPrefix("user:"),
		cacheasideotel.WithTracerProvider(tp), cacheasideotel.WithMeterProvider(mp))
	if err != nil {
		panic(err)
	}
	defer users.Close()
	ctx := context.Background()
	for range 2 {
		_, _ = users.GetOrLoad(ctx, "42", func(context.Context) (string, error) { return "Ada", nil })
	}

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "cacheaside.requests" {
			for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
				if p.Value > 0 {
					r, _ := p.Attributes.Value("result")
					fmt.Println(r.AsString(), p.Value)
				}
			}
		}
	}
	// Unordered output:
	// hit 1
	// miss 1
}
