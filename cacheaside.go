// Package cacheaside is a cache-aside layer for Go services over Redis (standalone, Sentinel,
// Cluster) or process memory: wrap repository reads in GetOrLoad, call Invalidate after each
// database write.
//
// With default options a Cache guarantees:
//
//  1. Stampede: any number of goroutines in any number of processes asking for one missing
//     key cause one loader call, as long as the load finishes within its lease.
//  2. No stale set: once Invalidate(k) has returned, a value that a loader began loading
//     before that call is never stored for k, and a GetOrLoad(k) that starts after it
//     returned never returns such a value.
//  3. Fail open: when the store errors or is unreachable, GetOrLoad returns the loader's
//     value with no error, and after a few failures stops waiting on the store at all until a
//     background probe finds it answering again.
//  4. Bad data: bytes at a cache key that do not decode are a miss, replaced by the next fill;
//     so are values of another codec or type, or of another shape of the type (schema.go).
//  5. Cancellation: a caller whose context ends gets ctx.Err() promptly; the shared load goes
//     on for the other callers.
//
// The lease protocol behind 1 and 2 is described in lock.go.
package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/internal/breaker"
	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/cacheaside/cacheaside/internal/glob"
)

// Cache is a cache-aside layer for values of type T over a Store. It is safe for concurrent
// use. Values handed to several callers of one shared load are the same value: treat them as
// read-only.
type Cache[T any] struct {
	store    Store
	cfg      config
	schema   uint32
	leaseTTL time.Duration
	tokens   *tokens
	gens     *generations
	breaker  *breaker.Breaker
	warm     atomic.Bool      // the store has answered once
	lookups  *lookupShards[T] // nil for a store without round trips (MemoryStore)
	mem      InProcessStore   // the store, when it is in this process: no timeouts, hits peeked
	obs      *observer        // metrics, logs and traces: metrics.go
	vc       valueCodec[T]    // the codec, bound to T (codec.go)
	wire     wire             // compression, encryption, limits (wire.go)

	// Local cache and invalidation broadcast (local.go, broadcast.go).
	l1      *local[T]   // nil without WithLocalCache
	bus     Broadcaster // nil if the store cannot broadcast: Invalidate then publishes nothing
	channel string      // this prefix's invalidation channel

	// Early refresh and stale windows (xfetch.go). Hits read the clock only when timed.
	timed    bool
	extraTTL time.Duration  // physical TTL - logical TTL: the longer stale window
	now      func() int64   // Unix nanoseconds; injectable for tests
	rand     func() float64 // uniform in [0,1); injectable for tests
	stats    stats
	backoff  refreshBackoff // keys whose background refresh failed lately (refresh_backoff.go)

	mu      sync.Mutex
	flights map[flightKey]*flight[T]
	seq     atomic.Uint64 // numbers flights in launch order
	closed  atomic.Bool

	life context.Context // cancelled by Close
	stop context.CancelFunc
	wg   sync.WaitGroup // flights and the breaker's prober

	// unsafeSkipLeaseCheck breaks guarantee 2 on purpose: a finished load overwrites the key
	// (it voids every lease and fills under a fresh one) instead of filling only if its own
	// lease still holds, as a cache without leases would. Only tests set it (before first
	// use), to show the linearizability checker catches the stale set it lets back in. It
	// costs one predictable branch on the fill path, none on the hit path.
	unsafeSkipLeaseCheck bool
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
	c := &Cache[T]{
		store:    store,
		cfg:      cfg,
		schema:   schemaOf(cfg.codec, schema), // schema.go
		leaseTTL: cfg.leaseTTL,
		tokens:   newTokens(),
		gens:     newGenerations(),
		flights:  make(map[flightKey]*flight[T]),
		vc:       vc,
		wire:     newWire(cfg, store),
		bus:      bus,
		channel:  invalidationChannel(cfg.prefix),
		timed:    cfg.beta > 0 || cfg.staleRevalidate > 0 || cfg.staleIfError > 0,
		extraTTL: max(cfg.staleRevalidate, cfg.staleIfError),
		now:      func() int64 { return time.Now().UnixNano() },
		rand:     rand.Float64,
	}
	if m, inProcess := store.(InProcessStore); inProcess {
		c.mem = m
	} else {
		c.lookups = newLookupShards[T]()
	}
	if c.leaseTTL == 0 {
		c.leaseTTL = cfg.loadTimeout
	}
	c.obs = newObserver(&c.cfg, c.lookups != nil)
	c.breaker = breaker.New(cfg.breakerFailures, c.obs.breakerChanged)
	c.obs.breaker = c.breaker
	if err := c.obs.register(); err != nil {
		return nil, err
	}
	c.life, c.stop = context.WithCancel(context.Background())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.breaker.Run(c.life, cfg.probeInterval, max(cfg.storeTimeout, cfg.connectTimeout), func(ctx context.Context) error {
			ctx, obs := c.obs.storeStart(ctx, opPing)
			err := store.Ping(ctx)
			c.obs.storeEnd(obs, err, c.life.Err() != nil)
			if err == nil {
				c.warm.Store(true)
			}
			return err
		})
	}()
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
		if ctx, err = withCallOptions(ctx, opts); err != nil {
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
	if c.closed.Load() {
		return zero, ErrClosed
	}
	if e := c.l1Hit(key); e != nil { // local.go
		if c.timed && c.judge(e.header()) == serveRefresh {
			c.refresh(ctx, key, c.gens.load(key), e.raw, true, load)
		}
		if e.notFound {
			c.obs.request(ctx, key, resultNegativeHit)
			return zero, ErrNotFound
		}
		c.obs.request(ctx, key, resultL1Hit)
		return e.val, nil
	}
	sk := c.cfg.prefix + key
	for {
		if err := ctx.Err(); err != nil {
			return zero, err
		}
		gen := c.gens.load(key)
		var f *flight[T]
		owner := false
		tok := ""               // the lease token of a lookup that failed: the store may have granted it
		var stale staleValue[T] // an expired value seen by this pass, for stale-if-error
		if c.breaker.Allow() {
			lk, lf, err := c.read(ctx, sk, gen, load)
			if err == nil && lk.Value != nil {
				v, h, ok := c.decode(sk, lk.Value)
				if ok {
					if vd := c.judge(h); vd != expired {
						if vd != serveIt {
							c.refresh(ctx, key, gen, lk.Value, vd == serveRefresh, load)
						}
						c.obs.request(ctx, key, resultOf(vd, h))
						c.l1Fill(key, gen, v, lk.Value) // kept only until its logical expiry
						if h.NotFound() {
							return zero, ErrNotFound
						}
						return v, nil
					}
					stale = c.keepStale(v, h) // expired: replace it like bad data
				}
				tok = c.tokens.next()
				if lk, err = c.leaseOver(ctx, sk, tok); err == nil && lk.Granted {
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
		if f == nil && !c.closed.Load() {
			f, owner = c.loadWithoutStore(ctx, sk, tok, gen, load)
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
	since := c.seq.Load()
	for {
		c.mu.Lock()
		f := c.flights[k]
		c.mu.Unlock()
		if f == nil {
			break
		}
		if f.seq > since {
			c.obs.coalesced(ctx, coalescedFlight)
			if tok != "" {
				c.abandon(ctx, sk, tok)
			}
			return f, false
		}
		select {
		case <-f.done: // it is unregistered before done closes
		case <-ctx.Done():
			if tok != "" {
				c.abandon(ctx, sk, tok)
			}
			return nil, false
		}
	}
	return c.launch(ctx, k, gen, c.cfg.loadTimeout, func(lctx context.Context, f *flight[T]) {
		c.stats.storeless.Add(1)
		lctx, obs := c.obs.loadStart(lctx, sk)
		defer obs.end()
		f.val, f.err, f.panicked = callLoader(lctx, load)
		c.obs.loadDone(&obs, f.err, f.panicked)
		if tok != "" {
			c.abandon(lctx, sk, tok)
		}
	}), true
}

// background runs fn on a goroutine the Cache owns (Close waits for it), unless the Cache is
// closed.
func (c *Cache[T]) background(fn func()) {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		fn()
	}()
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
	h := envelope.Header{Expiry: c.now() + int64(ttl), Delta: delta, Schema: c.schema}
	ttl += c.extraTTL
	if notFound {
		h.Flags = envelope.FlagNotFound
	}
	data, ok = c.frame(sk, h, &v)
	return data, ttl, ok
}

// Invalidate removes keys from the cache and voids every outstanding lease on them, so no load
// that began before it can store its value, and no call that begins after it returns is
// served one. Call it after each write to the source of truth. It always tries the store,
// even with the breaker open, and returns an error if the store could not be reached: the
// entries then live until their TTL.
//
// Then it publishes the keys on the store's invalidation channel of this cache's prefix
// (RedisStore: Redis pub/sub; MemoryStore: in process), and every instance with a local cache
// (WithLocalCache) drops them from it on receipt. It does so with or without a local cache of
// its own, so instances that have one stay coherent with those that do not. If the publish
// fails, Invalidate returns an error: this instance is up to date, but other instances' local
// caches may serve the old value until their local TTL.
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if len(keys) == 0 {
		return nil
	}
	c.obs.invalidated(invalidatedKey, len(keys))
	sks := make([]string, len(keys))
	for i, k := range keys {
		sks[i] = c.cfg.prefix + k
		c.gens.bump(k) // before the delete: stop local store-less joins and L1 fills early
	}
	err := c.deleteAndPublish(ctx, sks, encodeKeysMsg(c.tokens.id, keys)) // broadcast.go
	for _, k := range keys {
		c.gens.bump(k) // after the delete: a load or L1 fill that began in between is not used either
	}
	c.l1Forget(keys)
	if err != nil {
		return fmt.Errorf("cacheaside: invalidate: %w", err)
	}
	return nil
}

// InvalidatePattern removes every entry of this cache whose key matches the Redis glob
// pattern, and voids their leases. It matches within this cache's prefix only (the prefix's
// own glob characters are escaped), uses SCAN on every master, never KEYS, and returns the
// number of cached entries removed. An empty pattern is refused. It runs on ctx without the
// store timeout: give ctx a deadline.
//
// Then it tells every instance to clear its local cache (WithLocalCache) of this prefix
// entirely, as Invalidate does for keys (see Invalidate for a failed publish).
func (c *Cache[T]) InvalidatePattern(ctx context.Context, pattern string) (int, error) {
	if c.closed.Load() {
		return 0, ErrClosed
	}
	if pattern == "" {
		return 0, errors.New("cacheaside: invalidate pattern: empty pattern")
	}
	c.obs.invalidated(invalidatedPattern, 1)
	c.gens.bumpAll()
	sctx, obs := c.obs.storeStart(ctx, opDeletePattern)
	n, err := c.store.DeletePattern(sctx, glob.Escape(c.cfg.prefix)+pattern)
	c.obs.storeEnd(obs, err, ctx.Err() != nil)
	c.l1Flush() // bumps the epoch again
	err = errors.Join(err, c.publish(ctx, encodeAllMsg(c.tokens.id, pattern)))
	if err != nil {
		return n, fmt.Errorf("cacheaside: invalidate pattern: %w", err)
	}
	return n, nil
}

// Close stops the cache's goroutines: the store prober, and the loads in flight, whose
// contexts it cancels. It waits for them, and leaves the store open. Calls after Close return
// ErrClosed. Close is idempotent.
func (c *Cache[T]) Close() error {
	c.mu.Lock()
	if c.closed.Swap(true) {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	c.obs.unregister()
	if c.l1 != nil {
		c.l1.live.Store(false)
		c.l1.entries.StopAllGoroutines()
	}
	return nil
}
