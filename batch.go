package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// GetOrLoadMany returns the values of keys, reading every key in one store round trip (one per
// node on Cluster) and calling load once with exactly the keys that were not cached and whose
// lease this call won; keys another caller is loading are waited for, as GetOrLoad does. A key
// that load leaves out of its map is not found: it is cached as such for the negative TTL and
// absent from the result, as are cached not-found keys. Duplicate keys are read once.
//
// A load error fails the whole call (nothing is cached for the keys it covered); a load panic
// panics every caller sharing it. With the store unusable, load is called with every key that
// was not resolved, and nothing is stored.
func (c *Cache[T]) GetOrLoadMany(ctx context.Context, keys []string, load func(ctx context.Context, missing []string) (map[string]T, error)) (map[string]T, error) {
	if load == nil {
		return nil, errNilLoader
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	out := make(map[string]T, len(keys))
	pending := dedupe(keys)
	for len(pending) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		again, err := c.resolveMany(ctx, pending, load, out)
		if err != nil {
			return nil, err
		}
		pending = again
	}
	return out, nil
}

// pendingKey is one key of a batch being resolved by a flight.
type pendingKey[T any] struct {
	key   string
	f     *flight[T]
	owner bool
}

// resolveMany makes one pass over keys: hits go to out, misses are loaded or waited for. It
// returns the keys that must be read again.
func (c *Cache[T]) resolveMany(ctx context.Context, keys []string, load func(context.Context, []string) (map[string]T, error), out map[string]T) ([]string, error) {
	sks := make([]string, len(keys))
	gens := make([]uint64, len(keys))
	for i, k := range keys {
		sks[i] = c.cfg.prefix + k
		gens[i] = c.gens.load(sks[i])
	}
	tok := c.tokens.next()
	var lks []Lookup
	err := errBreakerOpen
	if c.breaker.Allow() {
		// Detached from the caller's cancellation, as lookup is: leases granted to a caller
		// that left are released.
		lks, err = storeCall(c, context.WithoutCancel(ctx), func(ctx context.Context) ([]Lookup, error) {
			return c.store.GetOrLeaseMany(ctx, sks, tok, c.leaseTTL)
		})
	}
	if ctx.Err() != nil {
		for i, lk := range lks {
			if lk.Granted {
				c.abandon(ctx, sks[i], tok)
			}
		}
		return nil, ctx.Err()
	}
	if err != nil {
		if errors.Is(err, errBreakerOpen) {
			tok = "" // nothing was asked of the store
		}
		return nil, c.loadManyWithoutStore(ctx, keys, tok, load, out)
	}

	var waits []pendingKey[T]
	var won []int // indexes of keys whose lease tok won
	var bare []string
	var stales map[string]*staleValue[T] // expired values seen, for stale-if-error
	for i, lk := range lks {
		if lk.Value != nil {
			v, h, ok := c.decode(lk.Value)
			if ok {
				switch c.judge(h) {
				case serveRefresh:
					c.refresh(ctx, sks[i], lk.Value, oneOf(load, keys[i]))
					fallthrough
				case serveIt:
					if !h.NotFound() {
						out[keys[i]] = v
					}
					continue
				}
				if s := c.keepStale(v, h); s.expiry != 0 {
					if stales == nil {
						stales = make(map[string]*staleValue[T])
					}
					stales[keys[i]] = &s
				}
			}
			if lk, err = c.leaseOver(ctx, sks[i], tok); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				bare = append(bare, keys[i])
				continue
			}
		}
		if lk.Granted {
			won = append(won, i)
			continue
		}
		f, owner := c.joinOrWait(ctx, sks[i], lk.Holder, lk.HolderTTL, gens[i], oneOf(load, keys[i]))
		if f == nil {
			return nil, ErrClosed
		}
		waits = append(waits, pendingKey[T]{keys[i], f, owner})
	}
	if len(won) > 0 {
		fks := make([]flightKey, len(won))
		wkeys := make([]string, len(won))
		wgens := make([]uint64, len(won))
		for j, i := range won {
			fks[j], wkeys[j], wgens[j] = flightKey{sks[i], tok}, keys[i], gens[i]
		}
		fs := c.launchMany(ctx, fks, wgens, c.cfg.loadTimeout, func(lctx context.Context, fs []*flight[T]) {
			c.loadManyUnder(lctx, fs, wkeys, tok, load)
		})
		if fs == nil {
			return nil, ErrClosed
		}
		for j, f := range fs {
			waits = append(waits, pendingKey[T]{wkeys[j], f, true})
		}
	}
	if len(bare) > 0 {
		if err := c.loadManyWithoutStore(ctx, bare, "", load, out); err != nil && !c.staleForAll(ctx, err, bare, stales, out) {
			return nil, err
		}
	}

	var again []string
	for _, w := range waits {
		v, err, retry := await(ctx, w.f, w.owner)
		switch {
		case retry:
			again = append(again, w.key)
		case errors.Is(err, ErrNotFound):
		case err != nil:
			if !c.staleForAll(ctx, err, []string{w.key}, stales, out) {
				return nil, err
			}
		default:
			out[w.key] = v
		}
	}
	return again, nil
}

// staleForAll serves, for a failed load of keys, their expired values into out, if
// stale-if-error allows it for every one of them; it reports whether it did.
func (c *Cache[T]) staleForAll(ctx context.Context, err error, keys []string, stales map[string]*staleValue[T], out map[string]T) bool {
	if ctx.Err() != nil || errors.Is(err, ErrNotFound) {
		return false
	}
	for _, k := range keys {
		if s := stales[k]; s == nil || !c.staleOK(s) {
			return false
		}
	}
	for _, k := range keys {
		c.onStaleServed()
		if s := stales[k]; !s.notFound {
			out[k] = s.v
		}
	}
	return true
}

// loadManyUnder runs one batch load for keys, all leased under tok, and settles every flight:
// values and not-founds are filled in one store round trip (per node), errors release the
// leases.
func (c *Cache[T]) loadManyUnder(ctx context.Context, fs []*flight[T], keys []string, tok string, load func(context.Context, []string) (map[string]T, error)) {
	start := time.Now()
	m, err, pe := callLoader(ctx, func(ctx context.Context) (map[string]T, error) { return load(ctx, keys) })
	c.settleMany(ctx, fs, keys, tok, m, err, pe, time.Since(start))
}

// settleMany is settle for a batch loaded under tok, one flight per key: values and
// not-founds are filled in one store round trip (per node), errors release the leases.
func (c *Cache[T]) settleMany(ctx context.Context, fs []*flight[T], keys []string, tok string, m map[string]T, err error, pe *PanicError, delta time.Duration) {
	allNotFound := errors.Is(err, ErrNotFound)
	if pe != nil || (err != nil && !allNotFound) {
		for i, f := range fs {
			f.panicked, f.err = pe, err
			_, _ = c.release(ctx, c.cfg.prefix+keys[i], tok)
		}
		return
	}
	entries := make([]FillEntry, 0, len(keys))
	filled := make([]*flight[T], 0, len(keys))
	for i, f := range fs {
		sk := c.cfg.prefix + keys[i]
		v, found := m[keys[i]]
		found = found && !allNotFound
		f.loaded = true
		if found {
			f.val = v
		} else {
			f.err = ErrNotFound
		}
		data, ttl, ok := c.encode(v, !found, delta)
		if !ok {
			held, rerr := c.release(ctx, sk, tok)
			f.retry = !held || rerr != nil
			continue
		}
		entries = append(entries, FillEntry{Key: sk, Value: data, TTL: ttl})
		filled = append(filled, f)
	}
	if len(entries) == 0 {
		return
	}
	stored, ferr := storeCall(c, context.WithoutCancel(ctx), func(ctx context.Context) ([]bool, error) {
		return c.store.FillMany(ctx, tok, entries)
	})
	for i, f := range filled {
		f.retry = ferr != nil || !stored[i]
	}
}

// loadManyWithoutStore loads keys with one call of load, without waiting on the store, on a
// goroutine the Cache owns, so the caller can leave when ctx ends. If tok is the token of a
// lookup that failed on the caller's side, the store may have granted it for some keys: the
// values are offered to the store under it afterwards, which frees other processes waiting.
func (c *Cache[T]) loadManyWithoutStore(ctx context.Context, keys []string, tok string, load func(context.Context, []string) (map[string]T, error), out map[string]T) error {
	type result struct {
		m   map[string]T
		err error
		pe  *PanicError
	}
	var res result
	f := c.launch(ctx, flightKey{key: "\x00batch", token: c.tokens.next()}, 0, c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		start := time.Now()
		res.m, res.err, res.pe = callLoader(lctx, func(ctx context.Context) (map[string]T, error) { return load(ctx, keys) })
		if tok == "" {
			return
		}
		m, err, pe, delta := res.m, res.err, res.pe, time.Since(start)
		c.background(func() {
			discard := make([]*flight[T], len(keys))
			for i := range discard {
				discard[i] = new(flight[T])
			}
			c.settleMany(context.WithoutCancel(lctx), discard, keys, tok, m, err, pe, delta)
		})
	})
	if f == nil {
		return ErrClosed
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if res.pe != nil {
		panic(res.pe)
	}
	if errors.Is(res.err, ErrNotFound) {
		return nil
	}
	if res.err != nil {
		return res.err
	}
	if f.err != nil {
		return f.err // the loader called Goexit
	}
	for _, k := range keys {
		if v, ok := res.m[k]; ok {
			out[k] = v
		}
	}
	return nil
}

// oneOf adapts a batch loader to one key, for a key whose lease another caller held when this
// batch began and which this batch ends up loading itself.
func oneOf[T any](load func(context.Context, []string) (map[string]T, error), key string) func(context.Context) (T, error) {
	return func(ctx context.Context) (T, error) {
		m, err := load(ctx, []string{key})
		if err != nil {
			var zero T
			return zero, err
		}
		v, ok := m[key]
		if !ok {
			return v, fmt.Errorf("%w: %q left out by the loader", ErrNotFound, key)
		}
		return v, nil
	}
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
