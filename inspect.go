package cacheaside

// Inspection: a read-only, type-erased view of a Cache and of one key, for operator tools
// (the admin package's page). Nothing here is on the request path, takes a lease, touches an
// expiry, trips the breaker, or moves a counter of Stats: looking at a key changes nothing
// an application could observe.

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// InspectStore is an optional interface of a Store that reads one key's entry without changing
// it. Cache.Inspect needs it; RedisStore and MemoryStore implement it.
type InspectStore interface {
	// Inspect returns what the store holds at key (a store key: prefix included). It changes
	// nothing: it takes no lease, touches no expiry and deletes nothing, not even an entry a
	// read would delete (StoreEntry.Foreign).
	Inspect(ctx context.Context, key string) (StoreEntry, error)
}

// StoreEntry is what a store holds at one key, as InspectStore reports it. The zero value is
// an empty key.
type StoreEntry struct {
	// Value is the stored bytes (the envelope: header, then payload), nil when the key holds no
	// value. Read-only: it may share memory with the store.
	Value []byte
	// TTL is the time left before the store drops the key: 0 when nothing is there, negative
	// when the key has no expiry (only data written by someone else has none).
	TTL time.Duration
	// Lease is true when a live lease is held on the key; LeaseTTL is its time left.
	Lease    bool
	LeaseTTL time.Duration
	// Foreign is true when the key holds data that is not an entry of this store (a Redis key
	// of another type). A read would delete it and treat the key as empty.
	Foreign bool
}

// CacheInfo describes a Cache's configuration, for operator tools. See Cache.Info.
type CacheInfo struct {
	Prefix      string        // WithPrefix: the namespace of every key this cache writes
	Type        string        // the Go type of the cached values
	Codec       string        // the codec's Name
	Store       string        // the Store's Go type
	TTL         time.Duration // WithTTL
	NegativeTTL time.Duration // WithNegativeTTL; 0: not-founds are not cached
	LocalCache  int           // WithLocalCache's max entries; 0: no local cache
	CompressAt  int           // WithCompression's threshold in bytes; 0: no compression
	Encrypted   bool          // WithEncryption
	Inspectable bool          // the store implements InspectStore: Inspect works
}

// Info returns the cache's configuration. It is cheap and safe to call at any time, also after
// Close.
func (c *Cache[T]) Info() CacheInfo {
	_, inspectable := c.gw.store.(InspectStore)
	return CacheInfo{
		Prefix:      c.cfg.prefix,
		Type:        reflect.TypeFor[T]().String(),
		Codec:       c.cfg.codec.Name(),
		Store:       fmt.Sprintf("%T", c.gw.store),
		TTL:         c.cfg.ttl,
		NegativeTTL: c.cfg.negativeTTL,
		LocalCache:  c.cfg.localMax,
		CompressAt:  c.cfg.wire.compressAt,
		Encrypted:   c.cfg.wire.ring != nil,
		Inspectable: inspectable,
	}
}

// KeyInfo is what Cache.Inspect found at one key. It never holds the value itself (see
// Cache.InspectValue), nor a lease token.
type KeyInfo struct {
	Key      string // the key, as the application names it
	StoreKey string // the key in the store: prefix + Key

	// What the store holds.
	Present  bool          // anything at all: a value, a lease, or foreign data
	Value    bool          // a value, of Size bytes as stored (envelope included)
	Size     int           // bytes of the stored value; 0 without one
	TTL      time.Duration // time left before the store drops the key (see StoreEntry.TTL)
	Lease    bool          // a live lease is held: a load (or a refresh) is under way
	LeaseTTL time.Duration // the lease's time left
	Foreign  bool          // data that is not an entry (see StoreEntry.Foreign)

	// What this cache makes of the value. The fields from NotFound to LoadTime are read from
	// the value's header, and are zero when it is not a frame of this cache's format and type.
	Decoded     bool          // the value decodes for this cache (format, codec, type, key ring)
	Undecodable string        // why not, when Value && !Decoded; a read treats it as a miss
	NotFound    bool          // a cached not-found (negative entry)
	Expiry      time.Time     // the value's logical expiry (TTL, before any stale window)
	Compressed  bool          // stored compressed (WithCompression)
	Encrypted   bool          // stored sealed (WithEncryption)
	LoadTime    time.Duration // how long the load that produced the value took
	Codec       string        // this cache's codec, which wrote every value it decodes

	Fresh bool // decoded and before its logical expiry: reads are served it
	Stale bool // decoded, past its logical expiry, within the stale-while-revalidate window
	L1    bool // held in this instance's local cache, servable (WithLocalCache)
}

// Hit reports whether a GetOrLoad of the key now would be answered without a load: from this
// instance's local cache, or from a decoded store entry that is fresh or within its
// stale-while-revalidate window (a not-found counts: it answers ErrNotFound).
func (k KeyInfo) Hit() bool { return k.L1 || k.Fresh || k.Stale }

// Inspect reports what the store and this instance's local cache hold at key, changing
// nothing (see InspectStore): no lease, no expiry, no counter of Stats, no breaker state. It
// needs a store that implements InspectStore, and returns an error wrapping
// errors.ErrUnsupported for one that does not. A store call is bounded by the store timeout
// (WithStoreTimeout) as well as by ctx; it is made even while the breaker is open.
func (c *Cache[T]) Inspect(ctx context.Context, key string) (KeyInfo, error) {
	info, _, err := c.inspect(ctx, key, false)
	return info, err
}

// InspectValue is Inspect that also returns the decoded value (a T, in an any), or nil when
// there is none: no value, a not-found, or a value that does not decode. It is for operator
// tools that show values; they may hold secrets, so show them only to those allowed to see
// the data.
func (c *Cache[T]) InspectValue(ctx context.Context, key string) (KeyInfo, any, error) {
	return c.inspect(ctx, key, true)
}

func (c *Cache[T]) inspect(ctx context.Context, key string, withValue bool) (KeyInfo, any, error) {
	sk := c.cfg.prefix + key
	info := KeyInfo{Key: key, StoreKey: sk, Codec: c.cfg.codec.Name()}
	if c.life.isClosed() {
		return info, nil, ErrClosed
	}
	is, ok := c.gw.store.(InspectStore)
	if !ok {
		return info, nil, fmt.Errorf("cacheaside: inspect: %T does not implement InspectStore: %w", c.gw.store, errors.ErrUnsupported)
	}
	if c.l1.hit(key) != nil {
		info.L1 = true
	}
	sctx, cancel := ctx, func() {}
	if c.gw.mem == nil {
		sctx, cancel = context.WithTimeout(ctx, max(c.cfg.storeTimeout, c.cfg.connectTimeout))
	}
	e, err := is.Inspect(sctx, sk)
	cancel()
	if err != nil {
		return info, nil, fmt.Errorf("cacheaside: inspect: %w", err)
	}
	info.Present = e.Value != nil || e.Lease || e.Foreign || e.TTL != 0
	info.TTL, info.Lease, info.LeaseTTL, info.Foreign = e.TTL, e.Lease, e.LeaseTTL, e.Foreign
	if e.Value == nil {
		return info, nil, nil
	}
	info.Value, info.Size = true, len(e.Value)
	v, why := c.inspectDecode(sk, e.Value, &info)
	if why != "" {
		info.Undecodable = why
		return info, nil, nil
	}
	info.Decoded = true
	now := c.fresh.now()
	exp := info.Expiry.UnixNano()
	info.Fresh = now < exp
	info.Stale = !info.Fresh && now-exp < int64(c.fresh.staleRevalidate)
	if !withValue || info.NotFound {
		return info, nil, nil
	}
	return info, v, nil
}

// inspectDecode decodes a stored entry as decode does, without counting anything, and says
// why it does not decode ("" when it does). It fills the header fields of info.
func (c *Cache[T]) inspectDecode(sk string, b []byte, info *KeyInfo) (v T, why string) {
	h, payload, ok := envelope.Decode(b, c.entries.schema)
	if !ok {
		return v, "not a value of this format, codec and type (another codec, type or version wrote it, or it is corrupt)"
	}
	info.NotFound, info.Compressed, info.Encrypted = h.NotFound(), h.Compressed(), h.Encrypted()
	info.Expiry, info.LoadTime = time.Unix(0, h.Expiry), h.Delta
	own := c.entries.wire.own
	switch {
	case c.entries.wire.ring != nil && !h.Encrypted():
		return v, "not encrypted, and this cache requires encryption"
	case h.Encrypted():
		if c.entries.wire.ring == nil {
			return v, "encrypted, and this cache has no key ring"
		}
		var err error
		if payload, err = c.entries.wire.ring.set.Load().open(b, sk); err != nil {
			return v, "does not open: altered, moved from another key, or sealed with a key the ring does not hold"
		}
		own = exclusive
	}
	if h.NotFound() {
		if len(payload) != 0 {
			return v, "a not-found with a payload"
		}
		return v, ""
	}
	if h.Compressed() {
		if payload, ok = decompress(payload, c.entries.wire.maxDecoded); !ok {
			return v, "does not decompress within the size limit"
		}
		own = exclusive
	}
	v, err := decodeValue(c.entries.vc, payload, own)
	if err != nil {
		return v, "the codec cannot decode it"
	}
	return v, ""
}
