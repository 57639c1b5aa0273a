// Demo runs the userservice in-process and shows what the cache does to a database: the same
// workload (Zipf-distributed reads, a few percent writes, batch reads, and synchronized
// expiries of the hottest user) runs first without the cache, then with it, and the demo
// prints database queries per second, hit ratio, read latency, the loader calls of each
// stampede, and the stale reads it found (every read is checked against the writes that had
// returned before it began), and draws the database load over time.
//
//	make demo                    # from the repository root; or: cd examples && go run ./demo
//	go run ./demo -quick         # a few seconds
//	DATABASE_URL=postgres://... REDIS_URL=redis://... go run ./demo
//
// With no setup it runs on an embedded SQLite database and an embedded miniredis.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
)

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if err != nil {
		if err.Error() != "flag: help requested" {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(2)
	}
	o.progress = os.Stderr
	chooseRedis(&o)
	fmt.Fprintln(os.Stderr, "cache store:", o.redisNote)
	// The embedded miniredis allocates some 200 KB per Lua script call (a fresh interpreter
	// each time); a lazier collector keeps its garbage from dominating the latencies.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	r.print(os.Stdout)
	if o.outage > 0 {
		if err := runOutage(ctx, o, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "demo: outage phase:", err)
			os.Exit(1)
		}
	}
}

// run drives the workload without then with the cache and draws the chart.
func run(ctx context.Context, o options) (*report, error) {
	r := &report{opts: o}
	if o.progress != nil {
		fmt.Fprintf(o.progress, "seeding %d users, then %v without the cache and %v with it\n", o.users, o.duration, o.duration)
	}
	for _, cached := range []bool{false, true} {
		label := "without cache"
		if cached {
			label = "with cache"
		}
		p, err := runPhase(ctx, o, cached, newProgressBar(o.progress, label, o.duration))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		if cached {
			r.with = p
		} else {
			r.without = p
		}
	}
	if o.chart != "" {
		r.chart, r.chartErr = writeChart(o.chart, r)
	}
	return r, nil
}
