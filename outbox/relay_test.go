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
)

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
