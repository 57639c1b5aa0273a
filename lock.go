package cacheaside

// The lease protocol, after Facebook's memcache leases (Nishtala et al., NSDI 2013).
//
//	caller                         store (one atomic script per key)
//	------                         ---------------------------------
//	(plain read of the value ─────▶ hit: return it; a miss goes on to GetOrLease: lookup.go)
//	GetOrLease(k, tok) ─────────▶  value?      ─▶ hit: return it
//	                               live lease? ─▶ held by L: wait for L's fill (poll with
//	                                              backoff, woken by the fill: wake.go; join
//	                                              L's flight if it is ours)
//	                               else        ─▶ grant tok (PX = lease TTL)
//	load from the database
//	Fill(k, tok, value) ────────▶  stored only if k's lease is still tok
//	Invalidate(k) ──────────────▶  delete value and lease: every outstanding token is void,
//	                               so a load that began before it can never store its value
//
// Tokens are per load, never per process, and made only for a lookup that may be granted one.
// Each call asks the store itself before joining any flight in this process, so a call that
// begins after an Invalidate never joins a load that began before it. A plain read that finds
// a value needs no lease: the value is as fresh as the read (an Invalidate deletes it; a fill
// that lands after one holds a lease granted after it). Only a miss must go through the
// read-or-lease before joining anything. A fill the store refused is not handed to callers who joined: they read
// again.

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"
)

// tokens issues lease tokens unique across processes: a random instance id and a counter.
type tokens struct {
	id  string
	seq atomic.Uint64
}

func newTokens() *tokens {
	var b [8]byte
	_, _ = crand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return &tokens{id: hex.EncodeToString(b[:]) + ":"}
}

func (t *tokens) next() string {
	var b [40]byte
	return string(strconv.AppendUint(append(b[:0], t.id...), t.seq.Add(1), 36))
}

// storeCall runs one store operation bounded by the store timeout (the connect timeout until
// the store has answered once) and tells the breaker, and the metrics as op, how it went. A
// failure caused by the caller's own context is not the store's.
func storeCall[T, R any](c *Cache[T], ctx context.Context, op storeOp, call func(context.Context) (R, error)) (R, error) {
	return storeCallN(c, ctx, op, 1, call)
}

// A batch operation of n keys is allowed 1 + n/batchKeysPerTimeout store timeouts, at most
// maxBatchTimeouts: a large batch (far longer to encode, send and run than one key) must not
// fail open on a healthy store, and a hung store must not hold it for long either.
const (
	batchKeysPerTimeout = 100
	maxBatchTimeouts    = 20
)

// storeCallN is storeCall for an operation on n keys.
func storeCallN[T, R any](c *Cache[T], ctx context.Context, op storeOp, n int, call func(context.Context) (R, error)) (R, error) {
	warm := c.warm.Load()
	return storeCallWithin(c, ctx, op, warm, c.storeTimeout(warm, n), call)
}

// storeCallWithin is storeCall bounded by timeout instead of the store timeout (the write path
// has its own budget: invalidate.go). warm is whether the store had answered when the call
// began.
func storeCallWithin[T, R any](c *Cache[T], ctx context.Context, op storeOp, warm bool, timeout time.Duration, call func(context.Context) (R, error)) (R, error) {
	octx, cancel := ctx, noCancel
	if c.mem == nil { // an in-process store neither blocks nor honours deadlines
		octx, cancel = c.bound(ctx, timeout) // storebound.go: no timer per call
	}
	octx, obs := c.obs.storeStart(octx, op)
	r, err := call(octx)
	cancel()
	c.obs.storeEnd(obs, err, ctx.Err() != nil)
	switch {
	case err == nil:
		c.breaker.Success()
		if !warm {
			c.warm.Store(true)
		}
	case ctx.Err() != nil:
		// the caller left; that says nothing of the store
	case !warm:
		c.breaker.Trip()
	default:
		c.breaker.Failure()
	}
	return r, err
}

// storeTimeout is the bound of a store operation on n keys: the connect timeout until the
// store has answered once (warm), then the store timeout, scaled up for large batches.
func (c *Cache[T]) storeTimeout(warm bool, n int) time.Duration {
	timeout := c.cfg.storeTimeout
	if !warm {
		timeout = max(timeout, c.cfg.connectTimeout)
	}
	if n > batchKeysPerTimeout {
		timeout *= time.Duration(min(1+n/batchKeysPerTimeout, maxBatchTimeouts))
	}
	return timeout
}

// lookup is the read-or-lease every call starts with.
//
// It runs detached from the caller's cancellation (the store timeout bounds it), so its answer
// is always known: a lease granted to a caller that left meanwhile is released at once, in the
// background, instead of blocking the key in every process until it expires. The caller then
// gets ctx.Err().
func (c *Cache[T]) lookup(ctx context.Context, sk, tok string) (Lookup, error) {
	lk, err := storeCall(c, detach(ctx), opGetOrLease, func(ctx context.Context) (Lookup, error) {
		return c.store.GetOrLease(ctx, sk, tok, c.leaseTTL)
	})
	return c.unlessLeft(ctx, sk, tok, lk, err)
}

// leaseOver takes a lease on a key whose value must be replaced, as lookup does.
func (c *Cache[T]) leaseOver(ctx context.Context, sk, tok string) (Lookup, error) {
	lk, err := storeCall(c, context.WithoutCancel(ctx), opLease, func(ctx context.Context) (Lookup, error) {
		return c.store.Lease(ctx, sk, tok, c.leaseTTL)
	})
	return c.unlessLeft(ctx, sk, tok, lk, err)
}

// unlessLeft returns ctx.Err() if the caller left during a lookup, releasing the lease it may
// have been granted.
func (c *Cache[T]) unlessLeft(ctx context.Context, sk, tok string, lk Lookup, err error) (Lookup, error) {
	if ctx.Err() == nil {
		return lk, err
	}
	if err == nil && lk.Granted {
		c.abandon(ctx, sk, tok)
	}
	return Lookup{}, ctx.Err()
}

// abandon releases, in the background, a lease that will not be filled: its caller left
// before using it, its fill failed, or the lookup that asked for it failed (the store may have
// granted it anyway). See freeLeases.
func (c *Cache[T]) abandon(ctx context.Context, sk, tok string) {
	c.freeLeases(ctx, tok, []string{sk}, releaseAttempts)
}

// release ends tok's lease at once (loader error or panic, value not storable) and reports
// whether tok still held it. It runs on the flight's context, detached from callers. If the
// store fails, the release is retried in the background (freeLeases).
func (c *Cache[T]) release(ctx context.Context, sk, tok string) (bool, error) {
	held, err := c.releaseOnce(ctx, sk, tok)
	if err != nil {
		c.freeLeases(ctx, tok, []string{sk}, releaseAttempts-1)
	}
	return held, err
}

func (c *Cache[T]) releaseOnce(ctx context.Context, sk, tok string) (bool, error) {
	return storeCall(c, context.WithoutCancel(ctx), opRelease, func(ctx context.Context) (bool, error) {
		return c.store.Release(ctx, sk, tok)
	})
}

// A release that fails is tried releaseAttempts times in all, releaseBackoff apart, doubling:
// a lease this process will not fill must not make every process wait for it until it
// expires (the lease TTL, seconds) because one round trip failed. The attempts of freeLeases
// are bounded by the store timeout times 4, 16, 64..., at most releaseMaxTimeout: a burst of
// releases (Close during a burst of cold reads) may wait for pool connections longer than
// a read would, and must not fail for it.
const (
	releaseAttempts   = 4
	releaseBackoff    = 5 * time.Millisecond
	releaseMaxTimeout = time.Second
)

// freeLeases releases tok's leases on sks, trying up to tries times while the store fails. It
// runs in the background, or at once on the calling goroutine when the Cache is closing:
// every goroutine that can hold a lease is one Close waits for (a call inside the gate, or a
// goroutine of the Cache), so the releases are sent before Close returns. A release only ends
// tok's own lease, so releasing a lease that was filled, voided or never granted does
// nothing.
func (c *Cache[T]) freeLeases(ctx context.Context, tok string, sks []string, tries int) {
	if tries <= 0 || len(sks) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	run := func() {
		backoff := releaseBackoff
		timeout := c.storeTimeout(true, len(sks))
		for i := range tries {
			if i > 0 {
				time.Sleep(backoff/2 + rand.N(backoff/2+1))
				backoff *= 2
			}
			timeout = min(4*timeout, max(releaseMaxTimeout, timeout))
			if _, err := c.releaseManyWithin(ctx, tok, sks, timeout); err == nil {
				return
			}
		}
		c.stats.unreleased.Add(uint64(len(sks))) // they expire with their lease TTL
	}
	if !c.life.goOwned(run) {
		run()
	}
}

// settle decides what a finished load leaves in f and in the store, for a single key loaded
// under tok: a value or a not-found is filled (if the lease is still tok's), anything else
// releases the lease.
func (c *Cache[T]) settle(ctx context.Context, f *flight[T], sk, tok string, v T, err error, pe *PanicError, delta time.Duration) {
	switch {
	case pe != nil:
		f.panicked = pe
		_, _ = c.release(ctx, sk, tok)
		return
	case err != nil && !errors.Is(err, ErrNotFound):
		f.err = err
		_, _ = c.release(ctx, sk, tok)
		return
	}
	f.val, f.err, f.loaded = v, err, true
	data, ttl, ok := c.encode(ctx, sk, v, err != nil, delta)
	if !ok {
		c.stats.storeless.Add(1)
		held, rerr := c.release(ctx, sk, tok)
		f.retry = !held || rerr != nil
		return
	}
	if c.unsafeSkipLeaseCheck {
		tok = c.takeLeaseUnsafely(ctx, sk, tok)
	}
	stored, ferr := storeCall(c, context.WithoutCancel(ctx), opFill, func(ctx context.Context) (bool, error) {
		return c.store.Fill(ctx, sk, tok, data, ttl)
	})
	f.retry = !stored || ferr != nil
	if ferr != nil {
		// The fill may not have reached the store: free the lease, or every process waits for
		// it until it expires. If the fill did land, the release finds no lease of tok's.
		c.abandon(ctx, sk, tok)
	}
	if f.retry {
		c.stats.storeless.Add(1) // the caller that loaded it still gets it
		return
	}
	c.l1FillStored(sk, f.gen, v, data)
	c.backoff.succeeded(sk) // a fresh value: its refreshes need not wait for a past failure
}

// takeLeaseUnsafely is the broken build's fill (see Cache.unsafeSkipLeaseCheck): like a cache
// without leases it overwrites whatever the key holds. It voids every lease on the key
// (including the one of a load that began after the invalidation this load missed), takes a
// fresh one and returns its token to fill under. Tests only.
func (c *Cache[T]) takeLeaseUnsafely(ctx context.Context, sk, tok string) string {
	fresh := c.tokens.next()
	lk, err := storeCall(c, context.WithoutCancel(ctx), opLease, func(ctx context.Context) (Lookup, error) {
		if err := c.store.Delete(ctx, sk); err != nil {
			return Lookup{}, err
		}
		return c.store.Lease(ctx, sk, fresh, c.leaseTTL)
	})
	if err == nil && lk.Granted {
		return fresh
	}
	return tok
}

// loadUnder runs load for one key under the lease tok and settles the result.
func (c *Cache[T]) loadUnder(ctx context.Context, f *flight[T], sk, tok string, load func(context.Context) (T, error)) {
	ctx, obs := c.obs.loadStart(ctx, sk)
	defer obs.end()
	completed := false
	defer func() {
		if !completed { // the loader called runtime.Goexit: the key is loadable again at once
			_, _ = c.release(ctx, sk, tok)
		}
	}()
	if err := c.tagLoadsBefore(ctx, []string{sk}); err != nil { // tags.go
		// Its tags are not recorded: an InvalidateTags would not find the value. Load for the
		// callers, store nothing.
		c.abandon(ctx, sk, tok)
		c.stats.storeless.Add(1)
		f.val, f.err, f.panicked = callLoader(ctx, load)
		f.loaded, f.retry = true, true // an Invalidate during the load could not refuse it: joiners read again
		c.obs.loadDone(&obs, f.err, f.panicked)
		completed = true
		return
	}
	v, err, pe := callLoader(ctx, load)
	if c.unsafeLateTags {
		_ = c.tagLoads(ctx, []string{sk})
	}
	c.settle(ctx, f, sk, tok, v, err, pe, c.obs.loadDone(&obs, err, pe))
	completed = true
}

// startLoad starts the flight of a caller that was just granted the lease tok.
func (c *Cache[T]) startLoad(ctx context.Context, sk, tok string, gen uint64, load func(context.Context) (T, error)) *flight[T] {
	return c.flights.launch(ctx, flightKey{sk, tok}, gen, c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		c.loadUnder(lctx, f, sk, tok, load)
	})
}

// joinOrWait returns the flight of holder's lease: this process's own if holder is one of its
// loads, else a new flight that waits for the holder's fill.
func (c *Cache[T]) joinOrWait(ctx context.Context, sk, holder string, holderTTL time.Duration, gen uint64, load func(context.Context) (T, error)) (f *flight[T], owner bool) {
	f, started := c.flights.joinOrLaunch(ctx, flightKey{sk, holder}, gen, c.leaseTTL+2*c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
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
	giveUp := time.Now().Add(c.leaseTTL + c.cfg.loadTimeout)
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

		tok := c.tokens.next()
		lk, err := c.lookup(ctx, sk, tok)
		if err == nil && lk.Value != nil {
			v, h, ok := c.decode(sk, lk.Value)
			if ok && c.judge(h) != expired {
				c.l1FillStored(sk, f.gen, v, lk.Value)
				f.val = v
				if h.NotFound() {
					f.err = ErrNotFound
				}
				return
			}
			lk, err = c.leaseOver(ctx, sk, tok) // bad data, or past its stale windows: replace it
		}
		switch {
		case err != nil:
			f.retry = true          // the store failed: callers read again, and go without it
			c.abandon(ctx, sk, tok) // it may have granted the lease all the same
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
