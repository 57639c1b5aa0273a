package cacheaside

// Waiting for another process's lease: a call that finds a key leased by a load it cannot
// join waits for that load's fill, polling the store with backoff and woken early by the fill
// itself (wake.go). Batches wait the same way, for many keys at once (batch_wait.go).

import (
	"context"
	"math/rand/v2"
	"time"
)

// joinOrWait returns the flight of holder's lease: this process's own if holder is one of its
// loads, else a new flight that waits for the holder's fill.
func (c *Cache[T]) joinOrWait(ctx context.Context, sk, holder string, holderTTL time.Duration, gen uint64, load func(context.Context) (T, error)) (f *flight[T], owner bool) {
	f, started := c.flights.joinOrLaunch(ctx, flightKey{sk, holder}, gen, c.gw.leaseTTL+2*c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		c.waitLease(lctx, f, sk, holderTTL, load)
	})
	if f != nil && !started {
		c.obs.coalesced(ctx, coalescedFlight)
	}
	return f, started
}

// waitLease polls the store, with backoff never past the holder's lease, until the key holds
// a value, or the lease is gone and this flight is granted its own (then it loads). A fill or
// release of the key published by the store (wake.go) ends a sleep at once. If the key stays
// leased for longer than a lease and a load together, it loads without storing.
func (c *Cache[T]) waitLease(ctx context.Context, f *flight[T], sk string, holderTTL time.Duration, load func(context.Context) (T, error)) {
	ctx, span := c.obs.leaseWaitStart(ctx, sk)
	defer endLeaseWait(span, f)
	giveUp := time.Now().Add(c.gw.leaseTTL + c.cfg.loadTimeout)
	backoff := c.cfg.leaseWaitMin
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	filled, unwatch := c.watchFills(sk) // wake.go: the fill wakes us; polling is the fallback
	defer unwatch()
	wake := filled()
	for {
		sleep := backoff
		if holderTTL > 0 && holderTTL+time.Millisecond < sleep {
			sleep = holderTTL + time.Millisecond
		}
		sleep = sleep/2 + rand.N(sleep/2+1) // jitter, so waiters of many processes spread out
		timer.Reset(sleep)
		select {
		case <-ctx.Done():
			f.err = ctx.Err()
			return
		case <-timer.C:
		case <-wake: // filled or released: read at once
			timer.Stop() // (Go 1.23 timers: Reset needs no drain)
		}
		backoff = min(backoff*2, c.cfg.leaseWaitMax)
		wake = filled() // before the read: a fill after it wakes the next sleep

		tok := c.gw.tokens.next()
		lk, err := c.gw.lookup(ctx, sk, tok)
		if err == nil && lk.Value != nil {
			v, h, ok := c.decode(sk, lk.Value)
			if ok && c.fresh.judge(h) != expired {
				c.l1.fillStored(sk, f.gen, v, lk.Value)
				f.val = v
				if h.NotFound() {
					f.err = ErrNotFound
				}
				return
			}
			lk, err = c.gw.leaseOver(ctx, sk, tok) // bad data, or past its stale windows: replace it
		}
		switch {
		case err != nil:
			f.retry = true             // the store failed: callers read again, and go without it
			c.gw.abandon(ctx, sk, tok) // it may have granted the lease all the same
			return
		case lk.Granted:
			c.flights.joinAs([]*flight[T]{f}, []flightKey{{sk, tok}})
			lctx, cancel := context.WithTimeout(ctx, c.cfg.loadTimeout)
			defer cancel()
			c.loadUnder(lctx, f, sk, tok, load)
			return
		}
		holderTTL = lk.HolderTTL
		if time.Now().After(giveUp) {
			c.stats.storeless.Add(1)
			lctx, cancel := context.WithTimeout(ctx, c.cfg.loadTimeout)
			defer cancel()
			lctx, obs := c.obs.loadStart(lctx, sk)
			defer obs.end()
			v, err, pe := callLoader(lctx, load)
			c.obs.loadDone(&obs, err, pe)
			f.val, f.err, f.panicked, f.loaded = v, err, pe, true
			return
		}
	}
}
