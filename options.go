package cacheaside

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults of the options. Each option's doc repeats its default.
const (
	DefaultTTL             = 5 * time.Minute
	DefaultNegativeTTL     = 10 * time.Second
	DefaultPrefix          = "cacheaside:"
	DefaultTTLJitter       = 0.1
	DefaultLoadTimeout     = 10 * time.Second
	DefaultStoreTimeout    = 50 * time.Millisecond
	DefaultConnectTimeout  = 500 * time.Millisecond
	DefaultMaxValueSize    = 1 << 20
	DefaultBreakerFailures = 5
	DefaultProbeInterval   = 500 * time.Millisecond
	DefaultLeaseWaitMin    = 2 * time.Millisecond
	DefaultLeaseWaitMax    = 100 * time.Millisecond

	DefaultInvalidateTimeout = 10 * time.Second

	DefaultBatchLoadSize        = 0 // no cap: one loader call per batch
	DefaultBatchLoadConcurrency = 4
)

// Option configures a Cache. Options are checked by New, which reports every invalid one.
type Option func(*config)

type config struct {
	ttl             time.Duration
	negativeTTL     time.Duration
	prefix          string
	beta            float64
	staleRevalidate time.Duration
	staleIfError    time.Duration
	localMax        int
	localTTL        time.Duration
	jitter          float64
	loadTimeout     time.Duration
	leaseTTL        time.Duration // 0: loadTimeout
	storeTimeout    time.Duration
	connectTimeout  time.Duration
	invalTimeout    time.Duration // WithInvalidateTimeout
	maxValueSize    int
	codec           Codec
	wire            wireOptions // WithCompression, WithEncryption
	breakerFailures int
	probeInterval   time.Duration
	leaseWaitMin    time.Duration
	leaseWaitMax    time.Duration
	obs             observeConfig // metrics, logs, traces: metrics.go
	batchLoadSize   int           // 0: no cap
	batchLoadConc   int
	errs            []error
}

func defaultConfig() config {
	return config{
		ttl:             DefaultTTL,
		negativeTTL:     DefaultNegativeTTL,
		prefix:          DefaultPrefix,
		jitter:          DefaultTTLJitter,
		loadTimeout:     DefaultLoadTimeout,
		storeTimeout:    DefaultStoreTimeout,
		connectTimeout:  DefaultConnectTimeout,
		invalTimeout:    DefaultInvalidateTimeout,
		maxValueSize:    DefaultMaxValueSize,
		codec:           JSONCodec{},
		wire:            wireOptions{compressAt: DefaultCompressionThreshold},
		breakerFailures: DefaultBreakerFailures,
		probeInterval:   DefaultProbeInterval,
		leaseWaitMin:    DefaultLeaseWaitMin,
		leaseWaitMax:    DefaultLeaseWaitMax,
		batchLoadSize:   DefaultBatchLoadSize,
		batchLoadConc:   DefaultBatchLoadConcurrency,
	}
}

func (c *config) invalid(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
}

func (c *config) err() error { return errors.Join(c.errs...) }

func (c *config) positive(name string, d time.Duration) bool {
	if d <= 0 {
		c.invalid("%s must be positive, got %v", name, d)
		return false
	}
	return true
}

func (c *config) notNegative(name string, d time.Duration) bool {
	if d < 0 {
		c.invalid("%s must not be negative, got %v", name, d)
		return false
	}
	return true
}

// WithTTL sets the lifetime of a cached value. Default: DefaultTTL (5 minutes). It must be
// positive. The stored lifetime is shortened by up to the jitter fraction (WithTTLJitter).
func WithTTL(d time.Duration) Option {
	return func(c *config) {
		if c.positive("TTL", d) {
			c.ttl = d
		}
	}
}

// WithPrefix sets the namespace of every key this cache writes: the store key is prefix+key.
// InvalidatePattern never reaches outside it. Default: DefaultPrefix ("cacheaside:"). Give
// each Cache of a distinct type its own prefix, and none that begins with another's: "a:" and
// "a:b:" would share the store key "a:b:x" but not their invalidation channels.
func WithPrefix(p string) Option {
	return func(c *config) { c.prefix = p }
}

// WithNegativeTTL sets the lifetime of a cached ErrNotFound. 0 disables negative caching.
// Default: DefaultNegativeTTL (10 seconds). It must not be negative.
func WithNegativeTTL(d time.Duration) Option {
	return func(c *config) {
		if c.notNegative("negative TTL", d) {
			c.negativeTTL = d
		}
	}
}

// WithEarlyRefresh turns on XFetch probabilistic early refresh (see xfetch.go) with the given
// beta: a hit on a value that expires in r, whose last load took delta, is refreshed with
// probability exp(-r/(delta*beta)), so a hot key is reloaded shortly before it expires and
// its readers never wait for the load. The caller that triggers the refresh gets the current
// value at once; the reload runs in the background under the key's lease, so one refresh
// happens across all processes, and an Invalidate during it voids its fill. 1 is the paper's
// recommended value; larger refreshes earlier. 0 disables. Default: 0 (off). It must be
// finite and not negative. It does not change how long the store keeps values.
func WithEarlyRefresh(beta float64) Option {
	return func(c *config) {
		if beta < 0 || math.IsNaN(beta) || math.IsInf(beta, 0) {
			c.invalid("early refresh beta must be finite and >= 0, got %v", beta)
			return
		}
		c.beta = beta
	}
}

// WithStaleWhileRevalidate lets a value be served for up to d past its TTL while one
// background reload, under the key's lease (one across all processes), replaces it: a hot key
// read within d of its expiry never makes a caller wait for a load. Past d the value is a
// miss, loaded by the caller. 0 disables. Default: 0 (off). It must not be negative.
//
// The store keeps each value for its TTL plus the longer of this window and the
// stale-if-error window (WithStaleIfError); the TTL (WithTTL, shortened by WithTTLJitter)
// stays the value's logical lifetime, the one these windows and early refresh count from.
// Not-found entries (WithNegativeTTL) follow the same rules.
func WithStaleWhileRevalidate(d time.Duration) Option {
	return func(c *config) {
		if c.notNegative("stale-while-revalidate window", d) {
			c.staleRevalidate = d
		}
	}
}

// WithStaleIfError lets a value be served for up to d past its TTL when the load that should
// replace it fails with an error other than ErrNotFound: the caller gets the old value and no
// error. A caller whose own context ends still gets ctx.Err(). 0 disables. Default: 0 (off).
// It must not be negative.
//
// The store keeps each value for its TTL plus the longer of this window and the
// stale-while-revalidate window (WithStaleWhileRevalidate).
func WithStaleIfError(d time.Duration) Option {
	return func(c *config) {
		if c.notNegative("stale-if-error window", d) {
			c.staleIfError = d
		}
	}
}

// WithLocalCache puts an in-process cache of up to maxEntries decoded values, each kept for
// at most ttl, in front of the store. Default: none. maxEntries and ttl must be positive.
//
// The local TTL is measured on a coarse clock the Cache owns (a goroutine reads the time every
// millisecond; Close stops it), so that a hit reads no clock: an entry may be served up to one
// tick (1 ms) past its ttl, and later still by however long that goroutine is kept from
// running (a loaded machine, a stop-the-world pause); it may also be dropped up to a tick
// early. This loosens only the local TTL: invalidations (the generation check of every hit)
// are exactly as strict as without it, and an entry whose value's logical expiry falls within
// a second of the end of its ttl has that expiry checked on the precise clock on every hit, so
// no value is served past its logical expiry unless the coarse clock falls more than a second
// behind.
func WithLocalCache(maxEntries int, ttl time.Duration) Option {
	return func(c *config) {
		if maxEntries <= 0 {
			c.invalid("local cache size must be positive, got %d", maxEntries)
			return
		}
		if c.positive("local cache TTL", ttl) {
			c.localMax, c.localTTL = maxEntries, ttl
		}
	}
}

// WithTTLJitter shortens each stored TTL by a random fraction in [0, f), so that keys filled
// together do not expire together. 0 disables. Default: DefaultTTLJitter (0.1, up to 10%
// shorter). It must be in [0, 1).
func WithTTLJitter(f float64) Option {
	return func(c *config) {
		if !(f >= 0 && f < 1) {
			c.invalid("TTL jitter must be in [0, 1), got %v", f)
			return
		}
		c.jitter = f
	}
}

// WithLoadTimeout bounds a shared load: the loader runs on a context detached from its
// callers' cancellation (context.WithoutCancel of the first caller's context) with this
// timeout. Default: DefaultLoadTimeout (10 seconds). It must be positive.
func WithLoadTimeout(d time.Duration) Option {
	return func(c *config) {
		if c.positive("load timeout", d) {
			c.loadTimeout = d
		}
	}
}

// WithLeaseTTL sets how long a lease guards a load. A load that outlives its lease loses the
// right to fill and the next caller takes over, so keep it at least the load timeout.
// Default: the load timeout (WithLoadTimeout). It must be positive.
func WithLeaseTTL(d time.Duration) Option {
	return func(c *config) {
		if c.positive("lease TTL", d) {
			c.leaseTTL = d
		}
	}
}

// WithStoreTimeout bounds each store operation a caller waits on. When it passes, the
// operation counts as a failure and the caller goes on without the store (fail open).
// Default: DefaultStoreTimeout (50 milliseconds). It must be positive.
func WithStoreTimeout(d time.Duration) Option {
	return func(c *config) {
		if c.positive("store timeout", d) {
			c.storeTimeout = d
		}
	}
}

// WithConnectTimeout bounds each store operation until the store has answered once, while
// the client is still dialling its connections (a cold pool under a burst is slower than any
// steady-state operation), and the first failure in that state opens the circuit breaker at
// once: a store that never answered costs each caller at most this, once. It is never
// shorter than the store timeout. Default: DefaultConnectTimeout (500 milliseconds). It must
// be positive.
func WithConnectTimeout(d time.Duration) Option {
	return func(c *config) {
		if c.positive("connect timeout", d) {
			c.connectTimeout = d
		}
	}
}

// WithInvalidateTimeout bounds Invalidate and InvalidatePattern, retries included. They do
// not share the read path's store timeout: a write must not leave a stale entry because the
// store was busy for a moment. Each attempt of an Invalidate is bounded by one second (or what
// is left of d); a failed attempt is retried with backoff (10 milliseconds doubling to one
// second, jittered) until it succeeds, d has passed, or the caller's ctx ends. An attempt of
// an InvalidatePattern (a SCAN of every master) may take all of d. Default:
// DefaultInvalidateTimeout (10 seconds). It must be positive.
func WithInvalidateTimeout(d time.Duration) Option {
	return func(c *config) {
		if c.positive("invalidate timeout", d) {
			c.invalTimeout = d
		}
	}
}

// WithMaxValueSize sets the largest encoded value (envelope included) the cache stores, in
// bytes, both as stored and before compression: the decompressed size of a stored value is
// bounded by it too. Larger values are returned to callers but not stored. 0 means no limit.
// Default: DefaultMaxValueSize (1 MiB). It must not be negative.
func WithMaxValueSize(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.invalid("max value size must not be negative, got %d", n)
			return
		}
		c.maxValueSize = n
	}
}

// WithCodec sets how values are encoded: JSONCodec, RawCodec (for []byte and string), the
// MessagePack codec of package codec/msgpack, the Protocol Buffers codec of package codec/proto
// (for pointers to generated messages), or your own (see Codec and codec.Binder). New fails with
// ErrInvalidOption if the codec cannot encode the cached type. Values written by another codec
// or for another type read as misses, and so do values of an earlier shape of the type (a
// struct field added, removed, renamed, retyped or retagged): see schema.go. Default: JSONCodec.
func WithCodec(codec Codec) Option {
	return func(c *config) {
		if codec == nil {
			c.invalid("codec must not be nil")
			return
		}
		c.codec = codec
	}
}

// WithCircuitBreaker sets after how many consecutive store failures the cache stops using the
// store, and how often it then probes the store in the background; the first probe that
// succeeds puts the store back in use. Defaults: DefaultBreakerFailures (5) and
// DefaultProbeInterval (500 milliseconds). Both must be positive.
func WithCircuitBreaker(failures int, probeInterval time.Duration) Option {
	return func(c *config) {
		if failures <= 0 {
			c.invalid("breaker failures must be positive, got %d", failures)
			return
		}
		if c.positive("breaker probe interval", probeInterval) {
			c.breakerFailures, c.probeInterval = failures, probeInterval
		}
	}
}

// WithLeaseWait sets the backoff of a caller waiting for another process's lease: it polls
// the store after min, doubling up to max, never past the lease's own expiry. Defaults:
// DefaultLeaseWaitMin (2 ms) and DefaultLeaseWaitMax (100 ms). 0 < min <= max.
func WithLeaseWait(min, max time.Duration) Option {
	return func(c *config) {
		if min <= 0 || max < min {
			c.invalid("lease wait needs 0 < min <= max, got %v, %v", min, max)
			return
		}
		c.leaseWaitMin, c.leaseWaitMax = min, max
	}
}

// WithBatchLoadSize caps the keys of one loader call of GetOrLoadMany (and Warm): the keys to
// load are split into chunks of at most n, one loader call each, at most the batch load
// concurrency (WithBatchLoadConcurrency) of them running at once for one batch. Each chunk's
// values are returned, cached and shared with concurrent callers as soon as that chunk is
// done, and a chunk's load timeout starts when the chunk starts. 0 means no cap: load is called
// once with every key to load. Default: DefaultBatchLoadSize (0). It must not be negative.
//
// All leases of a batch are taken in its one lookup round trip: with many chunks queued
// behind each other, keep the lease TTL (WithLeaseTTL) above the time they take, or the
// chunks loaded last may find their leases taken over.
func WithBatchLoadSize(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.invalid("batch load size must not be negative, got %d", n)
			return
		}
		c.batchLoadSize = n
	}
}

// WithBatchLoadConcurrency bounds how many loader calls (chunks, see WithBatchLoadSize) of
// one batch run at once. Default: DefaultBatchLoadConcurrency (4). It must be positive.
func WithBatchLoadConcurrency(n int) Option {
	return func(c *config) {
		if n <= 0 {
			c.invalid("batch load concurrency must be positive, got %d", n)
			return
		}
		c.batchLoadConc = n
	}
}
