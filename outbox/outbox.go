package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Invalidator is what the outbox delivers to: *cacheaside.Cache[T] implements it. Any error is
// taken as "try again later".
type Invalidator interface {
	Invalidate(ctx context.Context, keys ...string) error
}

// TagInvalidator is what the outbox delivers tag invalidations to: an Invalidator registered
// with WithCache must also implement it for InvalidateTags to accept its name.
// *cacheaside.Cache[T] implements it (its store must support tags, else each delivery fails
// and is retried). Any error is taken as "try again later".
type TagInvalidator interface {
	InvalidateTags(ctx context.Context, tags ...string) error
}

var (
	// ErrClosed is returned by Do and Invalidate after Close.
	ErrClosed = errors.New("cacheaside: outbox: closed")
	// ErrUnknownCache is wrapped by the error of Invalidate for a cache name no WithCache
	// registered.
	ErrUnknownCache = errors.New("cacheaside: outbox: unknown cache")
	// ErrNoKeys is returned by Invalidate given no key, or an empty one.
	ErrNoKeys = errors.New("cacheaside: outbox: no keys")
	// ErrNoTags is returned by InvalidateTags given no tag, or an empty one.
	ErrNoTags = errors.New("cacheaside: outbox: no tags")
	// ErrTagsUnsupported is wrapped by the error of InvalidateTags for a cache whose
	// registered Invalidator does not implement TagInvalidator.
	ErrTagsUnsupported = errors.New("cacheaside: outbox: the cache does not support tags")
	// ErrInvalidOption is wrapped by the error of New for an invalid option.
	ErrInvalidOption = errors.New("cacheaside: outbox: invalid option")
)

// Outbox writes invalidations into the caller's transactions and delivers them after commit.
// It is safe for concurrent use. Its relay runs from New until Close.
type Outbox struct {
	db  *sql.DB
	cfg config
	q   queries

	mu  sync.Mutex
	own map[*sql.Tx]*[]row // transactions run by Do: the rows they wrote

	// down holds, per cache, until when (Unix nanoseconds) Do leaves its rows to the relay
	// instead of waiting on a store that is likely still unreachable: one poll interval after
	// each failed delivery. A success clears it.
	down map[string]*atomic.Int64

	closed atomic.Bool
	stop   context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}

	deliveries, retries, parks atomic.Uint64
	pending, parked, lagNanos  atomic.Int64
	lastLagLog                 time.Time // relay goroutine only
	lastErrLog                 time.Time // relay goroutine only

	prom *collector
}

// Stats is a snapshot of an Outbox's counters. Pending, Parked and Lag are as of the relay's
// last look at the table (once per poll interval) and cover every cache's rows, not only
// this process's; Deliveries, Retries and Parks count this process's work since New.
type Stats struct {
	Pending    int64         // rows not yet delivered (parked ones excluded)
	Parked     int64         // rows kept aside because they could not be decoded
	Lag        time.Duration // age of the oldest pending row; 0 if none
	Deliveries uint64        // rows delivered and deleted (by Do or by the relay)
	Retries    uint64        // row deliveries that failed and were rescheduled
	Parks      uint64        // rows this process parked
}

// Stats returns the outbox's counters.
func (b *Outbox) Stats() Stats {
	return Stats{
		Pending:    b.pending.Load(),
		Parked:     b.parked.Load(),
		Lag:        time.Duration(b.lagNanos.Load()),
		Deliveries: b.deliveries.Load(),
		Retries:    b.retries.Load(),
		Parks:      b.parks.Load(),
	}
}

// New returns an Outbox on db, a PostgreSQL database, creating the table and its index if
// missing (Schema), and starts its relay. At least one WithCache is required. It returns an
// error wrapping ErrInvalidOption for an invalid option.
func New(db *sql.DB, opts ...Option) (*Outbox, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", ErrInvalidOption)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			cfg.invalid("nil option")
			continue
		}
		o(&cfg)
	}
	if len(cfg.caches) == 0 && len(cfg.errs) == 0 {
		cfg.invalid("no cache: register at least one with WithCache")
	}
	if len(cfg.errs) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalidOption, strings.Join(cfg.errs, "; "))
	}
	b := &Outbox{db: db, cfg: cfg, own: make(map[*sql.Tx]*[]row), wake: make(chan struct{}, 1)}
	b.q = newQueries(cfg.table, slices.Sorted(mapKeys(cfg.caches)))
	b.down = make(map[string]*atomic.Int64, len(cfg.caches))
	for name := range cfg.caches {
		b.down[name] = new(atomic.Int64)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.createTable(ctx); err != nil {
		return nil, err
	}
	if cfg.reg != nil {
		b.prom = newCollector(b)
		if err := cfg.reg.Register(b.prom); err != nil {
			return nil, fmt.Errorf("cacheaside: outbox: prometheus: registering the metrics of table %q: %w", cfg.table, err)
		}
	}
	life, stop := context.WithCancel(context.Background())
	b.stop = stop
	if !cfg.noRelay {
		b.wg.Add(1)
		go b.relay(life)
	}
	return b, nil
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// createTable runs Schema, once more if two processes raced to create the table.
func (b *Outbox) createTable(ctx context.Context) error {
	var err error
	for range 2 {
		if _, err = b.db.ExecContext(ctx, Schema(b.cfg.table)); err == nil {
			return nil
		}
	}
	return fmt.Errorf("cacheaside: outbox: creating table %s: %w", b.cfg.table, err)
}

// Schema returns the SQL that creates the outbox table named table and its index if they are
// missing, as New runs it: for a migration tool.
func Schema(table string) string {
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %[1]s (
	id              bigserial   PRIMARY KEY,
	cache           text        NOT NULL,
	keys            text        NOT NULL, -- a JSON array of keys, or {"tags": [...]}
	created_at      timestamptz NOT NULL DEFAULT now(),
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	attempts        integer     NOT NULL DEFAULT 0,
	last_error      text,
	parked_at       timestamptz -- set on a row that cannot be decoded: kept, never retried
);
CREATE INDEX IF NOT EXISTS %[1]s_due ON %[1]s (next_attempt_at) WHERE parked_at IS NULL;`, table)
}

// Close stops the relay and waits for it. Rows not yet delivered stay in the table for the
// next relay. Do and Invalidate return ErrClosed afterwards. Close is idempotent.
func (b *Outbox) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.stop()
	b.wg.Wait()
	if b.prom != nil {
		b.cfg.reg.Unregister(b.prom)
	}
	return nil
}

// Table is the outbox table's name, which is also the channel of WithNotify's NOTIFY.
func (b *Outbox) Table() string { return b.cfg.table }

// Statements returns the statements Invalidate runs in a transaction of your own (not Do's),
// with their arguments, for a transaction of another API than database/sql (package pgxoutbox
// runs them on a pgx.Tx): an INSERT of the row, due at once, and, with WithNotify, the
// NOTIFY. It returns the errors Invalidate returns for bad input.
func (b *Outbox) Statements(cache string, keys ...string) ([]Statement, error) {
	payload, err := b.encode(cache, keys)
	if err != nil {
		return nil, err
	}
	return b.statements(cache, payload), nil
}

// TagStatements is Statements for InvalidateTags: the statements that write a row naming tags
// of cache, for a transaction of another API than database/sql (pgxoutbox.InvalidateTags). It
// returns the errors InvalidateTags returns for bad input.
func (b *Outbox) TagStatements(cache string, tags ...string) ([]Statement, error) {
	payload, err := b.encodeTags(cache, tags)
	if err != nil {
		return nil, err
	}
	return b.statements(cache, payload), nil
}

func (b *Outbox) statements(cache string, payload []byte) []Statement {
	out := []Statement{{SQL: b.q.insert, Args: []any{cache, string(payload), 0.0}}}
	if b.cfg.notify {
		out = append(out, Statement{SQL: b.q.notify})
	}
	return out
}

// encode checks Invalidate's input and returns the row's keys column: a JSON array of keys,
// the format of every release.
func (b *Outbox) encode(cache string, keys []string) ([]byte, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if len(keys) == 0 || slices.Contains(keys, "") {
		return nil, ErrNoKeys
	}
	if b.cfg.caches[cache] == nil {
		return nil, fmt.Errorf("%w %q: register it with WithCache", ErrUnknownCache, cache)
	}
	payload, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("cacheaside: outbox: encoding keys: %w", err)
	}
	return payload, nil
}

// tagPayload is a tag row's keys column: a JSON object, so that a release that knows only key
// rows (a JSON array) fails to decode it and parks it rather than delivering tags as keys.
type tagPayload struct {
	Tags []string `json:"tags"`
}

// encodeTags checks InvalidateTags' input and returns the row's keys column.
func (b *Outbox) encodeTags(cache string, tags []string) ([]byte, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if len(tags) == 0 || slices.Contains(tags, "") {
		return nil, ErrNoTags
	}
	inv := b.cfg.caches[cache]
	if inv == nil {
		return nil, fmt.Errorf("%w %q: register it with WithCache", ErrUnknownCache, cache)
	}
	if _, ok := inv.(TagInvalidator); !ok {
		return nil, fmt.Errorf("%w: cache %q: %T has no InvalidateTags method", ErrTagsUnsupported, cache, inv)
	}
	payload, err := json.Marshal(tagPayload{Tags: tags})
	if err != nil {
		return nil, fmt.Errorf("cacheaside: outbox: encoding tags: %w", err)
	}
	return payload, nil
}

// decode reads a row's keys column: a JSON array of keys, or an object {"tags": [...]}. A
// row of neither form (or of a form a later release added), or with no key or tag or an empty
// one, is an error: the row is parked.
func decode(col string) (keys, tags []string, err error) {
	if s := strings.TrimLeft(col, " \t\r\n"); s != "" && s[0] == '{' {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		var p tagPayload
		if err := dec.Decode(&p); err != nil {
			return nil, nil, err
		}
		if dec.More() {
			return nil, nil, errors.New("trailing data after the tags")
		}
		if len(p.Tags) == 0 || slices.Contains(p.Tags, "") {
			return nil, nil, errors.New("no tags, or an empty tag")
		}
		return nil, p.Tags, nil
	}
	if err := json.Unmarshal([]byte(col), &keys); err != nil {
		return nil, nil, err
	}
	if len(keys) == 0 || slices.Contains(keys, "") {
		return nil, nil, errors.New("no keys, or an empty key")
	}
	return keys, nil, nil
}

// Statement is one SQL statement and its arguments ($1, $2, ... placeholders).
type Statement struct {
	SQL  string
	Args []any
}

// Wake makes the relay look for due rows now instead of at its next poll. It never blocks.
// Call it after committing a transaction of your own in which you called Invalidate, to have
// the row delivered without waiting for the poll interval (Do needs no such call).
func (b *Outbox) Wake() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Invalidate writes into tx a row naming keys of the cache registered as cache. The keys are
// invalidated at least once after tx commits, never if it rolls back.
//
// Inside Do, tx's rows are delivered by Do right after the commit, in the caller's goroutine.
// In a transaction of your own, they are delivered by a relay at its next poll
// (WithPollInterval), or at once after Wake.
//
// It returns ErrNoKeys for no key or an empty one, an error wrapping ErrUnknownCache for a
// name no WithCache registered, ErrClosed after Close, and the database's error otherwise (tx
// is then in a failed state, as after any failed statement).
func (b *Outbox) Invalidate(ctx context.Context, tx *sql.Tx, cache string, keys ...string) error {
	payload, err := b.encode(cache, keys)
	if err != nil {
		return err
	}
	return b.write(ctx, tx, cache, payload)
}

// InvalidateTags writes into tx a row naming tags of the cache registered as cache: after tx
// commits, every entry tagged with one of them is invalidated at least once, through the
// cache's InvalidateTags (TagInvalidator); never if tx rolls back. Delivery is as for
// Invalidate: by Do right after the commit, else by a relay; rows of keys and of tags of one
// cache in one delivery are delivered with one Invalidate and one InvalidateTags, and each row
// is deleted only once its own delivery succeeded.
//
// It returns ErrNoTags for no tag or an empty one, an error wrapping ErrTagsUnsupported for a
// cache whose Invalidator does not implement TagInvalidator, and otherwise the errors of
// Invalidate. A release of this package older than InvalidateTags parks a tag row (it cannot
// decode it) instead of delivering it: upgrade every process that runs a relay on the table
// before writing tag rows.
func (b *Outbox) InvalidateTags(ctx context.Context, tx *sql.Tx, cache string, tags ...string) error {
	payload, err := b.encodeTags(cache, tags)
	if err != nil {
		return err
	}
	return b.write(ctx, tx, cache, payload)
}

// write inserts a row of cache with payload into tx, claimed for Do's delivery if tx is Do's.
func (b *Outbox) write(ctx context.Context, tx *sql.Tx, cache string, payload []byte) error {
	if tx == nil {
		return errors.New("cacheaside: outbox: nil transaction")
	}
	b.mu.Lock()
	ids := b.own[tx]
	b.mu.Unlock()
	if ids == nil || time.Now().UnixNano() < b.down[cache].Load() {
		// Due now: the relay takes it after the commit (and Do wakes it).
		if _, err := tx.ExecContext(ctx, b.q.insert, cache, string(payload), 0.0); err != nil {
			return fmt.Errorf("cacheaside: outbox: insert: %w", err)
		}
		if b.cfg.notify && ids == nil {
			if _, err := tx.ExecContext(ctx, b.q.notify); err != nil {
				return fmt.Errorf("cacheaside: outbox: notify: %w", err)
			}
		}
		if ids != nil {
			b.mu.Lock()
			*ids = append(*ids, row{id: -1}) // for the relay: Do wakes it
			b.mu.Unlock()
		}
		return nil
	}
	// Claimed by Do for a lease: Do delivers it after the commit; if this process dies first,
	// a relay takes it when the lease ends.
	var id int64
	if err := tx.QueryRowContext(ctx, b.q.insertReturning, cache, string(payload), b.cfg.lease.Seconds()).Scan(&id); err != nil {
		return fmt.Errorf("cacheaside: outbox: insert: %w", err)
	}
	b.mu.Lock()
	*ids = append(*ids, row{id: id, cache: cache, keys: string(payload)})
	b.mu.Unlock()
	return nil
}

// Do runs fn in a transaction on the outbox's database and commits it if fn returns nil (it
// rolls back if fn returns an error or panics, and returns fn's error or re-panics). After the
// commit it delivers the rows fn wrote with Invalidate at once, in the caller's goroutine, so
// that when Do returns nil a read that starts then does not see the old values, as with a
// plain Invalidate after commit. If that delivery fails (the store is unreachable), Do still
// returns nil: the commit stands, and the relay delivers the rows when the store answers. The
// delivery is bounded by one second or half the lease (WithLease), whichever is less, and runs even if ctx ends after the
// commit. For one poll interval (WithPollInterval) after a delivery to a cache failed (its
// store is likely still down), Do does not wait on that store again: it leaves the cache's
// rows to the relay, so that writes do not slow down during an outage. opts are as for
// sql.DB.BeginTx.
func (b *Outbox) Do(ctx context.Context, opts *sql.TxOptions, fn func(tx *sql.Tx) error) (err error) {
	if b.closed.Load() {
		return ErrClosed
	}
	tx, err := b.db.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("cacheaside: outbox: begin: %w", err)
	}
	ids := new([]row)
	b.mu.Lock()
	b.own[tx] = ids
	b.mu.Unlock()
	committed := false
	defer func() {
		b.mu.Lock()
		delete(b.own, tx)
		b.mu.Unlock()
		if !committed {
			_ = tx.Rollback()
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		committed = true // nothing to roll back
		return fmt.Errorf("cacheaside: outbox: commit: %w", err)
	}
	committed = true
	b.mu.Lock()
	rows := slices.Clone(*ids)
	b.mu.Unlock()
	if b.cfg.noDeliver {
		return nil
	}
	n := len(rows)
	rows = slices.DeleteFunc(rows, func(r row) bool { return r.id < 0 })
	if len(rows) < n {
		b.Wake()
	}
	if len(rows) == 0 {
		return nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(b.cfg.lease/2, inlineDelivery))
	defer cancel()
	b.deliver(dctx, rows)
	return nil
}

// inlineDelivery bounds the delivery Do makes after its commit: a write must not wait long on
// a sick store (cacheaside's Invalidate retries for up to 10 s); the relay delivers what it
// could not.
const inlineDelivery = time.Second

// row is an outbox row claimed for delivery.
type row struct {
	id       int64
	cache    string
	keys     string
	attempts int
}

// queries are the outbox's SQL statements for one table and set of caches.
type queries struct {
	insert, insertReturning string
	notify                  string
	claim, del, retry, park string
	stats                   string
	nCaches                 int
}

func newQueries(t string, caches []string) queries {
	ph := make([]string, len(caches))
	for i := range caches {
		ph[i] = "$" + strconv.Itoa(i+3)
	}
	return queries{
		// clock_timestamp, not now() (the transaction's start): a claim counts from the insert.
		insert:          `INSERT INTO ` + t + ` (cache, keys, next_attempt_at) VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))`,
		notify:          `SELECT pg_notify('` + t + `', '')`,
		insertReturning: `INSERT INTO ` + t + ` (cache, keys, next_attempt_at) VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) RETURNING id`,
		// Claim due rows of this process's caches: push their next attempt one lease away, so
		// that no other relay takes them while this one delivers.
		claim: `UPDATE ` + t + ` SET next_attempt_at = now() + make_interval(secs => $1), attempts = attempts + 1
WHERE id IN (SELECT id FROM ` + t + ` WHERE parked_at IS NULL AND next_attempt_at <= now() AND cache IN (` + strings.Join(ph, ", ") + `)
	ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING id, cache, keys, attempts`,
		del: `DELETE FROM ` + t + ` WHERE id = ANY($1::bigint[])`,
		retry: `UPDATE ` + t + ` SET last_error = $1,
	next_attempt_at = now() + make_interval(secs => least($3::float8, $2::float8 * power(2, least(greatest(attempts, 1), 30) - 1)) * (0.75 + random() / 4))
WHERE id = ANY($4::bigint[])`,
		park: `UPDATE ` + t + ` SET parked_at = now(), last_error = $1 WHERE id = $2`,
		stats: `SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL),
	COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL)), 0)::float8 FROM ` + t,
		nCaches: len(caches),
	}
}

// idArray renders ids as a PostgreSQL array literal, a text parameter every driver sends.
func idArray(ids []int64) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for i, id := range ids {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatInt(id, 10))
	}
	sb.WriteByte('}')
	return sb.String()
}

func (b *Outbox) queryRows(ctx context.Context, q string, args ...any) ([]row, error) {
	rs, err := b.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []row
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.id, &r.cache, &r.keys, &r.attempts); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// claim takes up to a batch of due rows of this process's caches.
func (b *Outbox) claim(ctx context.Context) ([]row, error) {
	args := make([]any, 0, 2+b.q.nCaches)
	args = append(args, b.cfg.lease.Seconds(), b.cfg.batch)
	for _, c := range slices.Sorted(mapKeys(b.cfg.caches)) {
		args = append(args, c)
	}
	return b.queryRows(ctx, b.q.claim, args...)
}

// deliver invalidates claimed rows, grouped by cache: one Invalidate for the key rows of a
// cache, one InvalidateTags for its tag rows. It deletes the rows whose call succeeded and
// reschedules the others with backoff. Rows that do not decode are parked. It returns the
// number of rows delivered.
func (b *Outbox) deliver(ctx context.Context, rows []row) int {
	type part struct {
		ids   []int64
		names []string // keys, or tags
	}
	type group struct{ keys, tags part }
	groups := make(map[string]*group)
	var order []string
	for _, r := range rows {
		keys, tags, err := decode(r.keys)
		if err != nil {
			b.park(ctx, r, err)
			continue
		}
		g := groups[r.cache]
		if g == nil {
			g = &group{}
			groups[r.cache] = g
			order = append(order, r.cache)
		}
		if tags != nil {
			g.tags.ids = append(g.tags.ids, r.id)
			g.tags.names = append(g.tags.names, tags...)
		} else {
			g.keys.ids = append(g.keys.ids, r.id)
			g.keys.names = append(g.keys.names, keys...)
		}
	}
	delivered := 0
	for _, name := range order {
		g := groups[name]
		inv := b.cfg.caches[name]
		failed := false
		if len(g.keys.ids) > 0 {
			err := invalidate(ctx, inv, g.keys.names)
			delivered += b.settle(ctx, g.keys.ids, err)
			failed = err != nil
		}
		if len(g.tags.ids) > 0 {
			err := invalidateTags(ctx, name, inv, g.tags.names)
			delivered += b.settle(ctx, g.tags.ids, err)
			failed = failed || err != nil
		}
		if failed {
			b.down[name].Store(time.Now().Add(b.cfg.poll).UnixNano())
		} else {
			b.down[name].Store(0)
		}
	}
	return delivered
}

// settle deletes the rows ids if their delivery succeeded (err nil), else reschedules them
// with backoff; it returns the number of rows delivered.
func (b *Outbox) settle(ctx context.Context, ids []int64, err error) int {
	if err == nil {
		// Delivered: delete. If the delete fails the rows come back after their lease and
		// are delivered again, which at-least-once allows.
		if _, derr := b.db.ExecContext(ctx, b.q.del, idArray(ids)); derr != nil {
			b.logErr("deleting delivered rows", derr)
		}
		b.deliveries.Add(uint64(len(ids)))
		return len(ids)
	}
	b.retries.Add(uint64(len(ids)))
	msg := err.Error()
	if len(msg) > 512 {
		msg = msg[:512]
	}
	// Reschedule on a context of its own: ctx may be what ran out.
	rctx, cancel := context.WithTimeout(context.Background(), b.cfg.lease/2)
	_, rerr := b.db.ExecContext(rctx, b.q.retry, msg, b.cfg.retryMin.Seconds(), b.cfg.retryMax.Seconds(), idArray(ids))
	cancel()
	if rerr != nil {
		b.logErr("rescheduling rows", rerr) // they come back after their lease
	}
	return 0
}

// invalidate calls inv, turning a panic into an error so that one bad Invalidator cannot kill
// the relay.
func invalidate(ctx context.Context, inv Invalidator, keys []string) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("Invalidate panicked: %v", p)
		}
	}()
	return inv.Invalidate(ctx, keys...)
}

// invalidateTags calls inv's InvalidateTags, as invalidate does Invalidate. An Invalidator
// without it (this process registered under cache another type than the process that wrote
// the row) is a failure like any other: the row is retried, by this process or one whose
// cache supports tags, never dropped.
func invalidateTags(ctx context.Context, cache string, inv Invalidator, tags []string) (err error) {
	ti, ok := inv.(TagInvalidator)
	if !ok {
		return fmt.Errorf("%w: cache %q: %T has no InvalidateTags method", ErrTagsUnsupported, cache, inv)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("InvalidateTags panicked: %v", p)
		}
	}()
	return ti.InvalidateTags(ctx, tags...)
}

// park keeps a row that cannot be decoded aside: never retried, never deleted.
func (b *Outbox) park(ctx context.Context, r row, cause error) {
	b.parks.Add(1)
	if l := b.cfg.logger; l != nil {
		l.LogAttrs(context.Background(), slog.LevelError, "cacheaside: outbox: row cannot be decoded; parked (kept, not retried)",
			slog.String("table", b.cfg.table), slog.Int64("id", r.id), slog.String("cache", r.cache), slog.String("error", cause.Error()))
	}
	if _, err := b.db.ExecContext(ctx, b.q.park, "cannot decode the row: "+cause.Error(), r.id); err != nil {
		b.logErr("parking a row", err) // it comes back after its lease, and is parked then
	}
}

// logErr logs a database failure of the relay, at most once per 10 seconds.
func (b *Outbox) logErr(what string, err error) {
	l := b.cfg.logger
	if l == nil {
		return
	}
	b.mu.Lock()
	now := time.Now()
	skip := now.Sub(b.lastErrLog) < 10*time.Second
	if !skip {
		b.lastErrLog = now
	}
	b.mu.Unlock()
	if !skip {
		l.LogAttrs(context.Background(), slog.LevelWarn, "cacheaside: outbox: "+what+" failed; will retry",
			slog.String("table", b.cfg.table), slog.String("error", err.Error()))
	}
}

// relay delivers due rows until ctx ends: a batch at a time while batches come back full,
// then waits for the poll interval or Wake. It refreshes Stats' table figures once per poll
// interval.
func (b *Outbox) relay(ctx context.Context) {
	defer b.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var nextStats time.Time
	for {
		if now := time.Now(); !now.Before(nextStats) {
			b.refreshStats(ctx)
			nextStats = now.Add(b.cfg.poll)
		}
		full := b.pass(ctx)
		if ctx.Err() != nil {
			return
		}
		if full {
			continue
		}
		timer.Reset(b.cfg.poll)
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// pass claims and delivers one batch; it reports whether the batch was full.
func (b *Outbox) pass(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, b.cfg.lease/2)
	defer cancel()
	rows, err := b.claim(cctx)
	if err != nil {
		if ctx.Err() == nil {
			b.logErr("claiming rows", err)
		}
		return false
	}
	if len(rows) == 0 {
		return false
	}
	b.deliver(cctx, rows)
	return len(rows) == b.cfg.batch
}

// refreshStats reads the table's figures, and warns when the lag passes its threshold.
func (b *Outbox) refreshStats(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, b.cfg.lease/2)
	defer cancel()
	var pending, parked int64
	var lag float64
	if err := b.db.QueryRowContext(qctx, b.q.stats).Scan(&pending, &parked, &lag); err != nil {
		if ctx.Err() == nil {
			b.logErr("reading the table's figures", err)
		}
		return
	}
	b.pending.Store(pending)
	b.parked.Store(parked)
	d := time.Duration(lag * float64(time.Second))
	b.lagNanos.Store(int64(d))
	if b.cfg.lagWarn > 0 && d > b.cfg.lagWarn && b.cfg.logger != nil && time.Since(b.lastLagLog) >= DefaultLagWarningEvery {
		b.lastLagLog = time.Now()
		b.cfg.logger.LogAttrs(context.Background(), slog.LevelWarn, "cacheaside: outbox: invalidations are lagging; is the store reachable, and does a process register every cache of the table?",
			slog.String("table", b.cfg.table), slog.Duration("lag", d), slog.Int64("pending", pending), slog.Duration("threshold", b.cfg.lagWarn))
	}
}
