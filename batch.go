package cacheaside

import (
	"context"
	"errors"
)

// getOrLoadMany is GetOrLoadMany (cacheaside.go).
func (c *Cache[T]) getOrLoadMany(ctx context.Context, keys []string, load func(ctx context.Context, missing []string) (map[string]T, error), opts ...CallOption) (map[string]T, error) {
	if load == nil {
		return nil, errNilLoader
	}
	if !c.calls.enter() { // Close waits for the calls inside (gate.go)
		return nil, ErrClosed
	}
	defer c.calls.exit()
	if len(opts) > 0 {
		var err error
		if ctx, err = withCallOptions(ctx, opts); err == nil {
			err = c.checkTags(ctx)
		}
		if err != nil {
			return nil, err
		}
	}
	b := &batch[T]{load: load, out: make(map[string]T, len(keys))}
	if err := c.resolveAll(ctx, c.l1Many(ctx, dedupe(keys), b), b); err != nil { // L1 hits: local.go
		return nil, err
	}
	return b.out, nil
}

// batch is what one GetOrLoadMany (or one batch of a Warm) resolves keys into.
type batch[T any] struct {
	load func(ctx context.Context, missing []string) (map[string]T, error)
	// out receives the values found; nil when they are not wanted (Warm).
	out map[string]T
	// errs receives the keys that failed, when the batch goes on past failures (Warm); with a
	// nil errs the first failure ends the batch with its error.
	errs map[string]error
}

// resolveAll resolves keys into b, reading again the keys a pass could not settle.
func (c *Cache[T]) resolveAll(ctx context.Context, keys []string, b *batch[T]) error {
	pending := dedupe(keys)
	for len(pending) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if c.life.isClosed() {
			return ErrClosed
		}
		again, err := c.resolveMany(ctx, pending, b)
		if err != nil {
			return err
		}
		pending = again
	}
	return nil
}

// pendingKey is one key of a batch being resolved by a flight.
type pendingKey[T any] struct {
	key   string
	f     *flight[T]
	owner bool
}

// resolveMany makes one pass over keys: one read-or-lease lookup for all of them; hits go
// to b, won keys are loaded, the others joined or waited for. It returns the keys that must be
// read again.
func (c *Cache[T]) resolveMany(ctx context.Context, keys []string, b *batch[T]) ([]string, error) {
	sks := make([]string, len(keys))
	gens := make([]uint64, len(keys)) // before the lookup: an L1 fill is kept only if no invalidation came since
	for i, k := range keys {
		sks[i] = c.cfg.prefix + k
		gens[i] = c.gens.load(k)
	}
	tok := c.gw.tokens.next()
	var lks []Lookup
	err := errBreakerOpen
	if c.gw.breaker.Allow() {
		// Detached from the caller's cancellation, as lookup is: leases granted to a caller
		// that left are released.
		lks, err = storeCallN(c.gw, context.WithoutCancel(ctx), opGetOrLeaseMany, len(sks), func(ctx context.Context) ([]Lookup, error) {
			lks, err := c.gw.store.GetOrLeaseMany(ctx, sks, tok, c.gw.leaseTTL)
			return oneEach(lks, err, len(sks))
		})
	}
	if ctx.Err() != nil {
		if err == nil {
			c.gw.abandonMany(ctx, tok, sks, lks)
		}
		return nil, ctx.Err()
	}
	if err != nil {
		if errors.Is(err, errBreakerOpen) {
			tok = "" // nothing was asked of the store
		}
		err = c.loadManyWithoutStore(ctx, keys, sks, tok, b)
		c.countMisses(ctx, keys)
		return nil, err
	}

	var won, held, bad []int
	var stales map[string]*staleValue[T] // expired values seen, for stale-if-error
	var refreshes []refreshReq           // hits to refresh in the background
	for i := range lks {
		lk := &lks[i]
		switch {
		case lk.Value != nil:
			v, h, ok := c.decode(sks[i], lk.Value)
			vd := expired
			if ok {
				vd = c.fresh.judge(h)
			}
			if vd == expired {
				bad = append(bad, i) // bad data, or past its stale windows: replace it
				if s := keepStale(c.fresh, v, h); ok && s.expiry != 0 && b.out != nil {
					if stales == nil {
						stales = make(map[string]*staleValue[T])
					}
					stales[keys[i]] = &s
				}
				break
			}
			if vd != serveIt {
				refreshes = append(refreshes, refreshReq{keys[i], sks[i], gens[i], lk.Value, vd == serveRefresh})
			}
			c.obs.count(keys[i], resultOf(vd, h))
			c.l1.fill(keys[i], gens[i], v, lk.Value) // kept only until its logical expiry
			if !h.NotFound() && b.out != nil {
				b.out[keys[i]] = v
			}
		case lk.Granted:
			won = append(won, i)
		default:
			held = append(held, i)
		}
	}
	if len(refreshes) > 0 {
		c.refreshMany(ctx, refreshes, b.load)
	}
	var bare []int // keys to replace that the store then failed to lease
	if len(bad) > 0 {
		// Leased together, like the misses: one more round trip (per node) for all of them.
		blks, err := c.gw.leaseOverMany(ctx, pick(sks, bad), tok)
		switch {
		case err != nil && ctx.Err() != nil:
			c.gw.abandonMany(ctx, tok, pick(sks, won), nil)
			return nil, ctx.Err()
		case err != nil:
			bare = bad
		default:
			for j, i := range bad {
				if blks[j].Granted {
					won = append(won, i)
				} else {
					lks[i] = blks[j]
					held = append(held, i)
				}
			}
		}
	}

	waits := make([]pendingKey[T], 0, len(won)+len(held))
	if len(won) > 0 {
		wkeys := pick(keys, won)
		fs := c.loadMany(ctx, wkeys, pick(sks, won), pick(gens, won), tok, b.load)
		if fs == nil { // closed since the lookup: its leases are not used
			c.gw.abandonMany(ctx, tok, pick(sks, won), nil)
			return nil, ErrClosed
		}
		for j, f := range fs {
			waits = append(waits, pendingKey[T]{wkeys[j], f, true})
		}
	}
	var remote []int // held by leases of other processes (or of loads already over here)
	for _, i := range held {
		if f := c.flights.joinable(flightKey{sks[i], lks[i].Holder}, 0); f != nil {
			waits = append(waits, pendingKey[T]{keys[i], f, false})
		} else {
			remote = append(remote, i)
		}
	}
	if len(remote) > 0 {
		rkeys := pick(keys, remote)
		fs := c.waitMany(ctx, rkeys, pick(sks, remote), pick(gens, remote), pick(lks, remote), b.load)
		if fs == nil {
			return nil, ErrClosed
		}
		for j, f := range fs {
			waits = append(waits, pendingKey[T]{rkeys[j], f, true})
		}
	}
	if len(bare) > 0 {
		// The failed lease round trip may have been granted all the same: released after
		// the load (tok).
		bkeys := pick(keys, bare)
		err := c.loadManyWithoutStore(ctx, bkeys, pick(sks, bare), tok, b)
		if err == nil || !c.staleForAll(ctx, err, bkeys, stales, b.out) {
			c.countMisses(ctx, bkeys)
			if err != nil {
				return nil, err
			}
		}
	}

	var again []string
	for _, w := range waits {
		v, err, retry := await(ctx, w.f, w.owner)
		if err != nil && !retry && c.staleForAll(ctx, err, []string{w.key}, stales, b.out) {
			continue // stale-if-error
		}
		if !retry && ctx.Err() == nil {
			c.obs.count(w.key, resultMiss)
		}
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case retry:
			again = append(again, w.key)
		case err != nil && !errors.Is(err, ErrNotFound):
			if b.errs == nil {
				return nil, err
			}
			b.errs[w.key] = err
		case err == nil && b.out != nil:
			b.out[w.key] = v
		}
	}
	return again, nil
}

// staleForAll serves, for a failed load of keys, their expired values into out, if
// stale-if-error allows it for every one of them, and counts each as a stale request; it
// reports whether it did.
func (c *Cache[T]) staleForAll(ctx context.Context, err error, keys []string, stales map[string]*staleValue[T], out map[string]T) bool {
	if len(stales) == 0 || ctx.Err() != nil || errors.Is(err, ErrNotFound) {
		return false
	}
	for _, k := range keys {
		if s := stales[k]; s == nil || !c.fresh.staleOK(s.expiry) {
			return false
		}
	}
	for _, k := range keys {
		c.obs.staleIfError()
		c.obs.count(k, resultStale)
		if s := stales[k]; !s.notFound {
			out[k] = s.v
		}
	}
	return true
}

// countMisses counts keys as requests answered by a load (a miss), unless the caller left.
func (c *Cache[T]) countMisses(ctx context.Context, keys []string) {
	if ctx.Err() != nil {
		return
	}
	for _, k := range keys {
		c.obs.count(k, resultMiss)
	}
}

// pick returns the elements of s at idx.
func pick[E any](s []E, idx []int) []E {
	out := make([]E, len(idx))
	for j, i := range idx {
		out[j] = s[i]
	}
	return out
}

func dedupe(keys []string) []string {
	seen := make(map[string]struct{}, len(keys))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if _, ok := seen[k]; !ok {
			seen[k] = struct{}{}
			out = append(out, k)
		}
	}
	return out
}

var errBreakerOpen = errors.New("cacheaside: store skipped: circuit breaker open")
