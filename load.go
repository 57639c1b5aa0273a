package cacheaside

// The load runner: a load under a lease, and what its outcome leaves in the store.

import (
	"context"
	"errors"
	"time"
)

// settle decides what a finished load leaves in f and in the store, for a single key loaded
// under tok: a value or a not-found is filled (if the lease is still tok's), anything else
// releases the lease.
func (c *Cache[T]) settle(ctx context.Context, f *flight[T], sk, tok string, v T, err error, pe *PanicError, delta time.Duration) {
	switch {
	case pe != nil:
		f.panicked = pe
		_, _ = c.gw.release(ctx, sk, tok)
		return
	case err != nil && !errors.Is(err, ErrNotFound):
		f.err = err
		_, _ = c.gw.release(ctx, sk, tok)
		return
	}
	f.val, f.err, f.loaded = v, err, true
	data, ttl, ok := c.entries.encode(ctx, sk, v, err != nil, delta)
	if !ok {
		c.stats.storeless.Add(1)
		held, rerr := c.gw.release(ctx, sk, tok)
		f.retry = !held || rerr != nil
		return
	}
	if c.unsafeSkipLeaseCheck {
		tok = c.gw.takeLeaseUnsafely(ctx, sk, tok)
	}
	stored, ferr := storeCall(c.gw, context.WithoutCancel(ctx), opFill, func(ctx context.Context) (bool, error) {
		return c.gw.store.Fill(ctx, sk, tok, data, ttl)
	})
	f.retry = !stored || ferr != nil
	if ferr != nil {
		// The fill may not have reached the store: free the lease, or every process waits for
		// it until it expires. If the fill did land, the release finds no lease of tok's.
		c.gw.abandon(ctx, sk, tok)
	}
	if f.retry {
		c.stats.storeless.Add(1) // the caller that loaded it still gets it
		return
	}
	c.l1.fillStored(sk, f.gen, v, data)
	c.fresh.refreshSucceeded(sk) // a fresh value: its refreshes need not wait for a past failure
}

// loadUnder runs load for one key under the lease tok and settles the result.
func (c *Cache[T]) loadUnder(ctx context.Context, f *flight[T], sk, tok string, load func(context.Context) (T, error)) {
	ctx, obs := c.obs.loadStart(ctx, sk)
	defer obs.end()
	completed := false
	defer func() {
		if !completed { // the loader called runtime.Goexit: the key is loadable again at once
			_, _ = c.gw.release(ctx, sk, tok)
		}
	}()
	if err := c.tagLoadsBefore(ctx, []string{sk}); err != nil { // tags.go
		// Its tags are not recorded: an InvalidateTags would not find the value. Load for the
		// callers, store nothing.
		c.gw.abandon(ctx, sk, tok)
		c.stats.storeless.Add(1)
		f.val, f.err, f.panicked = callLoader(ctx, load)
		f.loaded, f.retry = true, true // an Invalidate during the load could not refuse it: joiners read again
		c.obs.loadDone(&obs, f.err, f.panicked)
		completed = true
		return
	}
	v, err, pe := callLoader(ctx, load)
	if c.unsafeLateTags {
		_ = c.tags.record(ctx, []string{sk})
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

// loadWithoutStore joins or starts a load that does not wait on the store, for when the store
// failed or its breaker is open. Loads stay coalesced per key, but a call only joins a load
// that began after it did: without the store, this process cannot see another process's
// Invalidate, so a load already running may have read the source before a write whose
// Invalidate returned before this call began. A call that finds such a load waits for it to
// end and then shares the next one, with the other calls that arrived meanwhile. It returns
// nil if ctx ends while waiting, or after Close.
//
// If tok is the token of a lookup that failed on the caller's side, the store may have
// granted it anyway, and maybe only now (a request held up on the network lands after the
// caller gave up): the lease is released, which frees the other processes waiting on it. The
// value is never filled under tok: the load may have read the source before the lease was
// granted, and before an Invalidate that the lease, granted after it, did not see.
func (c *Cache[T]) loadWithoutStore(ctx context.Context, sk, tok string, gen uint64, load func(context.Context) (T, error)) (*flight[T], bool) {
	k := flightKey{key: sk}
	since := c.flights.lastSeq()
	for {
		f := c.flights.get(k)
		if f == nil {
			break
		}
		if f.seq > since {
			c.obs.coalesced(ctx, coalescedFlight)
			if tok != "" {
				c.gw.abandon(ctx, sk, tok)
			}
			return f, false
		}
		select {
		case <-f.done: // it is unregistered before done closes
		case <-ctx.Done():
			if tok != "" {
				c.gw.abandon(ctx, sk, tok)
			}
			return nil, false
		}
	}
	// No flight now. Calls that waited for the same one wake together: checking again and
	// starting one is one step, so one of them starts it and the others join it. Whichever
	// flight they find registered began after this call did (it was not there a moment ago).
	f, started := c.flights.joinOrLaunch(ctx, k, gen, c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		c.stats.storeless.Add(1)
		lctx, obs := c.obs.loadStart(lctx, sk)
		defer obs.end()
		f.val, f.err, f.panicked = callLoader(lctx, load)
		c.obs.loadDone(&obs, f.err, f.panicked)
		if tok != "" {
			c.gw.abandon(lctx, sk, tok)
		}
	})
	if f != nil && !started {
		c.obs.coalesced(ctx, coalescedFlight)
		if tok != "" {
			c.gw.abandon(ctx, sk, tok)
		}
	}
	return f, started
}
