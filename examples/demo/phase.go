package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/examples/userservice"
)

// phaseResult is what one run (without or with the cache) measured.
type phaseResult struct {
	Cached   bool
	Backends string // what the service ran on, without credentials
	Elapsed  time.Duration

	Requests, Reads, Writes, Batches int64 // requests of the workload
	Errors                           int64 // failed requests (any is a bug)
	FirstError                       string

	DB        userservice.Stats // the service's counters over the run
	DBQPS     float64           // database statements per second (reads and writes)
	HitRatio  float64           // users read without a database query
	P50, P99  time.Duration     // latency of GET /users/{id}, workload only
	Stampedes []int64           // database reads caused by each synchronized expiry

	ReadsChecked, StaleReads int64 // users read, and those older than a write that had returned
	StaleExamples            []string

	Series []sample // database load over time
}

// sample is the database load over one tick of the run.
type sample struct {
	At  float64 // seconds since the run started
	QPS float64 // database statements per second
}

// runPhase starts the service, seeds it, drives the workload at it over HTTP for o.duration
// with o.stampedeRounds synchronized expiries of the hot key, and returns what it measured.
func runPhase(ctx context.Context, o options, cached bool, bar *progressBar) (*phaseResult, error) {
	id := make([]byte, 4)
	rand.Read(id)
	run := hex.EncodeToString(id)
	svc, err := userservice.New(ctx, userservice.Config{
		DatabaseURL:  o.databaseURL,
		RedisURL:     o.redisURL,
		Table:        "demo_users_" + run,
		CachePrefix:  "cacheaside-demo-" + run + ":",
		NoCache:      !cached,
		MemoryCache:  o.memoryCache,
		StoreTimeout: o.storeTimeout,
		DBLatency:    o.dbLatency,
		Ephemeral:    true, // drop the table and the cache keys at the end
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return nil, err
	}
	defer svc.Close()
	if err := svc.Seed(ctx, o.users); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }() // http.ErrServerClosed once srv.Close runs
	defer srv.Close()
	conns := o.workers + o.stampedeReaders
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute},
		Timeout:   30 * time.Second,
	}
	defer client.CloseIdleConnections()

	d := &driver{
		o:      o,
		base:   "http://" + ln.Addr().String(),
		client: client,
		truth:  make([]atomic.Int64, o.users+1),
		res:    &phaseResult{Cached: cached, Backends: svc.Describe()},
	}
	for i := range d.truth {
		d.truth[i].Store(1) // Seed wrote version 1 of every user in a fresh table
	}
	d.warmConnections(ctx, conns)
	return d.run(ctx, svc, bar)
}

// driver drives one run's workload and checks every read against the source of truth.
type driver struct {
	o      options
	base   string
	client *http.Client
	// truth[id] is the highest version a PUT of user id returned: a read that starts later
	// must see at least that version, or it is stale.
	truth []atomic.Int64

	gate   sync.RWMutex // requests hold it shared; a stampede holds it alone
	paused atomic.Bool  // the pacer offers nothing while a stampede runs

	mu    sync.Mutex // guards res and extra
	res   *phaseResult
	extra []*workerStats // of the stampedes: checked and counted, not in the latencies
}

// workerStats is one worker's share, merged at the end.
type workerStats struct {
	requests, reads, writes, batches, errors int64
	checked, stale                           int64
	latencies                                []time.Duration
	firstError                               string
	staleExamples                            []string
}

func (d *driver) run(ctx context.Context, svc *userservice.Service, bar *progressBar) (*phaseResult, error) {
	o := d.o
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	end := start.Add(o.duration)
	before := svc.Stats()

	// The pacer offers requests at o.rate; busy workers leave offers in a small buffer,
	// past which they are dropped (the run then offered less than asked).
	offers := make(chan struct{}, o.workers)
	var bg sync.WaitGroup
	bg.Go(func() {
		defer close(offers)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		var sent, skipped int64
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				if !now.Before(end) {
					return
				}
				due := int64(now.Sub(start).Seconds()*float64(o.rate)) - skipped
				if d.paused.Load() {
					skipped += due - sent
					continue
				}
				for ; sent < due; sent++ {
					select {
					case offers <- struct{}{}:
					default:
					}
				}
			}
		}
	})

	stats := make([]*workerStats, o.workers)
	var workers sync.WaitGroup
	for w := range o.workers {
		ws := &workerStats{}
		stats[w] = ws
		workers.Go(func() {
			z := newZipf(o.seed, uint64(w), o.zipfS, o.users)
			for range offers {
				d.gate.RLock()
				d.request(ctx, z, ws)
				d.gate.RUnlock()
			}
		})
	}

	// Synchronized expiries, evenly spread over the run.
	var stampedes sync.WaitGroup
	stampedes.Go(func() {
		for i := range o.stampedeRounds {
			at := start.Add(o.duration * time.Duration(i+1) / time.Duration(o.stampedeRounds+1))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
			calls := d.stampede(ctx, svc)
			d.mu.Lock()
			d.res.Stampedes = append(d.res.Stampedes, calls)
			d.mu.Unlock()
		}
	})

	// Sample the database load, and draw the progress bar.
	bg.Go(func() {
		const tick = 250 * time.Millisecond
		t := time.NewTicker(tick)
		defer t.Stop()
		prev, prevAt := before, start
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				s := svc.Stats()
				dq := s.DBQueries + s.DBWrites - prev.DBQueries - prev.DBWrites
				qps := float64(dq) / now.Sub(prevAt).Seconds()
				d.mu.Lock()
				d.res.Series = append(d.res.Series, sample{At: now.Sub(start).Seconds(), QPS: qps})
				d.mu.Unlock()
				prev, prevAt = s, now
				bar.update(now.Sub(start), qps)
				if !now.Before(end) {
					return
				}
			}
		}
	})

	workers.Wait() // the pacer closed offers at the end
	stampedes.Wait()
	cancel()
	bg.Wait()
	d.res.Elapsed = time.Since(start)
	d.res.DB = svc.Stats().Sub(before)
	bar.done()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return nil, err
	}
	d.merge(stats)
	return d.res, nil
}

func (d *driver) merge(stats []*workerStats) {
	r := d.res
	var lat []time.Duration
	for _, ws := range stats {
		lat = append(lat, ws.latencies...)
	}
	for _, ws := range append(stats, d.extra...) {
		r.Requests += ws.requests
		r.Reads += ws.reads
		r.Writes += ws.writes
		r.Batches += ws.batches
		r.Errors += ws.errors
		r.ReadsChecked += ws.checked
		r.StaleReads += ws.stale
		if r.FirstError == "" {
			r.FirstError = ws.firstError
		}
		r.StaleExamples = append(r.StaleExamples, ws.staleExamples...)
	}
	slices.Sort(lat)
	r.P50, r.P99 = percentile(lat, 50), percentile(lat, 99)
	r.DBQPS = float64(r.DB.DBQueries+r.DB.DBWrites) / r.Elapsed.Seconds()
	r.HitRatio = r.DB.HitRatio()
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100 // the smallest value with p% of the samples at or below it
	return sorted[max(i-1, 0)]
}

// request sends one request of the workload: a write, a batch read or a read.
func (d *driver) request(ctx context.Context, z *zipf, ws *workerStats) {
	ws.requests++
	x := z.r.Float64()
	switch {
	case x < d.o.writeFrac:
		ws.writes++
		d.put(ctx, z.next(), ws)
	case x < d.o.writeFrac+d.o.batchFrac:
		ws.batches++
		ids := make([]int64, d.o.batchSize)
		for i := range ids {
			ids[i] = z.next()
		}
		d.getMany(ctx, ids, ws)
	default:
		ws.reads++
		id := z.next()
		t0 := time.Now()
		if d.get(ctx, id, ws) {
			ws.latencies = append(ws.latencies, time.Since(t0))
		}
	}
}

func (d *driver) fail(ws *workerStats, format string, args ...any) {
	ws.errors++
	if ws.firstError == "" {
		ws.firstError = fmt.Sprintf(format, args...)
	}
}

// check compares a user read with the versions of the writes that had returned before the
// read began.
func (d *driver) check(u userservice.User, floor int64, ws *workerStats) {
	ws.checked++
	if u.Version < floor {
		ws.stale++
		if len(ws.staleExamples) < 3 {
			ws.staleExamples = append(ws.staleExamples, fmt.Sprintf("user %d: read version %d after a write of version %d had returned", u.ID, u.Version, floor))
		}
	}
}

// get reads one user and checks it; it reports whether the request succeeded.
func (d *driver) get(ctx context.Context, id int64, ws *workerStats) bool {
	floor := d.truth[id].Load()
	var u userservice.User
	if !d.do(ctx, "GET", "/users/"+strconv.FormatInt(id, 10), nil, http.StatusOK, &u, ws) {
		return false
	}
	d.check(u, floor, ws)
	return true
}

func (d *driver) getMany(ctx context.Context, ids []int64, ws *workerStats) {
	floors := make(map[int64]int64, len(ids))
	parts := make([]string, len(ids))
	for i, id := range ids {
		floors[id] = d.truth[id].Load()
		parts[i] = strconv.FormatInt(id, 10)
	}
	var resp userservice.BatchResponse
	if !d.do(ctx, "GET", "/users?ids="+strings.Join(parts, ","), nil, http.StatusOK, &resp, ws) {
		return
	}
	if len(resp.Missing) > 0 {
		d.fail(ws, "batch read: users %v missing", resp.Missing)
	}
	for _, u := range resp.Users {
		d.check(u, floors[u.ID], ws)
	}
}

// put writes a user and raises its version floor to the version the write returned.
func (d *driver) put(ctx context.Context, id int64, ws *workerStats) {
	in := userservice.UserInput{Name: "user-" + strconv.FormatInt(id, 10), Email: "user" + strconv.FormatInt(id, 10) + "@example.org"}
	var u userservice.User
	if !d.do(ctx, "PUT", "/users/"+strconv.FormatInt(id, 10), in, http.StatusOK, &u, ws) {
		return
	}
	for {
		cur := d.truth[id].Load()
		if u.Version <= cur || d.truth[id].CompareAndSwap(cur, u.Version) {
			return
		}
	}
}

func (d *driver) do(ctx context.Context, method, path string, body any, want int, out any, ws *workerStats) bool {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, r)
	if err != nil {
		d.fail(ws, "%s %s: %v", method, path, err)
		return false
	}
	resp, err := d.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			d.fail(ws, "%s %s: %v", method, path, err)
		}
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		d.fail(ws, "%s %s: status %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
		return false
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		d.fail(ws, "%s %s: %v", method, path, err)
		return false
	}
	return true
}

// warmConnections opens n keep-alive connections, as a load balancer in front of a service
// keeps them, so that the stampede's readers do not wait on dials.
func (d *driver) warmConnections(ctx context.Context, n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", d.base+"/healthz", nil)
			if resp, err := d.client.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}
