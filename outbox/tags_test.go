package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
)

// A Cache is a TagInvalidator.
var _ TagInvalidator = (*cacheaside.Cache[int64])(nil)

// recorder is an Invalidator and TagInvalidator that records its calls; failTags makes
// InvalidateTags fail.
type recorder struct {
	mu       sync.Mutex
	keyCalls [][]string
	tagCalls [][]string
	failTags atomic.Bool
	tagTries atomic.Int64
}

func (r *recorder) Invalidate(_ context.Context, keys ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keyCalls = append(r.keyCalls, slices.Clone(keys))
	return nil
}

func (r *recorder) InvalidateTags(_ context.Context, tags ...string) error {
	r.tagTries.Add(1)
	if r.failTags.Load() {
		return errors.New("store unreachable")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tagCalls = append(r.tagCalls, slices.Clone(tags))
	return nil
}

func (r *recorder) calls() (keys, tags [][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.keyCalls), slices.Clone(r.tagCalls)
}

// tagged reads key through c, tagging a load with tags.
func tagged(t *testing.T, tr *truth, c *cacheaside.Cache[int64], key string, tags ...string) int64 {
	t.Helper()
	v, err := c.GetOrLoad(context.Background(), key, tr.loader(key), cacheaside.Tags(tags...))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Tags written with InvalidateTags in Do are delivered right after the commit: every entry
// tagged with them is fresh when Do returns, other entries stay cached; a rolled-back
// transaction writes no row; in a transaction of one's own, the relay delivers after the
// commit.
func TestTagsDeliveredAfterCommit(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	tr := newTruth(t, db, table)
	tg := newRedisTarget(t, "redis", false)
	prefix := testPrefix()
	lists, other := tg.cache(t, prefix), tg.cache(t, prefix) // two processes
	box := newBox(t, db, WithTable(table), WithCache("lists", lists), WithPollInterval(time.Hour))
	ctx := context.Background()
	product := []string{"cat:7:page:1", "cat:8:page:3", "search:red"} // tagged product:42
	unrelated := "cat:9:page:1"                                       // tagged product:43
	bump := func(tx *sql.Tx, keys ...string) error {
		for _, k := range keys {
			if _, err := tr.bump(ctx, tx, k); err != nil {
				return err
			}
		}
		return nil
	}
	if err := box.Do(ctx, nil, func(tx *sql.Tx) error { return bump(tx, append(product, unrelated)...) }); err != nil {
		t.Fatal(err)
	}
	for _, k := range product {
		tagged(t, tr, lists, k, "product:42", "category:"+k[4:5])
	}
	tagged(t, tr, lists, unrelated, "product:43")

	// Rolled back: no row.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bump(tx, product...); err != nil {
		t.Fatal(err)
	}
	if err := box.InvalidateTags(ctx, tx, "lists", "product:42"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if p, _ := rowCount(t, db, table); p != 0 {
		t.Fatalf("%d rows after a rollback", p)
	}

	// Do: delivered when it returns; the price change (the write) makes the entries stale
	// unless the tag is delivered.
	if err := box.Do(ctx, nil, func(tx *sql.Tx) error {
		if err := bump(tx, append(product, unrelated)...); err != nil {
			return err
		}
		return box.InvalidateTags(ctx, tx, "lists", "product:42")
	}); err != nil {
		t.Fatal(err)
	}
	if p, _ := rowCount(t, db, table); p != 0 {
		t.Fatalf("%d rows left after Do's delivery", p)
	}
	if stale := staleKeys(t, tr, product, lists, other); len(stale) > 0 {
		t.Fatalf("entries tagged product:42 stale right after Do returned: %v", stale)
	}
	if stale := staleKeys(t, tr, []string{unrelated}, other); len(stale) != 1 {
		t.Fatalf("the entry tagged product:43 was invalidated too (stale reads: %v); want it still cached (stale)", stale)
	}

	// A transaction of one's own: nothing until the commit, then the relay (woken) delivers.
	// (staleKeys loaded the entries untagged: drop them, and load them tagged.)
	if err := lists.Invalidate(ctx, product...); err != nil {
		t.Fatal(err)
	}
	for _, k := range product {
		tagged(t, tr, lists, k, "product:42")
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bump(tx, product...); err != nil {
		t.Fatal(err)
	}
	if err := box.InvalidateTags(ctx, tx, "lists", "product:42"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if stale := staleKeys(t, tr, product[:1], other); len(stale) != 1 {
		t.Fatalf("stale reads before delivery: %v; want the cached old value (the relay polls hourly)", stale)
	}
	box.Wake()
	waitFor(t, 30*time.Second, "the relay to deliver the tag row", func() bool { p, _ := rowCount(t, db, table); return p == 0 })
	if stale := staleKeys(t, tr, product, lists, other); len(stale) > 0 {
		t.Fatalf("stale after the relay delivered the tag: %v", stale)
	}
	if s := box.Stats(); s.Deliveries != 2 {
		t.Fatalf("Deliveries = %d, want 2 (one by Do, one by the relay)", s.Deliveries)
	}
}

// Redis is cut while writes commit their tag invalidations: every row is kept, and once Redis
// answers again every one is delivered and no entry is stale on any instance.
func TestTagsRedisOutageNoLostInvalidation(t *testing.T) {
	const nkeys, groups, writers = 20, 5, 6
	writes, outage := 60, 3*time.Second
	if testing.Short() {
		writes, outage = 30, time.Second
	}
	db := openDB(t)
	table := testTable(t, db)
	tr := newTruth(t, db, table)
	tg := newRedisTarget(t, "redis", true)
	prefix := testPrefix()
	c1, c2 := tg.cache(t, prefix, faultOpts...), tg.cache(t, prefix, faultOpts...)
	opts := []Option{WithTable(table), WithPollInterval(50 * time.Millisecond), WithRetryBackoff(50*time.Millisecond, 500*time.Millisecond)}
	b1 := newBox(t, db, append(opts, WithCache("lists", c1))...)
	b2 := newBox(t, db, append(opts, WithCache("lists", c2))...)
	ctx := context.Background()
	keys := make([]string, nkeys)
	group := func(i int) string { return "group:" + strconv.Itoa(i%groups) }
	for i := range keys {
		keys[i] = "list:" + strconv.Itoa(i)
	}
	if err := write(ctx, b1, tr, "lists", keys...); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		tagged(t, tr, []*cacheaside.Cache[int64]{c1, c2}[i%2], k, group(i))
	}
	if stale := staleKeys(t, tr, keys, c1, c2); len(stale) > 0 {
		t.Fatal(stale)
	}

	tg.blackhole(true)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			box := []*Outbox{b1, b2}[w%2]
			for i := range writes / writers {
				g := (w + i) % groups
				err := box.Do(ctx, nil, func(tx *sql.Tx) error {
					for k := g; k < nkeys; k += groups {
						if _, err := tr.bump(ctx, tx, keys[k]); err != nil {
							return err
						}
					}
					return box.InvalidateTags(ctx, tx, "lists", group(g))
				})
				if err != nil {
					t.Error(err)
					return
				}
				time.Sleep(outage / time.Duration(writes/writers))
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	pending, _ := rowCount(t, db, table)
	t.Logf("%d tag writes committed in %v during a %v outage; %d rows pending at its end", writes, time.Since(start).Round(time.Millisecond), outage, pending)
	if pending == 0 {
		t.Fatal("no row pending at the end of the outage: was Redis cut at all?")
	}
	tg.blackhole(false)
	start = time.Now()
	defer func() { t.Logf("delivered %v after Redis came back", time.Since(start).Round(time.Millisecond)) }()
	waitFor(t, 60*time.Second, "every tag row to be delivered after the outage", func() bool {
		p, _ := rowCount(t, db, table)
		return p == 0
	})
	// Reads with the breaker open skip Redis: they would find nothing stale whether or not the
	// tags were delivered.
	waitFor(t, 30*time.Second, "the circuit breakers to close", func() bool {
		return !c1.Stats().BreakerOpen && !c2.Stats().BreakerOpen
	})
	if stale := staleKeys(t, tr, keys, c1, c2); len(stale) > 0 {
		t.Fatalf("%d stale reads at rest after the outage: %v", len(stale), stale)
	}
}

// Key rows (new and of the old format, written by hand) and tag rows of one cache, in one
// delivery, are delivered with one Invalidate and one InvalidateTags. When InvalidateTags
// fails, the key rows are deleted and the tag rows rescheduled, until it succeeds.
func TestMixedKeyAndTagRows(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	rec := new(recorder)
	writer := newBox(t, db, WithTable(table), WithCache("c", rec), noRelay())
	ctx := context.Background()
	for _, fn := range []func(tx *sql.Tx) error{
		func(tx *sql.Tx) error {
			if err := writer.Invalidate(ctx, tx, "c", "k1"); err != nil {
				return err
			}
			return writer.InvalidateTags(ctx, tx, "c", "t1", "t2")
		},
		func(tx *sql.Tx) error {
			if err := writer.InvalidateTags(ctx, tx, "c", "t3"); err != nil {
				return err
			}
			return writer.Invalidate(ctx, tx, "c", "k2", "k3")
		},
	} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := fn(tx); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`INSERT INTO ` + table + ` (cache, keys) VALUES ('c', '["k4"]')`); err != nil { // a row as older releases write them
		t.Fatal(err)
	}
	relay := newBox(t, db, WithTable(table), WithCache("c", rec), WithPollInterval(10*time.Millisecond))
	waitFor(t, 30*time.Second, "the relay to deliver every row", func() bool { p, parked := rowCount(t, db, table); return p == 0 && parked == 0 })
	keyCalls, tagCalls := rec.calls()
	if len(keyCalls) != 1 || len(tagCalls) != 1 {
		t.Fatalf("Invalidate calls %v, InvalidateTags calls %v; want one of each", keyCalls, tagCalls)
	}
	slices.Sort(keyCalls[0])
	slices.Sort(tagCalls[0])
	if strings.Join(keyCalls[0], ",") != "k1,k2,k3,k4" || strings.Join(tagCalls[0], ",") != "t1,t2,t3" {
		t.Fatalf("delivered keys %v and tags %v; want k1-k4 and t1-t3", keyCalls[0], tagCalls[0])
	}
	if s := relay.Stats(); s.Deliveries != 5 || s.Retries != 0 {
		t.Fatalf("Stats %+v; want 5 deliveries, no retry", s)
	}

	// InvalidateTags fails: the key row goes, the tag row stays and is retried.
	rec.failTags.Store(true)
	tries := rec.tagTries.Load()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.InvalidateTags(ctx, tx, "c", "t9"); err != nil {
		t.Fatal(err)
	}
	if err := writer.Invalidate(ctx, tx, "c", "k9"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	relay.Wake()
	waitFor(t, 30*time.Second, "two failed tag deliveries", func() bool { return rec.tagTries.Load() >= tries+2 })
	var left string
	var attempts int
	if err := db.QueryRow(`SELECT keys, attempts FROM `+table).Scan(&left, &attempts); err != nil {
		t.Fatalf("want exactly the tag row left: %v", err)
	}
	if left != `{"tags":["t9"]}` || attempts < 2 {
		t.Fatalf("row left: %s after %d attempts; want the tag row, tried at least twice", left, attempts)
	}
	keyCalls, _ = rec.calls()
	if len(keyCalls) != 2 || keyCalls[1][0] != "k9" {
		t.Fatalf("Invalidate calls %v; want k9 delivered once, on its own", keyCalls)
	}
	rec.failTags.Store(false)
	waitFor(t, 30*time.Second, "the tag row's delivery once InvalidateTags works", func() bool { p, _ := rowCount(t, db, table); return p == 0 })
	if _, tagCalls = rec.calls(); len(tagCalls) != 2 || tagCalls[1][0] != "t9" {
		t.Fatalf("InvalidateTags calls %v; want t9 delivered", tagCalls)
	}
	if s := relay.Stats(); s.Retries < 2 || s.Deliveries != 7 {
		t.Fatalf("Stats %+v; want at least 2 retries, 7 deliveries", s)
	}
}

// Bad input for tags: a cache without InvalidateTags, no tag or an empty one, an unknown cache,
// a closed outbox. A tag row of a cache this process registered without tag support (another
// process wrote it) is retried, never parked or dropped.
func TestTagsBadInput(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	keysOnly := Func(func(context.Context, ...string) error { return nil })
	ms := cacheaside.NewMemoryStore()
	t.Cleanup(func() { _ = ms.Close() })
	noIndex, err := cacheaside.New[string](struct{ cacheaside.Store }{ms}) // a store without TagStore
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = noIndex.Close() })
	box := newBox(t, db, WithTable(table), WithCache("keys-only", keysOnly), WithCache("tags", new(recorder)), WithCache("no-index", noIndex),
		WithPollInterval(10*time.Millisecond), WithRetryBackoff(10*time.Millisecond, 20*time.Millisecond), WithLogger(nil))
	ctx := context.Background()
	err = box.Do(ctx, nil, func(tx *sql.Tx) error {
		if err := box.InvalidateTags(ctx, tx, "keys-only", "t"); !errors.Is(err, ErrTagsUnsupported) || !strings.Contains(err.Error(), `"keys-only"`) {
			t.Errorf("cache without tags: %v", err)
		}
		if err := box.InvalidateTags(ctx, tx, "no-index", "t"); !errors.Is(err, ErrTagsUnsupported) || !strings.Contains(err.Error(), `"no-index"`) {
			t.Errorf("cache whose store indexes no tags: %v", err)
		}
		if err := box.InvalidateTags(ctx, tx, "tags"); !errors.Is(err, ErrNoTags) {
			t.Errorf("no tags: %v", err)
		}
		if err := box.InvalidateTags(ctx, tx, "tags", "a", ""); !errors.Is(err, ErrNoTags) {
			t.Errorf("empty tag: %v", err)
		}
		if err := box.InvalidateTags(ctx, tx, "nope", "t"); !errors.Is(err, ErrUnknownCache) {
			t.Errorf("unknown cache: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := box.TagStatements("keys-only", "t"); !errors.Is(err, ErrTagsUnsupported) {
		t.Errorf("TagStatements, cache without tags: %v", err)
	}
	if _, err := box.TagStatements("tags"); !errors.Is(err, ErrNoTags) {
		t.Errorf("TagStatements, no tags: %v", err)
	}
	for _, e := range []error{ErrNoTags, ErrTagsUnsupported} {
		if !strings.HasPrefix(e.Error(), "cacheaside: outbox: ") {
			t.Errorf("%q lacks the package's prefix", e)
		}
	}

	if _, err := db.Exec(`INSERT INTO ` + table + ` (cache, keys) VALUES ('keys-only', '{"tags":["t"]}')`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "two failed deliveries of the tag row", func() bool {
		var attempts int
		if err := db.QueryRow(`SELECT attempts FROM ` + table).Scan(&attempts); err != nil {
			t.Fatal(err)
		}
		return attempts >= 2
	})
	var lastErr string
	if err := db.QueryRow(`SELECT last_error FROM ` + table + ` WHERE parked_at IS NULL`).Scan(&lastErr); err != nil {
		t.Fatalf("the tag row is not pending: %v", err)
	}
	if !strings.Contains(lastErr, ErrTagsUnsupported.Error()) {
		t.Fatalf("last_error %q; want ErrTagsUnsupported's", lastErr)
	}

	box.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := box.InvalidateTags(ctx, tx, "tags", "t"); !errors.Is(err, ErrClosed) {
		t.Errorf("InvalidateTags after Close: %v", err)
	}
}

// oldDecode is how releases before InvalidateTags read a row (deliver, verbatim): an error
// parks the row.
func oldDecode(col string) ([]string, error) {
	var keys []string
	err := json.Unmarshal([]byte(col), &keys)
	if err == nil && (len(keys) == 0 || slices.Contains(keys, "")) {
		err = errors.New("no keys, or an empty key")
	}
	return keys, err
}

// A tag row cannot be taken for keys by a release that knows only key rows: its decoder fails
// (it parks the row). This release reads both forms, and parks what is neither.
func TestRowFormats(t *testing.T) {
	db := openDB(t)
	table := testTable(t, db)
	box := newBox(t, db, WithTable(table), WithCache("c", new(recorder)), noRelay())
	stmts, err := box.TagStatements("c", "product:42", "category:7")
	if err != nil {
		t.Fatal(err)
	}
	tagRow := stmts[0].Args[1].(string)
	if keys, err := oldDecode(tagRow); err == nil {
		t.Fatalf("the old decoder read the tag row %s as keys %q; it must fail (and park it)", tagRow, keys)
	}
	stmts, err = box.Statements("c", "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	keyRow := stmts[0].Args[1].(string)
	if keys, err := oldDecode(keyRow); err != nil || strings.Join(keys, ",") != "a,b" {
		t.Fatalf("the old decoder on a key row of this release: %q, %v", keys, err)
	}
	for col, want := range map[string]string{
		keyRow:                         "keys a,b",
		tagRow:                         "tags product:42,category:7",
		` {"tags": ["x"]} `:            "tags x",
		`["k"]`:                        "keys k",
		`{"tags":[]}`:                  "error",
		`{"tags":[""]}`:                "error",
		`{}`:                           "error",
		`{"tags":["x"],"patterns":[]}`: "error", // a form of a later release: parked, not half-delivered
		`{"tags":["x"]} {}`:            "error",
		`[]`:                           "error",
		`[""]`:                         "error",
		`not json`:                     "error",
	} {
		keys, tags, err := decode(col)
		got := "error"
		switch {
		case err != nil:
		case tags != nil:
			got = "tags " + strings.Join(tags, ",")
		default:
			got = "keys " + strings.Join(keys, ",")
		}
		if got != want {
			t.Errorf("decode(%s) = %s (%v), want %s", col, got, err, want)
		}
	}
}
