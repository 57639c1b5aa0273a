package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

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
