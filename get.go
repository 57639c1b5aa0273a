package cacheaside

import (
	"context"
	"errors"
)

// The read path of one key (GetOrLoad): the L1, then one read of the store, then the flight
// that answers a miss (load.go, wait.go).

// getOrLoad is GetOrLoad without a span of its own: the L1 (fromL1), then the store
// (fromStore). GetOrLoad takes the same two steps itself for a call without options.
func (c *Cache[T]) getOrLoad(ctx context.Context, key string, load func(context.Context) (T, error)) (T, error) {
	if load == nil {
		var zero T
		return zero, errNilLoader
	}
	if c.life.isClosed() {
		var zero T
		return zero, ErrClosed
	}
	if e := c.l1.hit(key); e != nil { // local.go
		return c.fromL1(ctx, key, e, load)
	}
	return c.fromStore(ctx, key, load)
}

// fromL1 answers a call with its key's L1 entry e, refreshing it in the background if early
// refresh says so.
func (c *Cache[T]) fromL1(ctx context.Context, key string, e *l1Entry[T], load func(context.Context) (T, error)) (T, error) {
	if c.fresh.timed && c.fresh.judge(e.header()) == serveRefresh {
		c.refresh(ctx, key, c.gens.load(key), e.raw, true, load)
	}
	if e.notFound {
		c.obs.request(ctx, key, resultNegativeHit)
		var zero T
		return zero, ErrNotFound
	}
	c.obs.request(ctx, key, resultL1Hit)
	return e.val, nil
}

// fromStore answers a call the L1 did not: one read of the store (resolve), then the flight
// that answers a miss. A call whose flight's value the store refused reads again.
func (c *Cache[T]) fromStore(ctx context.Context, key string, load func(context.Context) (T, error)) (T, error) {
	var zero T
	if !c.calls.enter() {
		return zero, ErrClosed
	}
	defer c.calls.exit()
	sk := c.cfg.prefix + key
	for {
		if err := ctx.Err(); err != nil {
			return zero, err
		}
		if c.life.isClosed() {
			return zero, ErrClosed
		}
		var r resolution[T]
		if c.resolve(ctx, key, sk, load, &r); r.f == nil {
			return r.v, r.err // a hit, or the call cannot go on
		}
		v, err, again := await(ctx, r.f, r.owner)
		if !again {
			v, err, served := c.orStale(ctx, v, err, &r.stale)
			if served {
				c.obs.request(ctx, key, resultStale)
			} else {
				c.obs.request(ctx, key, resultMiss)
			}
			return v, err
		}
	}
}

// resolution is one pass of a call through the store: its answer (a hit, or an error), or the
// flight whose outcome answers it.
type resolution[T any] struct {
	v     T
	err   error
	f     *flight[T]    // nil: v and err are the answer
	owner bool          // the call started f: it takes the value even if the store refused it
	stale staleValue[T] // an expired value seen by this pass, for stale-if-error
}

// resolve reads key (store key sk) once. A live value is the answer. Otherwise the call gets
// the flight that answers it: its own load under a lease it was granted, this process's load
// of the lease the store reports held, a wait for another process's fill, or, with the store
// failing or its breaker open, a load without the store (loadWithoutStore).
func (c *Cache[T]) resolve(ctx context.Context, key, sk string, load func(context.Context) (T, error), r *resolution[T]) {
	gen := c.gens.load(key)
	tok := "" // the lease token of a lookup that failed: the store may have granted it
	if c.gw.breaker.Allow() {
		lk, lf, err := c.read(ctx, sk, gen, load) // lookup.go
		if err == nil && lk.Value != nil {
			if c.serveStored(ctx, key, sk, gen, lk.Value, load, r) {
				return
			}
			tok = c.gw.tokens.next() // bad data, or past its stale windows: replace it
			if lk, err = c.gw.leaseOver(ctx, sk, tok); err == nil && lk.Granted {
				lf = c.startLoad(ctx, sk, tok, gen, load)
			}
		}
		switch {
		case err != nil && ctx.Err() != nil:
			r.err = ctx.Err()
			return
		case err != nil:
			var le *lookupError
			if errors.As(err, &le) {
				tok = le.token
			}
		case lk.Granted:
			r.f, r.owner = lf, true
		default:
			r.f, r.owner = c.joinOrWait(ctx, sk, lk.Holder, lk.HolderTTL, gen, load) // wait.go
		}
	}
	if r.f == nil && !c.life.isClosed() {
		r.f, r.owner = c.loadWithoutStore(ctx, sk, tok, gen, load)
	} else if r.f == nil && tok != "" {
		c.gw.abandon(ctx, sk, tok) // closing: the failed lookup may have been granted it
	}
	if r.f == nil {
		if r.err = ctx.Err(); r.err == nil {
			r.err = ErrClosed
		}
	}
}

// serveStored answers a call with the stored entry raw of key, read under generation gen, and
// reports true, if the entry decodes and is not expired (xfetch.go's verdict; a background
// refresh starts if it says so); the value enters the L1. An expired entry is kept in r.stale
// for stale-if-error.
func (c *Cache[T]) serveStored(ctx context.Context, key, sk string, gen uint64, raw []byte, load func(context.Context) (T, error), r *resolution[T]) bool {
	v, h, ok := c.entries.decode(sk, raw)
	if !ok {
		return false
	}
	vd := c.fresh.judge(h)
	if vd == expired {
		r.stale = keepStale(c.fresh, v, h)
		return false
	}
	if vd != serveIt {
		c.refresh(ctx, key, gen, raw, vd == serveRefresh, load)
	}
	c.obs.request(ctx, key, resultOf(vd, h))
	c.l1.fill(key, gen, v, raw) // kept only until its logical expiry
	if h.NotFound() {
		r.err = ErrNotFound
	} else {
		r.v = v
	}
	return true
}
