package cacheaside

import (
	"context"
	"time"
)

// waitMany waits for keys whose leases other processes hold (lks[i].Holder for keys[i]), all
// on one goroutine: one flight per key, joinable under its holder's lease as a single read's
// wait is, completed as soon as its key is settled. It polls the store for the keys still
// held in one round trip (per node), with the backoff of waitLease, never past the soonest
// lease expiry. Keys whose leases end without a value are leased by the poll and loaded with
// load, together (in chunks), like the keys a batch wins at once. Keys still held after a
// lease and a load's time are loaded without storing. gens are the keys' generations read
// before the caller's lookup, for the local cache. It returns nil after Close.
func (c *Cache[T]) waitMany(ctx context.Context, keys, sks []string, gens []uint64, lks []Lookup, load func(context.Context, []string) (map[string]T, error)) []*flight[T] {
	fks := make([]flightKey, len(keys))
	ttls := make([]time.Duration, len(keys))
	for i, lk := range lks {
		fks[i] = flightKey{sks[i], lk.Holder}
		ttls[i] = lk.HolderTTL
	}
	return c.flights.launchMany(ctx, fks, gens, 0, func(lctx context.Context, fs []*flight[T]) {
		c.pollMany(lctx, fs, keys, sks, ttls, load)
	})
}

// pollMany is waitMany's flight goroutine: it polls the keys still held until each is settled.
func (c *Cache[T]) pollMany(ctx context.Context, fs []*flight[T], keys, sks []string, ttls []time.Duration, load func(context.Context, []string) (map[string]T, error)) {
	giveUp := time.Now().Add(c.gw.leaseTTL + c.cfg.loadTimeout)
	pt := c.newPollTimer()
	defer pt.stop()
	idx := make([]int, len(fs)) // the keys still held
	for i := range idx {
		idx[i] = i
	}
	for len(idx) > 0 {
		soonest := time.Duration(0) // the soonest lease expiry of the keys still held
		for _, i := range idx {
			if ttls[i] > 0 && (soonest == 0 || ttls[i] < soonest) {
				soonest = ttls[i]
			}
		}
		if err := pt.sleep(ctx, soonest, nil); err != nil {
			for _, i := range idx {
				fs[i].err = err
			}
			return
		}

		tok := c.gw.tokens.next()
		qs := pick(sks, idx)
		lks, err := c.gw.pollHeld(ctx, qs, tok)
		if err != nil || len(lks) != len(qs) {
			for _, i := range idx {
				fs[i].retry = true // the store failed: callers read again, and go without it
			}
			c.gw.abandonMany(ctx, tok, qs, nil) // it may have granted leases all the same
			return
		}
		won, held := c.settlePolled(fs, keys, sks, ttls, idx, lks)
		if len(won) > 0 {
			wfs, wkeys, wsks := pick(fs, won), pick(keys, won), pick(sks, won)
			c.flights.joinAs(wfs, tokenKeys(wsks, tok))
			c.runChunksTagged(ctx, wfs, wkeys, wsks, tok, load, func(ctx context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, delta time.Duration) {
				c.settleMany(ctx, wfs[lo:hi], wkeys[lo:hi], wsks[lo:hi], tok, m, err, pe, delta)
			})
		}
		idx = held
		if len(idx) > 0 && time.Now().After(giveUp) {
			rfs, rkeys := pick(fs, idx), pick(keys, idx)
			c.stats.storeless.Add(1)
			c.runChunks(ctx, rfs, rkeys, load, func(_ context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, _ time.Duration) {
				setOutcome(rfs[lo:hi], rkeys[lo:hi], m, err, pe)
			})
			return
		}
	}
}

// settlePolled completes the flights fs[idx] whose keys the poll lks found with a value (or
// bad data: their callers read again), and returns the others: won (leased to the poll) and
// held (still leased by another process; ttls updated).
func (c *Cache[T]) settlePolled(fs []*flight[T], keys, sks []string, ttls []time.Duration, idx []int, lks []Lookup) (won, held []int) {
	var settled []*flight[T]
	for j, i := range idx {
		f := fs[i]
		switch lk := lks[j]; {
		case lk.Value != nil:
			v, h, ok := c.entries.decode(sks[i], lk.Value)
			switch {
			case !ok || c.fresh.judge(h) == expired:
				f.retry = true // bad data, or past its stale windows: callers read again, and replace it
			case h.NotFound():
				f.err = ErrNotFound
			default:
				f.val = v
			}
			if ok {
				c.l1.fill(keys[i], f.gen, v, lk.Value)
			}
			settled = append(settled, f)
		case lk.Granted:
			won = append(won, i)
		default:
			ttls[i] = lk.HolderTTL
			held = append(held, i)
		}
	}
	c.flights.finish(settled...)
	return won, held
}
