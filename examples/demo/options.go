package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

// options shape one demo run: the same workload runs twice, without then with the cache.
type options struct {
	duration        time.Duration // of each run
	users           int           // seeded users
	rate            int           // offered requests per second
	workers         int           // concurrent clients
	writeFrac       float64       // share of requests that are writes (PUT)
	batchFrac       float64       // share of requests that are batch reads (GET /users?ids=)
	batchSize       int           // ids per batch read
	zipfS           float64       // skew of the Zipf distribution of user ids (> 1)
	stampedeReaders int           // concurrent readers released on the hot key
	stampedeRounds  int           // synchronized expiries per run
	dbLatency       time.Duration // added to each query of the database
	chart           string        // where the chart goes (.png or .svg)
	seed            uint64        // of the workload's random numbers
	databaseURL     string        // PostgreSQL; empty: embedded SQLite
	redisURL        string        // Redis; empty: embedded miniredis
	memoryCache     bool          // the cache in process memory instead of Redis
	embeddedRedis   bool          // miniredis even when a Redis answers on 127.0.0.1:6379
	redisNote       string        // which Redis the cache is on, and why (the report says it)
	storeTimeout    time.Duration // of the cache's store operations; 0: the service's default
	progress        io.Writer     // the progress bar; nil: none
	outage          time.Duration // Redis cut in the outage phase (outage.go); 0: no such phase
}

func defaultOptions() options {
	return options{
		duration: 20 * time.Second,
		users:    10_000,
		// The embedded miniredis runs each Lua script in a fresh interpreter (some 0.3 ms of
		// CPU, under one global lock): 500 requests/s keep it well below saturation on two
		// cores. With REDIS_URL or -memory-cache, -rate 2000 and more.
		rate:            500,
		workers:         64,
		writeFrac:       0.03,
		batchFrac:       0.05,
		batchSize:       10,
		zipfS:           1.1,
		stampedeReaders: 200,
		stampedeRounds:  3,
		dbLatency:       2 * time.Millisecond,
		chart:           "demo-db-load.png",
		seed:            1,
	}
}

// quick shrinks a run to a few seconds: for a first look, and the test.
func (o *options) quick() {
	o.duration = 4 * time.Second
	o.users = 2_000
	o.rate = 300
	o.workers = 32
	o.stampedeReaders = 100
	o.stampedeRounds = 2
}

// parseOptions reads the flags, then DATABASE_URL and REDIS_URL. With -quick the other flags
// apply on top of the quick settings.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	o, quick, set, err := parseFlags(args, stderr, defaultOptions())
	if err == nil && quick {
		q := defaultOptions()
		q.quick()
		o, _, set, err = parseFlags(args, stderr, q)
	}
	if err != nil {
		return o, err
	}
	o.databaseURL, o.redisURL = os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if o.databaseURL != "" && !set["db-latency"] {
		o.dbLatency = 0 // a real database has latency of its own
	}
	return o, o.validate()
}

func parseFlags(args []string, stderr io.Writer, o options) (options, bool, map[string]bool, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./demo [flags]\n\n"+
			"Runs the userservice in-process (SQLite + miniredis, or DATABASE_URL + REDIS_URL), drives the\n"+
			"same workload without then with the cache, and prints a report and a chart.\n\n")
		fs.PrintDefaults()
	}
	quick := fs.Bool("quick", false, "a short run of a few seconds (fewer users, lower rate); other flags still apply")
	fs.DurationVar(&o.duration, "duration", o.duration, "length of each of the two runs (without, then with the cache)")
	fs.IntVar(&o.users, "users", o.users, "users seeded in the database")
	fs.IntVar(&o.rate, "rate", o.rate, "requests per second offered to the service")
	fs.IntVar(&o.workers, "workers", o.workers, "concurrent HTTP clients")
	fs.Float64Var(&o.writeFrac, "writes", o.writeFrac, "share of requests that are writes (PUT)")
	fs.Float64Var(&o.batchFrac, "batch", o.batchFrac, "share of requests that are batch reads (GET /users?ids=)")
	fs.Float64Var(&o.zipfS, "zipf", o.zipfS, "Zipf skew of the user ids read and written (> 1)")
	fs.IntVar(&o.stampedeReaders, "stampede", o.stampedeReaders, "readers released at once on the hot key right after it is invalidated")
	fs.IntVar(&o.stampedeRounds, "stampede-rounds", o.stampedeRounds, "synchronized expiries of the hot key per run")
	fs.DurationVar(&o.dbLatency, "db-latency", o.dbLatency, "added to each database query, standing for a remote, loaded database (default 0 with DATABASE_URL)")
	fs.BoolVar(&o.embeddedRedis, "embedded-redis", o.embeddedRedis, "use the embedded miniredis even when a Redis answers on "+localRedisAddr)
	fs.BoolVar(&o.memoryCache, "memory-cache", o.memoryCache, "keep the cache in process memory (MemoryStore) instead of Redis or the embedded miniredis")
	fs.StringVar(&o.chart, "chart", o.chart, "file for the chart of database load over time (.png or .svg)")
	fs.Uint64Var(&o.seed, "seed", o.seed, "seed of the workload's random numbers")
	fs.DurationVar(&o.outage, "outage", o.outage, "then cut Redis for this long while users are updated, with and without the transactional outbox, and count stale reads after (needs DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return o, false, nil, err
	}
	if fs.NArg() > 0 {
		return o, false, nil, fmt.Errorf("demo: unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return o, *quick, set, nil
}

func (o options) validate() error {
	switch {
	case o.duration <= 0, o.users < 2, o.rate <= 0, o.workers <= 0, o.stampedeReaders <= 0, o.stampedeRounds < 0:
		return fmt.Errorf("demo: -duration, -users (>= 2), -rate, -workers and -stampede must be positive")
	case o.writeFrac < 0, o.batchFrac < 0, o.writeFrac+o.batchFrac > 1:
		return fmt.Errorf("demo: -writes and -batch are shares in [0, 1] that add up to at most 1")
	case !(o.zipfS > 1):
		return fmt.Errorf("demo: -zipf must be > 1")
	case o.dbLatency < 0:
		return fmt.Errorf("demo: -db-latency must not be negative")
	}
	return nil
}
