package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
)

// Cache is a cache-aside layer for values of type T over a Store. It is safe for concurrent
// use. Values handed to several callers of one shared load are the same value: treat them as
// read-only.
type Cache[T any] struct {
	gw      *gateway // every store call, bounded, metered, breaker-guarded (gateway.go)
	cfg     config
	entries *entries[T] // values to stored entries and back (entry.go)
	gens    *generations
	lookups *lookupShards[T] // nil for a store without round trips (MemoryStore)
	wakes   *wakes           // wake-ups of lease waiters (wake.go); nil if the store has none
	// scriptFirst > 0: lookups send the lease script first, not a plain read (lookup.go).
	scriptFirst atomic.Int32
	obs         *observer // metrics, logs and traces: metrics.go

	l1    *local[T]    // the local cache (local.go); nil without WithLocalCache
	inval *invalidator // the store side of invalidations, and their broadcast (invalidate.go)
	tags  *tagger      // tag records of loads, for InvalidateTags (tags.go)

	fresh *refresher // early refresh, stale windows, refresh backoff, the clock (xfetch.go)
	stats stats

	life    *lifecycle      // goroutines, the context Close cancels, closed (lifecycle.go)
	flights *flightGroup[T] // the flights in this process (flight.go)
	calls   *callGate       // the calls running (gate.go): Close waits for them

	// unsafeSkipLeaseCheck breaks guarantee 2 on purpose: a finished load overwrites the key
	// (it voids every lease and fills under a fresh one) instead of filling only if its own
	// lease still holds, as a cache without leases would. Only tests set it (before first
	// use), to show the linearizability checker catches the stale set it lets back in. It
	// costs one predictable branch on the fill path, none on the hit path.
	unsafeSkipLeaseCheck bool
	// unsafeLateTags breaks guarantee 2 for tags on purpose: a load records its tags after the
	// loader returned rather than before it began, so an InvalidateTags during the load does
	// not find its key. Only tests set it, to show the linearizability checker catches it.
	unsafeLateTags bool
}

var errNilLoader = errors.New("cacheaside: nil loader")

// New returns a Cache over store. It returns an error wrapping ErrInvalidOption for an invalid
// option, and an error for a nil store.
func New[T any](store Store, opts ...Option) (*Cache[T], error) {
	if store == nil || (reflect.ValueOf(store).Kind() == reflect.Pointer && reflect.ValueOf(store).IsNil()) {
		return nil, errors.New("cacheaside: nil store")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			cfg.invalid("nil option")
			continue
		}
		o(&cfg)
	}
	if err := cfg.err(); err != nil {
		return nil, err
	}
	vc, schema, err := bindCodec[T](cfg.codec)
	if err != nil {
		return nil, err
	}
	bus, _ := store.(Broadcaster)
	if cfg.localMax > 0 && bus == nil {
		return nil, fmt.Errorf("%w: WithLocalCache needs a store that broadcasts invalidations (a Broadcaster, as RedisStore and MemoryStore are); %T is not", ErrInvalidOption, store)
	}
	life := newLifecycle()
	c := &Cache[T]{
		life:    life,
		flights: newFlightGroup[T](life),
		cfg:     cfg,
		calls:   newCallGate(),
		gens:    newGenerations(),
		fresh:   newRefresher(&cfg),
	}
	_, inProcess := store.(InProcessStore)
	if !inProcess {
		c.lookups = newLookupShards[T]()
	}
	c.wakes = newWakes(store, cfg.prefix, life)
	c.obs = newObserver(&c.cfg, !inProcess)
	c.gw = newGateway(store, &c.cfg, c.obs, life)
	c.inval = &invalidator{gw: c.gw, bus: bus, channel: invalidationChannel(cfg.prefix), budget: cfg.invalTimeout}
	c.tags = &tagger{gw: c.gw, inval: c.inval, prefix: cfg.prefix, ttl: cfg.ttl, negativeTTL: cfg.negativeTTL, extraTTL: c.fresh.extraTTL}
	c.entries = &entries[T]{
		vc: vc, schema: schemaOf(cfg.codec, schema), wire: newWire(cfg, store), // schema.go, wire.go
		ttl: cfg.ttl, negativeTTL: cfg.negativeTTL, jitter: cfg.jitter, fresh: c.fresh, obs: c.obs,
	}
	if err := c.obs.register(); err != nil {
		return nil, err
	}
	c.life.goOwned(func() {
		c.gw.breaker.Run(c.life.ctx, cfg.probeInterval, max(cfg.storeTimeout, cfg.connectTimeout), func(ctx context.Context) error {
			ctx, obs := c.obs.storeStart(ctx, opPing)
			err := store.Ping(ctx)
			c.obs.storeEnd(obs, err, c.life.closing())
			if err == nil {
				c.gw.warm.Store(true)
			}
			return err
		})
	})
	if cfg.localMax > 0 {
		c.l1 = newLocal[T](&c.cfg, c.entries.schema, c.gens, c.fresh)
		c.l1.subscribe(bus, c.inval.channel, c.gw.tokens.id, c.obs, c.life)
	}
	return c, nil
}

// GetOrLoad returns the value cached for key, or loads it with load, caches it and returns it.
//
// Concurrent callers for one missing key share one load, across processes through the store's
// lease on the key. load runs on a context that callers' cancellation does not end, bounded by
// the load timeout; each caller leaves when its own ctx ends. If load returns an error that
// wraps ErrNotFound, that answer is cached for the negative TTL; any other error is returned
// and not cached. If load panics, every caller sharing it panics with a *PanicError.
//
// With WithEarlyRefresh or WithStaleWhileRevalidate, a hit may also start one background
// refresh of the key with load (the caller does not wait for it); with WithStaleIfError, a
// failed load may be answered with the expired value instead of its error (see xfetch.go).
//
// opts apply to this call only (TTL, NegativeTTL); an invalid one is an error wrapping
// ErrInvalidOption.
func (c *Cache[T]) GetOrLoad(ctx context.Context, key string, load func(context.Context) (T, error), opts ...CallOption) (T, error) {
	if len(opts) == 0 && load != nil && !c.obs.noteResult && !c.life.isClosed() {
		// getOrLoad's steps (get.go), taken here: the plain L1 hit answered with one generic
		// call (and one copy of the value) less, 22% of its time.
		e := c.l1.hit(key)
		switch {
		case e == nil:
			return c.fromStore(ctx, key, load)
		case !c.fresh.timed && !e.notFound:
			c.obs.request(ctx, key, resultL1Hit)
			return e.val, nil
		}
		return c.fromL1(ctx, key, e, load)
	}
	if len(opts) > 0 {
		var err error
		if ctx, err = withCallOptions(ctx, opts); err == nil {
			err = c.tags.check(ctx)
		}
		if err != nil {
			var zero T
			return zero, err
		}
	}
	if c.obs.noteResult {
		return tracedGetOrLoad(c, ctx, key, load) // WithHitSpans: tracing.go
	}
	return c.getOrLoad(ctx, key, load)
}

// GetOrLoadMany returns the values of keys, reading every key in one store lookup (on Redis:
// one round trip per node when every key is cached, two with misses, as it reads first and
// leases only the misses; see RedisStore.GetOrLeaseMany) and calling load once with exactly the
// keys that were not cached and whose lease this call won (in chunks, with WithBatchLoadSize). A key that load leaves out of its
// map is not found: it is cached as such for the negative TTL and absent from the result, as
// are cached not-found keys. Duplicate keys are read once.
//
// Keys another caller is loading are not loaded again: a key this process is loading (for a
// GetOrLoad or another batch) is joined; keys whose leases other processes hold are waited
// for together, polling the store for all of them in one round trip per node, and loaded by
// this call's loader if their leases end without a value.
//
// With WithEarlyRefresh or WithStaleWhileRevalidate, hits (L1 hits too) may start a refresh
// of the keys that need one, together, in the background with load (the caller does not wait
// for it); with WithStaleIfError, a failed load may be answered with the expired values
// instead of its error (see xfetch.go).
//
// A load error fails the whole call (nothing is cached for the keys it covered); a load panic
// panics every caller sharing it. With the store unusable, load is called with every key that
// was not resolved, and nothing is stored. load may reorder or keep missing: it is its own.
//
// opts apply to this call only (TTL, NegativeTTL); an invalid one is an error wrapping
// ErrInvalidOption.
func (c *Cache[T]) GetOrLoadMany(ctx context.Context, keys []string, load func(ctx context.Context, missing []string) (map[string]T, error), opts ...CallOption) (map[string]T, error) {
	return c.getOrLoadMany(ctx, keys, load, opts...)
}

// Warm fills the cache for the keys that are not cached yet: it reads them in batches (one
// store round trip per node each) and calls load with the keys of a batch that are missing,
// a few batches at a time. It is GetOrLoadMany without returning the values: leases guard
// every fill, so it is safe alongside concurrent reads and invalidations, keys other callers
// are loading are not loaded again, and an invalidation during a load keeps that load's value
// out of the cache. Duplicate keys count once.
//
// A failed batch does not stop Warm: its keys count as Failed and Warm goes on with the other
// batches, then returns an error joining the distinct errors (up to 10) with the result. A
// loader panic stops Warm and panics in its caller, as in GetOrLoadMany. Cancelling ctx stops
// Warm promptly: it returns the result of the batches done (what they loaded stays cached) and
// ctx.Err(); loads already running finish and fill on their own, as shared loads do.
func (c *Cache[T]) Warm(ctx context.Context, keys []string, load func(ctx context.Context, missing []string) (map[string]T, error), opts ...WarmOption) (WarmResult, error) {
	return c.warm(ctx, keys, load, opts...)
}

// Invalidate removes keys from the cache and voids every outstanding lease on them, so no load
// that began before it can store its value, and no call that begins after it returns is
// served one. Call it after each write to the source of truth.
//
// It returns nil once the store has removed the keys and the other instances have been told
// (below). It does not use the read path's store timeout, and it does not skip the store when
// the circuit breaker is open: each attempt is bounded by one second, and a failed attempt is
// retried with backoff for up to WithInvalidateTimeout (default 10 seconds), or until ctx
// ends. On a store that answers, however busy, it returns nil.
//
// If it cannot complete, it returns an *InvalidationError, for which
// errors.Is(err, ErrInvalidationFailed) holds (and errors.Is(err, ctx.Err()) when ctx ended
// it): the keys it names may then be served with their old value — from the store until
// their TTL, or, when only the broadcast failed (Removed), from other instances' local caches
// until their local TTL. Retry it, or write the invalidation through an outbox (package
// outbox) so that it is delivered once the store answers. Either way, this instance's local
// cache has dropped the keys.
//
// Then it publishes the keys on the store's invalidation channel of this cache's prefix
// (RedisStore: Redis pub/sub; MemoryStore: in process), and every instance with a local cache
// (WithLocalCache) drops them from it on receipt. It does so with or without a local cache of
// its own, so instances that have one stay coherent with those that do not.
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	return c.invalidate(ctx, keys...)
}

// InvalidatePattern removes every entry of this cache whose key matches the Redis glob
// pattern, and voids their leases. It matches within this cache's prefix only (the prefix's
// own glob characters are escaped), uses SCAN on every master, never KEYS, and returns the
// number of cached entries removed. An empty pattern is refused.
//
// Like Invalidate it has its own budget (WithInvalidateTimeout), retries a failed scan with
// backoff within it, ignores the circuit breaker, and returns an *InvalidationError
// (errors.Is(err, ErrInvalidationFailed)) if it cannot complete: entries matching pattern may
// then still be served with their old value. A scan's cost grows with the whole keyspace of
// the store, not with the entries removed: on a large Redis, raise the budget, or name the
// keys (Invalidate).
//
// Then it tells every instance to clear its local cache (WithLocalCache) of this prefix
// entirely, as Invalidate does for keys.
func (c *Cache[T]) InvalidatePattern(ctx context.Context, pattern string) (int, error) {
	return c.invalidatePattern(ctx, pattern)
}

// InvalidateTags removes every entry tagged (Tags, TagsOf) with any of tags, in every
// instance, as Invalidate does for keys: once it has returned nil, a value that a loader began
// loading before the call is never stored under a key its load tagged with one of tags, and no
// GetOrLoad that starts after it returns such a value (with WithLocalCache, on other instances,
// within the broadcast delay, as for Invalidate). Its cost is proportional to the entries
// recorded under the tags since their last InvalidateTags (at most those that may still be
// cached), not to the store's size: a few round trips (RedisStore: read the tags' records,
// delete and publish, remove the records; each pipelined per node).
//
// Like Invalidate it has its own budget (WithInvalidateTimeout), retries with backoff within
// it, and ignores the circuit breaker. On failure it returns an *InvalidationError
// (errors.Is(err, ErrInvalidationFailed)) naming the tags (and the keys it found, if it got that
// far): the tagged entries may then still be served with their old value; retrying finds them
// again. An empty tag is refused; a store without TagStore gives an error wrapping
// ErrTagsUnsupported.
func (c *Cache[T]) InvalidateTags(ctx context.Context, tags ...string) error {
	return c.invalidateTags(ctx, tags...)
}

// Close stops the cache: it refuses new calls, cancels the loads in flight (their loaders'
// contexts end), and returns once every call that was running has returned and every
// goroutine of the Cache (loads, waits, refreshes, the store prober, the L1 subscriber, and the
// idle goroutines it keeps to run the next loads on) has ended. It leaves the store open.
//
// No lease outlives Close: a lease this instance was granted and will not fill (a load that
// Close ended, a read-or-lease that was on the wire when Close began) is released before Close
// returns, so no other process waits for it. The wait is bounded by the loaders honouring
// their context, plus a few store timeouts for the releases.
//
// Calls after Close return ErrClosed; so do the calls that were running, unless their own
// context ended first (they get ctx.Err()) or they had their value already. Close is
// idempotent and always returns nil.
func (c *Cache[T]) Close() error {
	if !c.life.close() {
		return nil
	}
	<-c.calls.close() // running calls return: their flights end now
	c.life.wait()
	c.obs.unregister()
	if c.l1 != nil {
		c.l1.stop()
	}
	return nil
}
