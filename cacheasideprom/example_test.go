package cacheasideprom_test

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/cacheasideprom"
)

// WithPrometheus exports the cache's counters to a registry you pass (here a fresh one, as a
// test would; a service passes the registry its /metrics handler serves).
func ExampleWithPrometheus() {
	reg := prometheus.NewRegistry()
	users, err := cacheaside.New[string](cacheaside.NewMemoryStore(), cacheasideprom.WithPrometheus(reg, "users"))
	if err != nil {
		panic(err)
	}
	defer users.Close()

	ctx := context.Background()
	load := func(context.Context) (string, error) { return "Ada", nil }
	for range 3 {
		if _, err := users.GetOrLoad(ctx, "1", load); err != nil {
			panic(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range families {
		if f.GetName() != "cacheaside_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				result := ""
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" {
						result = l.GetValue()
					}
				}
				fmt.Printf("%s{result=%q} %v\n", f.GetName(), result, v)
			}
		}
	}
	// Output:
	// cacheaside_requests_total{result="hit"} 2
	// cacheaside_requests_total{result="miss"} 1
}
