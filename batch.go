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
			err = c.tags.check(ctx)
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

// batchPass is one pass of a batch over its keys: what the store said of each, and the
// flights that answer those it did not.
type batchPass[T any] struct {
	keys, sks []string
	gens      []uint64 // before the lookup: an L1 fill is kept only if no invalidation came since
	tok       string
	lks       []Lookup
	won       []int                     // leased to tok: loaded by this pass
	held      []int                     // leased to another load: joined or waited for
	bad       []int                     // bad data, or past its stale windows: to replace
	bare      []int                     // to replace, but the store failed to lease them: loaded without it
	stales    map[string]*staleValue[T] // expired values seen, for stale-if-error
	waits     []pendingKey[T]
}

// resolveMany makes one pass over keys: one read-or-lease lookup for all of them; hits go
// to b, won keys are loaded, the others joined or waited for. It returns the keys that must be
// read again.
func (c *Cache[T]) resolveMany(ctx context.Context, keys []string, b *batch[T]) ([]string, error) {
	p := &batchPass[T]{keys: keys, sks: make([]string, len(keys)), gens: make([]uint64, len(keys)), tok: c.gw.tokens.next()}
	for i, k := range keys {
		p.sks[i] = c.cfg.prefix + k
		p.gens[i] = c.gens.load(k)
	}
	err := errBreakerOpen
	if c.gw.breaker.Allow() {
		p.lks, err = c.gw.getOrLeaseMany(ctx, p.sks, p.tok) // lease.go
	}
	if ctx.Err() != nil {
		if err == nil {
			c.gw.abandonMany(ctx, p.tok, p.sks, p.lks)
		}
		return nil, ctx.Err()
	}
	if err != nil {
		if errors.Is(err, errBreakerOpen) {
			p.tok = "" // nothing was asked of the store
		}
		err = c.loadManyWithoutStore(ctx, keys, p.sks, p.tok, b)
		c.countMisses(ctx, keys)
		return nil, err
	}
	c.serveHits(ctx, p, b)
	if err := c.leaseBad(ctx, p); err != nil {
		return nil, err
	}
	if err := c.flightsFor(ctx, p, b); err != nil {
		return nil, err
	}
	return c.awaitPass(ctx, p, b)
}

// serveHits puts the keys whose lookup found a live value into b (refreshing in the
// background those the verdict says to), and sorts the others into won, held and bad.
func (c *Cache[T]) serveHits(ctx context.Context, p *batchPass[T], b *batch[T]) {
	var refreshes []refreshReq // hits to refresh in the background
	for i := range p.lks {
		lk := &p.lks[i]
		switch {
		case lk.Value != nil:
			v, h, ok := c.entries.decode(p.sks[i], lk.Value)
			vd := expired
			if ok {
				vd = c.fresh.judge(h)
			}
			if vd == expired {
				p.bad = append(p.bad, i) // bad data, or past its stale windows: replace it
				if s := keepStale(c.fresh, v, h); ok && s.expiry != 0 && b.out != nil {
					if p.stales == nil {
						p.stales = make(map[string]*staleValue[T])
					}
					p.stales[p.keys[i]] = &s
				}
				break
			}
			if vd != serveIt {
				refreshes = append(refreshes, refreshReq{p.keys[i], p.sks[i], p.gens[i], lk.Value, vd == serveRefresh})
			}
			c.obs.count(p.keys[i], resultOf(vd, h))
			c.l1.fill(p.keys[i], p.gens[i], v, lk.Value) // kept only until its logical expiry
			if !h.NotFound() && b.out != nil {
				b.out[p.keys[i]] = v
			}
		case lk.Granted:
			p.won = append(p.won, i)
		default:
			p.held = append(p.held, i)
		}
	}
	if len(refreshes) > 0 {
		c.refreshMany(ctx, refreshes, b.load)
	}
}

// leaseBad leases the keys to replace together, like the misses: one more round trip (per
// node) for all of them. Those the store failed to lease go to bare.
func (c *Cache[T]) leaseBad(ctx context.Context, p *batchPass[T]) error {
	if len(p.bad) == 0 {
		return nil
	}
	blks, err := c.gw.leaseOverMany(ctx, pick(p.sks, p.bad), p.tok)
	switch {
	case err != nil && ctx.Err() != nil:
		c.gw.abandonMany(ctx, p.tok, pick(p.sks, p.won), nil)
		return ctx.Err()
	case err != nil:
		p.bare = p.bad
	default:
		for j, i := range p.bad {
			if blks[j].Granted {
				p.won = append(p.won, i)
			} else {
				p.lks[i] = blks[j]
				p.held = append(p.held, i)
			}
		}
	}
	return nil
}

// flightsFor starts or joins the flights of the keys the pass did not serve: one load for the
// won keys, this process's loads of held keys where it has them, one wait for the keys held
// by other processes; bare keys are loaded without the store, into b, before it returns.
func (c *Cache[T]) flightsFor(ctx context.Context, p *batchPass[T], b *batch[T]) error {
	p.waits = make([]pendingKey[T], 0, len(p.won)+len(p.held))
	if len(p.won) > 0 {
		wkeys := pick(p.keys, p.won)
		fs := c.loadMany(ctx, wkeys, pick(p.sks, p.won), pick(p.gens, p.won), p.tok, b.load)
		if fs == nil { // closed since the lookup: its leases are not used
			c.gw.abandonMany(ctx, p.tok, pick(p.sks, p.won), nil)
			return ErrClosed
		}
		for j, f := range fs {
			p.waits = append(p.waits, pendingKey[T]{wkeys[j], f, true})
		}
	}
	var remote []int // held by leases of other processes (or of loads already over here)
	for _, i := range p.held {
		if f := c.flights.joinable(flightKey{p.sks[i], p.lks[i].Holder}, 0); f != nil {
			p.waits = append(p.waits, pendingKey[T]{p.keys[i], f, false})
		} else {
			remote = append(remote, i)
		}
	}
	if len(remote) > 0 {
		rkeys := pick(p.keys, remote)
		fs := c.waitMany(ctx, rkeys, pick(p.sks, remote), pick(p.gens, remote), pick(p.lks, remote), b.load)
		if fs == nil {
			return ErrClosed
		}
		for j, f := range fs {
			p.waits = append(p.waits, pendingKey[T]{rkeys[j], f, true})
		}
	}
	if len(p.bare) > 0 {
		// The failed lease round trip may have been granted all the same: released after
		// the load (tok).
		bkeys := pick(p.keys, p.bare)
		err := c.loadManyWithoutStore(ctx, bkeys, pick(p.sks, p.bare), p.tok, b)
		if err == nil || !c.staleForAll(ctx, err, bkeys, p.stales, b.out) {
			c.countMisses(ctx, bkeys)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// awaitPass waits for the pass's flights and puts their outcomes into b; it returns the keys
// whose value the store refused, to be read again.
func (c *Cache[T]) awaitPass(ctx context.Context, p *batchPass[T], b *batch[T]) ([]string, error) {
	var again []string
	for _, w := range p.waits {
		v, err, retry := await(ctx, w.f, w.owner)
		if err != nil && !retry && c.staleForAll(ctx, err, []string{w.key}, p.stales, b.out) {
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
