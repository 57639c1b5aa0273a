package outbox

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var _ Invalidator = Func(nil)

// Func adapts a function to Invalidator (tests).
type Func func(ctx context.Context, keys ...string) error

func (f Func) Invalidate(ctx context.Context, keys ...string) error { return f(ctx, keys...) }

// write commits version+1 of each key with its invalidation through box.Do.
func write(ctx context.Context, box *Outbox, tr *truth, cache string, keys ...string) error {
	return box.Do(ctx, nil, func(tx *sql.Tx) error {
		for _, k := range keys {
			if _, err := tr.bump(ctx, tx, k); err != nil {
				return err
			}
		}
		return box.Invalidate(ctx, tx, cache, keys...)
	})
}

// staleKeys reads every key through each cache and returns those whose cached value is not
// the database's.
func staleKeys(t *testing.T, tr *truth, keys []string, caches ...*cacheaside.Cache[int64]) []string {
	t.Helper()
	ctx := context.Background()
	var stale []string
	for _, k := range keys {
		want, err := tr.read(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range caches {
			got, err := c.GetOrLoad(ctx, k, tr.loader(k))
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				stale = append(stale, fmt.Sprintf("%s on cache %d: got v%d, the database has v%d", k, i, got, want))
			}
		}
	}
	return stale
}

// Do delivers its rows right after the commit: the cache is fresh when Do returns, and the
// table is empty.
func TestDoDeliversAtOnce(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	tr := newTruth(t, db, table)
	tg := newRedisTarget(t, "redis", false)
	prefix := testPrefix()
	users := tg.cache(t, prefix)
	box := newBox(t, db, WithTable(table), WithCache("users", users), noRelay())
	ctx := context.Background()
	keys := []string{"a", "b", "c"}
	if err := write(ctx, box, tr, "users", keys...); err != nil {
		t.Fatal(err)
	}
	if stale := staleKeys(t, tr, keys, users); len(stale) > 0 { // fills v1
		t.Fatal(stale)
	}
	if err := write(ctx, box, tr, "users", keys...); err != nil {
		t.Fatal(err)
	}
	if stale := staleKeys(t, tr, keys, users); len(stale) > 0 {
		t.Fatalf("stale right after Do returned, with no relay running: %v", stale)
	}
	if p, _ := rowCount(t, db, table); p != 0 {
		t.Fatalf("%d rows left after delivery", p)
	}
	if s := box.Stats(); s.Deliveries != 2 {
		t.Fatalf("Deliveries = %d, want 2 (one row per Do)", s.Deliveries)
	}
}

// Do rolls back when fn fails or panics: no row, nothing delivered.
func TestDoRollsBack(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	var calls atomic.Int64
	inv := Func(func(context.Context, ...string) error { calls.Add(1); return nil })
	box := newBox(t, db, WithTable(table), WithCache("c", inv), noRelay())
	ctx := context.Background()
	boom := errors.New("boom")
	err := box.Do(ctx, nil, func(tx *sql.Tx) error {
		if err := box.Invalidate(ctx, tx, "c", "k"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Do = %v, want fn's error", err)
	}
	func() {
		defer func() {
			if p := recover(); p != "panic in fn" {
				t.Fatalf("recovered %v, want fn's panic", p)
			}
		}()
		_ = box.Do(ctx, nil, func(tx *sql.Tx) error {
			if err := box.Invalidate(ctx, tx, "c", "k"); err != nil {
				return err
			}
			panic("panic in fn")
		})
	}()
	if p, _ := rowCount(t, db, table); p != 0 || calls.Load() != 0 {
		t.Fatalf("after rollbacks: %d rows, %d deliveries; want none", p, calls.Load())
	}
	box.mu.Lock()
	n := len(box.own)
	box.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d transactions still tracked after Do returned", n)
	}
}

// A transaction of the caller's own: the relay delivers its row after the commit (at once
// after Wake), and nothing if it rolls back.
func TestOwnTransactionDeliveredByRelay(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	got := make(chan string, 10)
	inv := Func(func(_ context.Context, keys ...string) error {
		for _, k := range keys {
			got <- k
		}
		return nil
	})
	box := newBox(t, db, WithTable(table), WithCache("c", inv), WithPollInterval(time.Hour))
	ctx := context.Background()
	for _, commit := range []bool{false, true} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := box.Invalidate(ctx, tx, "c", "k-"+strconv.FormatBool(commit)); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	box.Wake()
	select {
	case k := <-got:
		if k != "k-true" {
			t.Fatalf("delivered %q, want only the committed row's key", k)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the committed row was not delivered after Wake")
	}
	waitFor(t, 30*time.Second, "the delivered row's deletion", func() bool { p, _ := rowCount(t, db, table); return p == 0 })
	select {
	case k := <-got:
		t.Fatalf("delivered %q too", k)
	default:
	}
}

// A process dies after its commit, before delivering (the test drops Do's delivery, as a
// crash would): the old values stay cached, until another process's relay delivers the rows
// once their claim (the lease) ends; then no entry is stale, on any instance.
func TestCrashAfterCommitDeliveredByAnotherRelay(t *testing.T) {
	for _, kind := range []string{"redis", "cluster"} {
		t.Run(kind, func(t *testing.T) {
			db := openDB(t)
			table := testTable(t, db)
			tr := newTruth(t, db, table)
			tg := newRedisTarget(t, kind, false)
			prefix := testPrefix()
			c1, c2 := tg.cache(t, prefix), tg.cache(t, prefix) // two processes
			ctx := context.Background()
			keys := make([]string, 20)
			for i := range keys {
				keys[i] = "user:" + strconv.Itoa(i)
			}
			dying := newBox(t, db, WithTable(table), WithCache("users", c1), WithLease(time.Second), noRelay(), noDeliver())
			if err := write(ctx, dying, tr, "users", keys...); err != nil {
				t.Fatal(err)
			}
			if stale := staleKeys(t, tr, keys, c1, c2); len(stale) > 0 { // fills v1 (nothing invalidated v1: it was never cached)
				t.Fatal(stale)
			}
			for _, k := range keys {
				if err := write(ctx, dying, tr, "users", k); err != nil {
					t.Fatal(err)
				}
			}
			dying.Close() // the crash: committed, nothing delivered
			if p, _ := rowCount(t, db, table); p != len(keys)+1 {
				t.Fatalf("%d rows pending after the crash, want %d", p, len(keys)+1)
			}
			if stale := staleKeys(t, tr, keys, c1, c2); len(stale) != 2*len(keys) {
				t.Fatalf("before the second relay: %d stale reads, want all %d (the hole the outbox closes)", len(stale), 2*len(keys))
			}
			survivor := newBox(t, db, WithTable(table), WithCache("users", c2), WithPollInterval(20*time.Millisecond))
			waitFor(t, 30*time.Second, "the second relay to deliver the dead process's rows", func() bool {
				p, _ := rowCount(t, db, table)
				return p == 0
			})
			if stale := staleKeys(t, tr, keys, c1, c2); len(stale) > 0 {
				t.Fatalf("stale at rest after the second relay delivered: %v", stale)
			}
			if s := survivor.Stats(); s.Deliveries != uint64(len(keys)+1) {
				t.Fatalf("survivor Deliveries = %d, want %d", s.Deliveries, len(keys)+1)
			}
		})
	}
}

// Redis is cut (a blackhole) while 200 writes commit: no write waits on Redis for more than
// the store timeout, every row is kept, and once Redis answers again every row is delivered
// and no key is stale on any instance.
func TestRedisOutageNoLostInvalidation(t *testing.T) {
	const writes, nkeys = 200, 50
	outage := 5 * time.Second
	if testing.Short() {
		outage = time.Second
	}
	db := openDB(t)
	table := testTable(t, db)
	tr := newTruth(t, db, table)
	tg := newRedisTarget(t, "redis", true)
	prefix := testPrefix()
	c1, c2 := tg.cache(t, prefix, faultOpts...), tg.cache(t, prefix, faultOpts...)
	b1 := newBox(t, db, WithTable(table), WithCache("users", c1), WithPollInterval(50*time.Millisecond), WithRetryBackoff(50*time.Millisecond, 500*time.Millisecond))
	b2 := newBox(t, db, WithTable(table), WithCache("users", c2), WithPollInterval(50*time.Millisecond), WithRetryBackoff(50*time.Millisecond, 500*time.Millisecond))
	ctx := context.Background()
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	if err := write(ctx, b1, tr, "users", keys...); err != nil {
		t.Fatal(err)
	}
	if stale := staleKeys(t, tr, keys, c1, c2); len(stale) > 0 { // cache v1 everywhere
		t.Fatal(stale)
	}

	tg.blackhole(true)
	start := time.Now()
	var longest atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	const writers = 10
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			box := []*Outbox{b1, b2}[w%2]
			for i := range writes / writers {
				k := keys[(w*writes/writers+i)%nkeys]
				t0 := time.Now()
				if err := write(ctx, box, tr, "users", k); err != nil {
					failed.Add(1)
					t.Error(err)
					return
				}
				d := int64(time.Since(t0))
				for old := longest.Load(); d > old && !longest.CompareAndSwap(old, d); old = longest.Load() {
				}
				time.Sleep(outage / (writes / writers))
			}
		}()
	}
	wg.Wait()
	committed := time.Since(start)
	if rest := outage - committed; rest > 0 {
		time.Sleep(rest)
	}
	pending, _ := rowCount(t, db, table)
	s1, s2 := b1.Stats(), b2.Stats()
	t.Logf("%d writes committed in %v during a %v outage; longest write %v; %d rows pending at the end of it; retries %d+%d",
		writes, committed.Round(time.Millisecond), outage, time.Duration(longest.Load()).Round(time.Millisecond), pending, s1.Retries, s2.Retries)
	if failed.Load() > 0 {
		t.FailNow()
	}
	if pending == 0 {
		t.Error("no row pending at the end of the outage: was Redis cut at all?")
	}
	// A hang guard, not a timing assertion: a write that waited on Redis for the outage would
	// take seconds; the store timeout is 100ms.
	if l := time.Duration(longest.Load()); l > 3*time.Second {
		t.Fatalf("a write took %v during the outage: it waited on Redis", l)
	}
	tg.blackhole(false)
	waitFor(t, 60*time.Second, "every row to be delivered after the outage", func() bool {
		p, _ := rowCount(t, db, table)
		return p == 0
	})
	if stale := staleKeys(t, tr, keys, c1, c2); len(stale) > 0 {
		t.Fatalf("%d stale reads at rest after the outage: %v", len(stale), stale)
	}
}

// delivery records an instrumented Invalidator's calls: how many times each key was
// delivered, and whether one was ever being delivered twice at once.
type delivery struct {
	mu       sync.Mutex
	count    map[string]int
	inflight map[string]int
	overlaps []string
}

func newDelivery() *delivery {
	return &delivery{count: make(map[string]int), inflight: make(map[string]int)}
}

func (d *delivery) invalidator(delay time.Duration) Invalidator {
	return Func(func(ctx context.Context, keys ...string) error {
		d.mu.Lock()
		for _, k := range keys {
			d.inflight[k]++
			if d.inflight[k] > 1 {
				d.overlaps = append(d.overlaps, k)
			}
		}
		d.mu.Unlock()
		time.Sleep(delay)
		d.mu.Lock()
		for _, k := range keys {
			d.inflight[k]--
			d.count[k]++
		}
		d.mu.Unlock()
		return nil
	})
}

// Two relays on one table share the rows: every row is delivered, none by both at once.
func TestTwoRelaysShareTheTable(t *testing.T) {
	const rows = 400
	db := openDB(t)
	table := testTable(t, db)
	d := newDelivery()
	writer := newBox(t, db, WithTable(table), WithCache("c", d.invalidator(0)), noRelay())
	ctx := context.Background()
	for i := range rows / 20 {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for j := range 20 {
			if err := writer.Invalidate(ctx, tx, "c", "k"+strconv.Itoa(i*20+j)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	var boxes []*Outbox
	for range 2 {
		boxes = append(boxes, newBox(t, db, WithTable(table), WithCache("c", d.invalidator(2*time.Millisecond)),
			WithPollInterval(10*time.Millisecond), WithBatchSize(10)))
	}
	waitFor(t, 60*time.Second, "both relays to deliver every row", func() bool {
		p, _ := rowCount(t, db, table)
		return p == 0
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.overlaps) > 0 {
		t.Fatalf("%d deliveries overlapped another of the same row, e.g. %s", len(d.overlaps), d.overlaps[0])
	}
	twice := 0
	for i := range rows {
		switch n := d.count["k"+strconv.Itoa(i)]; {
		case n == 0:
			t.Fatalf("k%d never delivered", i)
		case n > 1:
			twice++
		}
	}
	s0, s1 := boxes[0].Stats(), boxes[1].Stats()
	t.Logf("relay deliveries: %d and %d; rows delivered more than once (after a lease ran out): %d", s0.Deliveries, s1.Deliveries, twice)
	if s0.Deliveries+s1.Deliveries < rows {
		t.Fatalf("the relays delivered %d rows, want %d", s0.Deliveries+s1.Deliveries, rows)
	}
}

// A failed delivery is retried with backoff until it succeeds; the row is never dropped.
func TestFailedDeliveryRetried(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	var calls atomic.Int64
	inv := Func(func(context.Context, ...string) error {
		if calls.Add(1) <= 3 {
			return errors.New("store unreachable")
		}
		return nil
	})
	box := newBox(t, db, WithTable(table), WithCache("c", inv), WithPollInterval(10*time.Millisecond), WithRetryBackoff(10*time.Millisecond, 40*time.Millisecond))
	if err := box.Do(context.Background(), nil, func(tx *sql.Tx) error { return box.Invalidate(context.Background(), tx, "c", "k") }); err != nil {
		t.Fatalf("Do = %v; a failed delivery after the commit is the relay's to retry", err)
	}
	// The relay deletes a delivered row, then counts the delivery: wait for both, or a read
	// in between sees "Deliveries:0" with the row gone (it did so once, under load).
	waitFor(t, 30*time.Second, "the row's delivery after three failures", func() bool {
		p, _ := rowCount(t, db, table)
		return p == 0 && box.Stats().Deliveries == 1
	})
	if s := box.Stats(); s.Retries != 3 || s.Deliveries != 1 || calls.Load() != 4 {
		t.Fatalf("Stats %+v after %d calls; want 3 retries, 1 delivery, 4 calls", s, calls.Load())
	}
}

// A row that cannot be decoded is parked and logged, and never retried; a row of a cache
// this process does not know is left alone; good rows still flow.
func TestBadAndForeignRows(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	d := newDelivery()
	box := newBox(t, db, WithTable(table), WithCache("c", d.invalidator(0)), WithPollInterval(10*time.Millisecond),
		WithRetryBackoff(10*time.Millisecond, 20*time.Millisecond), WithLogger(logger), noRelay())
	box.Close() // created the table; now write rows by hand
	for _, q := range []string{
		`INSERT INTO ` + table + ` (cache, keys) VALUES ('c', 'not json')`,
		`INSERT INTO ` + table + ` (cache, keys) VALUES ('c', '[]')`,
		`INSERT INTO ` + table + ` (cache, keys) VALUES ('other', '["x"]')`,
		`INSERT INTO ` + table + ` (cache, keys) VALUES ('c', '["good"]')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	box = newBox(t, db, WithTable(table), WithCache("c", d.invalidator(0)), WithPollInterval(10*time.Millisecond),
		WithRetryBackoff(10*time.Millisecond, 20*time.Millisecond), WithLogger(logger))
	waitFor(t, 30*time.Second, "the bad rows to be parked and the good one delivered", func() bool {
		p, parked := rowCount(t, db, table)
		return p == 1 && parked == 2
	})
	time.Sleep(100 * time.Millisecond) // ten polls: a spinning relay would touch the rows again
	var attempts []int
	rs, err := db.Query(`SELECT attempts FROM ` + table + ` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var a int
		if err := rs.Scan(&a); err != nil {
			t.Fatal(err)
		}
		attempts = append(attempts, a)
	}
	rs.Close()
	if fmt.Sprint(attempts) != "[1 1 0]" {
		t.Fatalf("attempts of the parked, parked and foreign rows: %v, want [1 1 0] (parked once, foreign untouched)", attempts)
	}
	d.mu.Lock()
	good, foreign := d.count["good"], d.count["x"]
	d.mu.Unlock()
	if good != 1 || foreign != 0 {
		t.Fatalf("deliveries: good=%d foreign=%d; want 1 and 0", good, foreign)
	}
	if s := box.Stats(); s.Parks != 2 {
		t.Fatalf("Parks = %d, want 2", s.Parks)
	}
	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	if strings.Count(out, "row cannot be decoded") != 2 {
		t.Fatalf("want two parked-row log lines, got:\n%s", out)
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Bad input gets clear errors, sentinels where callers must tell cases apart.
func TestBadInput(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	inv := Func(func(context.Context, ...string) error { return nil })
	for name, opts := range map[string][]Option{
		"no cache":       nil,
		"nil cache":      {WithCache("c", nil)},
		"empty name":     {WithCache("", inv)},
		"twice":          {WithCache("c", inv), WithCache("c", inv)},
		"bad table":      {WithCache("c", inv), WithTable("x; DROP TABLE y")},
		"zero poll":      {WithCache("c", inv), WithPollInterval(0)},
		"backoff":        {WithCache("c", inv), WithRetryBackoff(time.Second, time.Millisecond)},
		"nil registerer": {WithCache("c", inv), WithPrometheus(nil)},
		"nil option":     {WithCache("c", inv), nil},
	} {
		if _, err := New(db, opts...); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%s: New = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := New(nil, WithCache("c", inv)); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("nil db: New = %v, want ErrInvalidOption", err)
	}
	box := newBox(t, db, WithTable(table), WithCache("c", inv))
	ctx := context.Background()
	err := box.Do(ctx, nil, func(tx *sql.Tx) error {
		if err := box.Invalidate(ctx, tx, "nope", "k"); !errors.Is(err, ErrUnknownCache) || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("unknown cache: %v", err)
		}
		if err := box.Invalidate(ctx, tx, "c"); !errors.Is(err, ErrNoKeys) {
			t.Errorf("no keys: %v", err)
		}
		if err := box.Invalidate(ctx, tx, "c", "a", ""); !errors.Is(err, ErrNoKeys) {
			t.Errorf("empty key: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	box.Close()
	if err := box.Do(ctx, nil, func(*sql.Tx) error { t.Error("fn ran after Close"); return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close: %v", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := box.Invalidate(ctx, tx, "c", "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Invalidate after Close: %v", err)
	}
	if err := box.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, e := range []error{ErrClosed, ErrUnknownCache, ErrNoKeys, ErrInvalidOption} {
		if !strings.HasPrefix(e.Error(), "cacheaside: outbox: ") {
			t.Errorf("%q lacks the package's prefix", e)
		}
	}
}

// Stats and Prometheus: pending rows, lag and its warning, deliveries, retries; Close
// unregisters the metrics.
func TestStatsPrometheusAndLagWarning(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	reg := prometheus.NewPedanticRegistry()
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	inv := Func(func(context.Context, ...string) error { return nil })
	box := newBox(t, db, WithTable(table), WithCache("c", inv), noRelay())
	box.Close()
	// A foreign cache's row, an hour old: pending, lagging, never delivered here.
	if _, err := db.Exec(`INSERT INTO ` + table + ` (cache, keys, created_at) VALUES ('other', '["x"]', now() - interval '1 hour')`); err != nil {
		t.Fatal(err)
	}
	box = newBox(t, db, WithTable(table), WithCache("c", inv), WithPrometheus(reg), WithLagWarning(time.Minute),
		WithLogger(logger), WithPollInterval(10*time.Millisecond))
	if err := box.Do(context.Background(), nil, func(tx *sql.Tx) error { return box.Invalidate(context.Background(), tx, "c", "k") }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the relay's look at the table", func() bool { return box.Stats().Pending == 1 })
	s := box.Stats()
	if s.Lag < 59*time.Minute || s.Deliveries != 1 {
		t.Fatalf("Stats = %+v, want 1 pending, lag about an hour, 1 delivery", s)
	}
	waitFor(t, 30*time.Second, "the lag warning", func() bool {
		logMu.Lock()
		defer logMu.Unlock()
		return strings.Contains(logs.String(), "invalidations are lagging")
	})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP cacheaside_outbox_deliveries_total Rows this process delivered and deleted.
# TYPE cacheaside_outbox_deliveries_total counter
cacheaside_outbox_deliveries_total{table=%[1]q} 1
# HELP cacheaside_outbox_pending_rows Rows not yet delivered, every cache's, as of the relay's last look (parked rows excluded).
# TYPE cacheaside_outbox_pending_rows gauge
cacheaside_outbox_pending_rows{table=%[1]q} 1
# HELP cacheaside_outbox_retries_total Row deliveries of this process that failed and were rescheduled.
# TYPE cacheaside_outbox_retries_total counter
cacheaside_outbox_retries_total{table=%[1]q} 0
`, table)), "cacheaside_outbox_deliveries_total", "cacheaside_outbox_pending_rows", "cacheaside_outbox_retries_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "cacheaside_outbox_lag_seconds", "cacheaside_outbox_parked_rows"); err != nil || n != 2 {
		t.Fatalf("lag and parked series: %d, %v", n, err)
	}
	box.Close()
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Fatalf("%d series left after Close", n)
	}
}

// For a poll interval after a failed delivery, Do does not wait on the store again: it leaves
// the rows to the relay (due at once); then it tries again.
func TestDoSkipsAStoreThatIsDown(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	var calls atomic.Int64
	var down atomic.Bool
	down.Store(true)
	inv := Func(func(context.Context, ...string) error {
		calls.Add(1)
		if down.Load() {
			return errors.New("store unreachable")
		}
		return nil
	})
	box := newBox(t, db, WithTable(table), WithCache("c", inv), WithPollInterval(time.Hour), noRelay())
	ctx := context.Background()
	do := func() {
		t.Helper()
		if err := box.Do(ctx, nil, func(tx *sql.Tx) error { return box.Invalidate(ctx, tx, "c", "k") }); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		do()
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d delivery attempts by 5 Do calls on a down store, want 1 (the first)", n)
	}
	// The 4 rows Do left to the relay are due at once; the first, whose delivery failed, is
	// due after its retry backoff (75-100 ms by default), which a slow run may already have
	// passed ("5 rows due" once, under load): told apart by its last_error, not by the clock.
	var due, failed int
	if err := db.QueryRow(`SELECT count(*) FILTER (WHERE last_error IS NULL AND next_attempt_at <= now()),
		count(*) FILTER (WHERE last_error IS NOT NULL) FROM `+table).Scan(&due, &failed); err != nil {
		t.Fatal(err)
	}
	if due != 4 || failed != 1 {
		t.Fatalf("%d rows due for the relay and %d failed delivery, want the 4 Do left to it and the first", due, failed)
	}
	down.Store(false)
	relay := newBox(t, db, WithTable(table), WithCache("c", inv), WithPollInterval(10*time.Millisecond), WithRetryBackoff(10*time.Millisecond, 20*time.Millisecond))
	// Deliveries counts a row after its delete: wait for both, or the count below may be one short.
	waitFor(t, 30*time.Second, "the relay to deliver every row", func() bool {
		p, _ := rowCount(t, db, table)
		return p == 0 && relay.Stats().Deliveries == 5
	})
	n := calls.Load()
	box.down["c"].Store(time.Now().UnixNano()) // the hour is up
	do()
	do()
	if got := calls.Load() - n; got != 2 || relay.Stats().Deliveries != 5 {
		t.Fatalf("after the store came back: %d attempts by 2 Do calls, want 2; relay deliveries %d, want 5 (every row)", got, relay.Stats().Deliveries)
	}
	if s := box.Stats(); s.Deliveries != 2 {
		t.Fatalf("Do deliveries after the store came back = %d, want 2", s.Deliveries)
	}
}
