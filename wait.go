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
	pt := c.newPollTimer()
	defer pt.stop()
	filled, unwatch := c.wakes.watch(sk) // wake.go: the fill wakes us; polling is the fallback
	defer unwatch()
	wake := filled()
	for {
		if err := pt.sleep(ctx, holderTTL, wake); err != nil {
			f.err = err
			return
		}
		wake = filled() // before the read: a fill after it wakes the next sleep
		var settled bool
		if holderTTL, settled = c.pollLease(ctx, f, sk, load); settled {
			return
		}
		if time.Now().After(giveUp) {
			c.loadUnstored(ctx, f, sk, load)
			return
		}
	}
}

// pollLease reads a waited-for key once. It reports settled when f has its outcome: the
// key's value, a load under the lease this read was granted (run before it returns), or a
// store failure (callers read again). Otherwise the key is still leased, for holderTTL.
func (c *Cache[T]) pollLease(ctx context.Context, f *flight[T], sk string, load func(context.Context) (T, error)) (holderTTL time.Duration, settled bool) {
	tok := c.gw.tokens.next()
	lk, err := c.gw.lookup(ctx, sk, tok)
	if err == nil && lk.Value != nil {
		v, h, ok := c.entries.decode(sk, lk.Value)
		if ok && c.fresh.judge(h) != expired {
			c.l1.fillStored(sk, f.gen, v, lk.Value)
			f.val = v
			if h.NotFound() {
				f.err = ErrNotFound
			}
			return 0, true
		}
		lk, err = c.gw.leaseOver(ctx, sk, tok) // bad data, or past its stale windows: replace it
	}
	switch {
	case err != nil:
		f.retry = true             // the store failed: callers read again, and go without it
		c.gw.abandon(ctx, sk, tok) // it may have granted the lease all the same
		return 0, true
	case lk.Granted:
		c.flights.joinAs([]*flight[T]{f}, []flightKey{{sk, tok}})
		lctx, cancel := context.WithTimeout(ctx, c.cfg.loadTimeout)
		defer cancel()
		c.loadUnder(lctx, f, sk, tok, load)
		return 0, true
	}
	return lk.HolderTTL, false
}

// loadUnstored loads for a wait that outlasted a lease and a load: the value goes to the
// callers, not to the store (the lease is another's).
func (c *Cache[T]) loadUnstored(ctx context.Context, f *flight[T], sk string, load func(context.Context) (T, error)) {
	c.stats.storeless.Add(1)
	lctx, cancel := context.WithTimeout(ctx, c.cfg.loadTimeout)
	defer cancel()
	lctx, obs := c.obs.loadStart(lctx, sk)
	defer obs.end()
	v, err, pe := callLoader(lctx, load)
	c.obs.loadDone(&obs, err, pe)
	f.val, f.err, f.panicked, f.loaded = v, err, pe, true
}

// pollTimer is the sleep between the reads of a lease wait: a backoff doubling from
// WithLeaseWait's minimum to its maximum, never past the holder's lease, jittered so that the
// waiters of many processes spread out.
type pollTimer struct {
	backoff, max time.Duration
	timer        *time.Timer
}

func (c *Cache[T]) newPollTimer() *pollTimer {
	return &pollTimer{backoff: c.cfg.leaseWaitMin, max: c.cfg.leaseWaitMax, timer: time.NewTimer(time.Hour)}
}

// sleep waits for the next read: the backoff (at most holderTTL and a millisecond, if
// holderTTL > 0), or a message on wake (the key was filled or released), or ctx's end, whose
// error it returns.
func (p *pollTimer) sleep(ctx context.Context, holderTTL time.Duration, wake <-chan struct{}) error {
	sleep := p.backoff
	if holderTTL > 0 && holderTTL+time.Millisecond < sleep {
		sleep = holderTTL + time.Millisecond
	}
	p.timer.Reset(sleep/2 + rand.N(sleep/2+1))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.timer.C:
	case <-wake: // filled or released: read at once
		p.timer.Stop() // (Go 1.23 timers: Reset needs no drain)
	}
	p.backoff = min(p.backoff*2, p.max)
	return nil
}

func (p *pollTimer) stop() { p.timer.Stop() }
