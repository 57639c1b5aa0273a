package bench

// BenchmarkHitMetrics: the cost of observability on the hit path, on the memory store (the
// fastest hit there is, so any cost shows). Counting is always on (Stats); "off" exports
// nothing, "prometheus" registers the collector, "groups" adds a key group label, "tracing"
// sets a tracer provider (hits create no span). Each runs serially and in parallel.

import (
	"context"
	"fmt"
	"testing"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/cacheasideotel"
	"github.com/cacheaside/cacheaside/cacheasideprom"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// keys is the number of distinct keys the benchmarks read.
const keys = 1024

func BenchmarkHitMetrics(b *testing.B) {
	cases := []struct {
		name string
		opts func() []cacheaside.Option
	}{
		{"off", func() []cacheaside.Option { return nil }},
		{"prometheus", func() []cacheaside.Option {
			return []cacheaside.Option{cacheasideprom.WithPrometheus(prometheus.NewRegistry(), "bench")}
		}},
		{"prometheus+groups", func() []cacheaside.Option {
			return []cacheaside.Option{
				cacheasideprom.WithPrometheus(prometheus.NewRegistry(), "bench"),
				cacheaside.WithKeyGroups(cacheaside.KeyGroupBefore(":"), 16),
			}
		}},
		{"tracing", func() []cacheaside.Option {
			return []cacheaside.Option{cacheasideotel.WithTracerProvider(sdktrace.NewTracerProvider())}
		}},
	}
	ctx := context.Background()
	load := func(context.Context) (string, error) { return "value", nil }
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("user:%d", i)
	}
	for _, tc := range cases {
		setup := func(b *testing.B) *cacheaside.Cache[string] {
			store := cacheaside.NewMemoryStore()
			c, err := cacheaside.New[string](store, tc.opts()...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				c.Close()
				store.Close()
			})
			for _, k := range names {
				if _, err := c.GetOrLoad(ctx, k, load); err != nil {
					b.Fatal(err)
				}
			}
			return c
		}
		b.Run(tc.name+"/serial", func(b *testing.B) {
			c := setup(b)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := c.GetOrLoad(ctx, names[i%keys], load); err != nil {
					b.Fatal(err)
				}
				i++
			}
			reportHits(b, c)
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			c := setup(b)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := c.GetOrLoad(ctx, names[i%keys], load); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			reportHits(b, c)
		})
	}
}

// reportHits fails the benchmark if it measured anything but hits.
func reportHits(b *testing.B, c *cacheaside.Cache[string]) {
	if s := c.Stats(); s.Misses != keys {
		b.Fatalf("%d misses, want only the %d of the setup", s.Misses, keys)
	}
}
