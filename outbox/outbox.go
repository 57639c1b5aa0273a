package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
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
// *cacheaside.Cache[T] implements it. An Invalidator that also has a method SupportsTags()
// bool (*cacheaside.Cache[T] has: whether its store indexes tags) and says false is refused
// too, when the invalidation is written: its deliveries could only fail. Any error of a
// delivery is taken as "try again later".
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
