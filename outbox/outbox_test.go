package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
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
