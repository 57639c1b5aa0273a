package userservice

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// counters are the service's own figures, read by Stats and exported on /metrics.
type counters struct {
	reads            atomic.Int64 // users asked of the repository (a batch counts each id)
	dbLoads          atomic.Int64 // users asked of the database by reads
	dbQueries        atomic.Int64 // database read queries (a batch is one)
	dbWrites         atomic.Int64 // database write statements
	invalidateErrors atomic.Int64
}

// Stats is a snapshot of the service's counters since it started.
type Stats struct {
	Reads            int64 // users asked for (GET /users/{id} counts 1, GET /users?ids= each id)
	DBLoads          int64 // users the reads asked of the database: every read without a cache, the misses with one
	DBQueries        int64 // database read queries (a batch is one query)
	DBWrites         int64 // database writes (PUT, DELETE)
	InvalidateErrors int64 // invalidations that failed after a write
}

// HitRatio is the fraction of users read without asking the database.
func (s Stats) HitRatio() float64 {
	if s.Reads == 0 {
		return 0
	}
	return 1 - float64(s.DBLoads)/float64(s.Reads)
}

// Sub returns the counts between an earlier snapshot and s.
func (s Stats) Sub(earlier Stats) Stats {
	return Stats{
		Reads:            s.Reads - earlier.Reads,
		DBLoads:          s.DBLoads - earlier.DBLoads,
		DBQueries:        s.DBQueries - earlier.DBQueries,
		DBWrites:         s.DBWrites - earlier.DBWrites,
		InvalidateErrors: s.InvalidateErrors - earlier.InvalidateErrors,
	}
}

func (c *counters) snapshot() Stats {
	return Stats{
		Reads:            c.reads.Load(),
		DBLoads:          c.dbLoads.Load(),
		DBQueries:        c.dbQueries.Load(),
		DBWrites:         c.dbWrites.Load(),
		InvalidateErrors: c.invalidateErrors.Load(),
	}
}

// httpMetrics are the per-request metrics of the HTTP layer.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// newRegistry builds the service's own Prometheus registry (not the global one, so several
// services can run in one process: tests, the demo).
func newRegistry(c *counters) (*prometheus.Registry, *httpMetrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	counter := func(name, help string, v *atomic.Int64, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "userservice", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(
		counter("user_reads_total", "Users asked for (a batch counts each id).", &c.reads, nil),
		counter("db_user_loads_total", "Users the reads asked of the database (cache misses, or every read without the cache).", &c.dbLoads, nil),
		counter("db_queries_total", "Database statements.", &c.dbQueries, prometheus.Labels{"kind": "read"}),
		counter("db_queries_total", "Database statements.", &c.dbWrites, prometheus.Labels{"kind": "write"}),
		counter("cache_invalidate_errors_total", "Invalidations that failed after a database write (the entry lives until its TTL).", &c.invalidateErrors, nil),
	)
	// The cache's own metrics (cacheaside_*) join this registry through the cache's
	// cacheasideprom.WithPrometheus option (service.go).
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "userservice", Name: "http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "userservice", Name: "http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return reg, m
}
