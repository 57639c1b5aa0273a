package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// report is the outcome of a demo: the same workload without and with the cache.
type report struct {
	opts     options
	without  *phaseResult
	with     *phaseResult
	chart    string // absolute path of the chart, "" if none was written
	chartErr error
}

// stampedeCalls is the most loader calls any synchronized expiry of the run caused.
func (p *phaseResult) stampedeCalls() int64 {
	var m int64
	for _, c := range p.Stampedes {
		m = max(m, c)
	}
	return m
}

func (r *report) print(w io.Writer) {
	o := r.opts
	fmt.Fprintf(w, "\ncacheaside demo: %s users, %s requests/s for %v per run (%.0f%% Zipf reads s=%.2g, %.0f%% batch reads of %d, %.0f%% writes)\n",
		thousands(float64(o.users)), thousands(float64(o.rate)), o.duration,
		100*(1-o.writeFrac-o.batchFrac), o.zipfS, 100*o.batchFrac, o.batchSize, 100*o.writeFrac)
	fmt.Fprintf(w, "service: %s", r.with.Backends)
	if o.dbLatency > 0 {
		fmt.Fprintf(w, "; each database query takes %v more (-db-latency), as a remote database would", o.dbLatency)
	}
	fmt.Fprintln(w)
	if o.redisNote != "" {
		fmt.Fprintf(w, "cache store: %s\n", o.redisNote)
	}
	fmt.Fprintln(w)

	row := func(name, without, with, note string) {
		fmt.Fprintf(w, "  %-22s %13s %12s  %s\n", name, without, with, note)
	}
	a, b := r.without, r.with
	row("", "without cache", "with cache", "")
	row("database queries/s", thousands(a.DBQPS), thousands(b.DBQPS),
		ratio(a.DBQPS, b.DBQPS)+" fewer")
	row("hit ratio", pct(a.HitRatio), pct(b.HitRatio), "users read without a database query")
	row("read latency p50", ms(a.P50), ms(b.P50), "GET /users/{id} over HTTP, hits and misses")
	row("read latency p99", ms(a.P99), ms(b.P99), "")
	row("stampede loader calls", fmt.Sprintf("%d of %d", a.stampedeCalls(), o.stampedeReaders),
		fmt.Sprintf("%d of %d", b.stampedeCalls(), o.stampedeReaders),
		fmt.Sprintf("worst of %d rounds: a write invalidates the hot key, then %d readers at once", len(b.Stampedes), o.stampedeReaders))
	row("stale reads", thousands(float64(a.StaleReads)), thousands(float64(b.StaleReads)),
		fmt.Sprintf("of %s users read with the cache, each checked against the writes that had returned", thousands(float64(b.ReadsChecked))))
	row("requests", thousands(float64(a.Requests)), thousands(float64(b.Requests)),
		fmt.Sprintf("%s of them writes with the cache: write the database, then Invalidate", thousands(float64(b.Writes))))
	if a.Errors+b.Errors > 0 {
		row("errors", thousands(float64(a.Errors)), thousands(float64(b.Errors)), "")
	}

	for _, p := range []*phaseResult{a, b} {
		if p.FirstError != "" {
			fmt.Fprintf(w, "\nfirst error %s: %s\n", p.name(), p.FirstError)
		}
		for _, e := range p.StaleExamples {
			fmt.Fprintf(w, "stale read %s: %s\n", p.name(), e)
		}
	}
	switch {
	case r.chartErr != nil:
		fmt.Fprintf(w, "\nchart: not written: %v\n", r.chartErr)
	case r.chart != "":
		fmt.Fprintf(w, "\nchart of database load over time: %s\n", r.chart)
	}
}

func (p *phaseResult) name() string {
	if p.Cached {
		return "with cache"
	}
	return "without cache"
}

// thousands formats a count with thousands separators: 12,345.
func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func pct(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func ratio(a, b float64) string {
	if b <= 0 {
		return "∞×"
	}
	return fmt.Sprintf("%.0f×", a/b)
}
