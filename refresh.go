package cacheaside

// Background refreshes (early refresh and stale-while-revalidate; the decision is xfetch.go's).
//
// A background refresh takes the key's lease over the present value (one refresh across all
// processes; a second one is refused while the lease lives) and goes ahead only if the store
// still holds the very entry that triggered it, so a refresh that lost the race to another
// one's fill does not load again. It loads and fills under the lease like any other load,
// so an Invalidate during it voids its fill. A process runs at most one refresh per key, and
// none for a while after one failed (refresh_backoff.go).

import (
	"bytes"
	"context"
	"errors"
	"time"
)

// refreshMarker is the flight token under which a refresh is registered from its start: no
// lease token ever equals it, so no caller joins it, and a second refresh of the key in this
// process finds it and does not start. Once granted its lease, the refresh is registered
// under the lease's token too, joinable like any load.
const refreshMarker = "\x00refresh"

// refreshes returns how many background refreshes are running (tests).
func (c *Cache[T]) refreshes() int { return c.flights.count(refreshMarker) }

// refreshReq is one key of a batch to refresh: what refresh takes for a single key.
type refreshReq struct {
	key   string
	sk    string // prefix + key
	gen   uint64
	seen  []byte
	early bool
}

// refresh reloads key in the background with load, unless this process is refreshing it
// already. seen is the stored entry the caller was served; early says it had not expired
// yet; gen is the key's generation read before the store showed seen (so the refreshed
// value may enter the local cache, if no invalidation came since). The load runs on ctx
// detached from its cancellation (the caller leaves at once), bounded by the load timeout
// and stopped by Close.
func (c *Cache[T]) refresh(ctx context.Context, key string, gen uint64, seen []byte, early bool, load func(context.Context) (T, error)) {
	sk := c.cfg.prefix + key
	if !c.gw.breaker.Allow() || !c.fresh.refreshAllowed(sk) { // refresh_backoff.go
		return // a sick store (an L1 hit can get here with the breaker open), or a recent failure
	}
	c.flights.joinOrLaunch(ctx, flightKey{sk, refreshMarker}, gen, c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		c.refreshUnder(lctx, f, sk, seen, early, load)
	})
}

// refreshUnder takes sk's lease over its value and, if the store still holds seen, loads and
// fills under it. Once the lease is granted the flight is joinable under it, like any load.
func (c *Cache[T]) refreshUnder(ctx context.Context, f *flight[T], sk string, seen []byte, early bool, load func(context.Context) (T, error)) {
	tok := c.gw.tokens.next()
	lk, err := c.gw.leaseOver(ctx, sk, tok)
	switch {
	case err != nil && ctx.Err() == nil:
		// The store failed, or only timed out: it may have granted the lease all the same.
		// Free it rather than leave the key leased, for every process, until the lease TTL.
		_, _ = c.gw.release(ctx, sk, tok)
		return
	case err != nil || !lk.Granted:
		return // closing, or another process is refreshing it
	}
	// Only the lease holder fills and Delete voids the lease, so what the store holds now
	// stays until this fill or an Invalidate. Anything but seen means another refresh filled
	// the key since the caller read it, or it was removed: nothing to do.
	cur, err := storeCall(c.gw, context.WithoutCancel(ctx), opGetOrLease, func(ctx context.Context) (Lookup, error) {
		return c.gw.store.GetOrLease(ctx, sk, tok, c.gw.leaseTTL)
	})
	if err != nil || !bytes.Equal(cur.Value, seen) {
		_, _ = c.gw.release(ctx, sk, tok)
		return
	}
	c.flights.joinAs([]*flight[T]{f}, []flightKey{{sk, tok}})
	c.fresh.refreshes.Add(1)
	if early {
		c.obs.earlyRefresh()
	}
	c.loadUnder(ctx, f, sk, tok, load)
	if f.panicked != nil || (f.err != nil && !errors.Is(f.err, ErrNotFound)) {
		c.fresh.refreshFailed(sk) // a successful fill clears it (settle)
	}
}

// refreshMany is refresh for the keys of one batch, together, with the batch loader: one lease
// round trip (per node) for all of them, one read to check that the store still holds what
// each caller saw, and one load (in chunks, WithBatchLoadSize) of the keys still to refresh,
// filled in one round trip. Keys this process is refreshing already, and keys whose refreshes
// are backed off, are left out. The caller does not wait for it.
func (c *Cache[T]) refreshMany(ctx context.Context, reqs []refreshReq, load func(context.Context, []string) (map[string]T, error)) {
	if !c.gw.breaker.Allow() {
		return // as in refresh
	}
	fks := make([]flightKey, 0, len(reqs))
	gens := make([]uint64, 0, len(reqs))
	allowed := reqs[:0:0]
	for _, r := range reqs {
		if c.fresh.refreshAllowed(r.sk) { // refresh_backoff.go
			fks = append(fks, flightKey{r.sk, refreshMarker})
			gens = append(gens, r.gen)
			allowed = append(allowed, r)
		}
	}
	if len(allowed) == 0 {
		return
	}
	c.flights.launchFree(ctx, fks, gens, 0, func(lctx context.Context, fs []*flight[T], idx []int) {
		c.refreshManyUnder(lctx, fs, pick(allowed, idx), load)
	})
}

// refreshManyUnder is refreshUnder for the keys of reqs, whose flights are fs, under one
// token: loaded together, each settled with its chunk. lctx ends only with Close; each chunk
// has its own load timeout.
func (c *Cache[T]) refreshManyUnder(ctx context.Context, fs []*flight[T], reqs []refreshReq, load func(context.Context, []string) (map[string]T, error)) {
	tok := c.gw.tokens.next()
	sks := make([]string, len(reqs))
	for i, r := range reqs {
		sks[i] = r.sk
	}
	lks, err := c.gw.leaseOverMany(ctx, sks, tok)
	if err != nil {
		if ctx.Err() == nil {
			_, _ = c.gw.releaseMany(ctx, tok, sks) // as in refreshUnder
		}
		return
	}
	var granted, skipped []int // skipped: being refreshed by another process, or replaced since
	for i, lk := range lks {
		if lk.Granted {
			granted = append(granted, i)
		} else {
			skipped = append(skipped, i)
		}
	}
	if len(granted) == 0 {
		return
	}
	// As in refreshUnder: a key that no longer holds what its caller saw was refreshed or
	// removed since; it is left alone.
	gsks := pick(sks, granted)
	cur, err := c.gw.getOrLeaseMany(ctx, gsks, tok)
	if err != nil {
		_, _ = c.gw.releaseMany(ctx, tok, gsks)
		return
	}
	var same, replaced []int
	for j, i := range granted {
		if bytes.Equal(cur[j].Value, reqs[i].seen) {
			same = append(same, i)
		} else {
			replaced = append(replaced, i)
		}
	}
	_, _ = c.gw.releaseMany(ctx, tok, pick(sks, replaced))
	c.flights.finish(pick(fs, append(skipped, replaced...))...) // a later hit may refresh them again
	if len(same) == 0 {
		return
	}
	rfs, rsks := pick(fs, same), pick(sks, same)
	rkeys := make([]string, len(same))
	for j, i := range same {
		rkeys[j] = reqs[i].key
	}
	c.flights.joinAs(rfs, tokenKeys(rsks, tok))
	for _, i := range same {
		c.fresh.refreshes.Add(1)
		if reqs[i].early {
			c.obs.earlyRefresh()
		}
	}
	c.runChunksTagged(ctx, rfs, rkeys, rsks, tok, load, func(ctx context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, delta time.Duration) {
		c.settleMany(ctx, rfs[lo:hi], rkeys[lo:hi], rsks[lo:hi], tok, m, err, pe, delta)
		if pe != nil || (err != nil && !errors.Is(err, ErrNotFound)) {
			for _, sk := range rsks[lo:hi] {
				c.fresh.refreshFailed(sk) // a successful fill clears it (settleMany)
			}
		}
	})
}
