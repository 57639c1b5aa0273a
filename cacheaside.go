package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// Cache is a cache-aside layer for values of type T over a Store. It is safe for concurrent
// use. Values handed to several callers of one shared load are the same value: treat them as
// read-only.
type Cache[T any] struct {
	gw      *gateway // every store call, bounded, metered, breaker-guarded (gateway.go)
	cfg     config
	schema  uint32
	gens    *generations
	lookups *lookupShards[T] // nil for a store without round trips (MemoryStore)
	wakes   *wakes           // wake-ups of lease waiters (wake.go); nil if the store has none
	// scriptFirst > 0: lookups send the lease script first, not a plain read (lookup.go).
	scriptFirst atomic.Int32
	obs         *observer     // metrics, logs and traces: metrics.go
	vc          valueCodec[T] // the codec, bound to T (codec.go)
	wire        wire          // compression, encryption, limits (wire.go)

	// Local cache and invalidation broadcast (local.go, broadcast.go).
	l1      *local[T]   // nil without WithLocalCache
	bus     Broadcaster // nil if the store cannot broadcast: Invalidate then publishes nothing
	channel string      // this prefix's invalidation channel

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
		schema:  schemaOf(cfg.codec, schema), // schema.go
		calls:   newCallGate(),
		gens:    newGenerations(),
		vc:      vc,
		wire:    newWire(cfg, store),
		bus:     bus,
		channel: invalidationChannel(cfg.prefix),
		fresh:   newRefresher(&cfg),
	}
	_, inProcess := store.(InProcessStore)
	if !inProcess {
		c.lookups = newLookupShards[T]()
	}
	c.wakes = newWakes(store, cfg.prefix)
	c.obs = newObserver(&c.cfg, !inProcess)
	c.gw = newGateway(store, &c.cfg, c.obs, life)
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
		c.startLocal(bus)
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
	if len(opts) > 0 {
		var err error
		if ctx, err = withCallOptions(ctx, opts); err == nil {
			err = c.checkTags(ctx)
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

// getOrLoad is GetOrLoad without a span of its own.
func (c *Cache[T]) getOrLoad(ctx context.Context, key string, load func(context.Context) (T, error)) (T, error) {
	var zero T
	if load == nil {
		return zero, errNilLoader
	}
	if c.life.isClosed() {
		return zero, ErrClosed
	}
	if e := c.l1.hit(key); e != nil { // local.go
		if c.fresh.timed && c.fresh.judge(e.header()) == serveRefresh {
			c.refresh(ctx, key, c.gens.load(key), e.raw, true, load)
		}
		if e.notFound {
			c.obs.request(ctx, key, resultNegativeHit)
			return zero, ErrNotFound
		}
		c.obs.request(ctx, key, resultL1Hit)
		return e.val, nil
	}
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
		gen := c.gens.load(key)
		var f *flight[T]
		owner := false
		tok := ""               // the lease token of a lookup that failed: the store may have granted it
		var stale staleValue[T] // an expired value seen by this pass, for stale-if-error
		if c.gw.breaker.Allow() {
			lk, lf, err := c.read(ctx, sk, gen, load)
			if err == nil && lk.Value != nil {
				v, h, ok := c.decode(sk, lk.Value)
				if ok {
					if vd := c.fresh.judge(h); vd != expired {
						if vd != serveIt {
							c.refresh(ctx, key, gen, lk.Value, vd == serveRefresh, load)
						}
						c.obs.request(ctx, key, resultOf(vd, h))
						c.l1.fill(key, gen, v, lk.Value) // kept only until its logical expiry
						if h.NotFound() {
							return zero, ErrNotFound
						}
						return v, nil
					}
					stale = keepStale(c.fresh, v, h) // expired: replace it like bad data
				}
				tok = c.gw.tokens.next()
				if lk, err = c.gw.leaseOver(ctx, sk, tok); err == nil && lk.Granted {
					lf = c.startLoad(ctx, sk, tok, gen, load)
				}
			}
			switch {
			case err != nil && ctx.Err() != nil:
				return zero, ctx.Err()
			case err != nil:
				var le *lookupError
				if errors.As(err, &le) {
					tok = le.token
				}
			case lk.Granted:
				f, owner = lf, true
			default:
				f, owner = c.joinOrWait(ctx, sk, lk.Holder, lk.HolderTTL, gen, load)
			}
		}
		if f == nil && !c.life.isClosed() {
			f, owner = c.loadWithoutStore(ctx, sk, tok, gen, load)
		} else if f == nil && tok != "" {
			c.gw.abandon(ctx, sk, tok) // closing: the failed lookup may have been granted it
		}
		if f == nil {
			if err := ctx.Err(); err != nil {
				return zero, err
			}
			return zero, ErrClosed
		}
		v, err, again := await(ctx, f, owner)
		if !again {
			v, err, served := c.orStale(ctx, v, err, &stale)
			if served {
				c.obs.request(ctx, key, resultStale)
			} else {
				c.obs.request(ctx, key, resultMiss)
			}
			return v, err
		}
	}
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
	return c.flights.launch(ctx, k, gen, c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		c.stats.storeless.Add(1)
		lctx, obs := c.obs.loadStart(lctx, sk)
		defer obs.end()
		f.val, f.err, f.panicked = callLoader(lctx, load)
		c.obs.loadDone(&obs, f.err, f.panicked)
		if tok != "" {
			c.gw.abandon(lctx, sk, tok)
		}
	}), true
}

// decode reads a stored entry at store key sk and its header (h.NotFound() for a cached
// not-found). ok is false for anything that is not a well-formed entry of this cache's codec
// and type, or that does not open (wire.go).
func (c *Cache[T]) decode(sk string, b []byte) (v T, h envelope.Header, ok bool) {
	h, payload, ok := envelope.Decode(b, c.schema)
	if !ok {
		c.wire.rejects.add(rejectFrame)
		c.obs.undecodableValue()
		return v, h, false
	}
	if v, ok = c.unframe(sk, b, h, payload); !ok {
		c.obs.undecodableValue()
		return v, envelope.Header{}, false
	}
	return v, h, true
}

// encode frames a loaded value (or a not-found) for store key sk, with its jittered TTL: the
// TTL of the call whose load it is (callopts.go), else the cache's. ok is false when it must
// not be stored: negative caching off, a codec error, or too large.
func (c *Cache[T]) encode(ctx context.Context, sk string, v T, notFound bool, delta time.Duration) (data []byte, ttl time.Duration, ok bool) {
	ttl = c.fillTTL(ctx, notFound)
	if ttl == 0 {
		return nil, 0, false
	}
	if c.cfg.jitter > 0 {
		ttl -= time.Duration(float64(ttl) * c.cfg.jitter * rand.Float64())
	}
	h := envelope.Header{Expiry: c.fresh.now() + int64(ttl), Delta: delta, Schema: c.schema}
	ttl += c.fresh.extraTTL
	if notFound {
		h.Flags = envelope.FlagNotFound
	}
	data, ok = c.frame(sk, h, &v)
	return data, ttl, ok
}

// Close stops the cache: it refuses new calls, cancels the loads in flight (their loaders'
// contexts end), and returns once every call that was running has returned and every
// goroutine of the Cache (loads, waits, refreshes, the store prober, the L1 subscriber) has
// ended. It leaves the store open.
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
