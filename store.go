package cacheaside

import (
	"context"
	"time"
)

// Store is where a Cache keeps its encoded values and the leases that guard their fills.
//
// Every method is atomic per key. Keys arrive already prefixed by the Cache. A key holds a
// value, a lease, both (a value being refreshed) or nothing. A lease is a token with an
// expiry: only the holder of a key's live lease may fill the key, and Delete voids every
// lease of the keys it removes. This is what keeps a load that began before an invalidation
// from ever writing its old value back.
//
// RedisStore and MemoryStore implement it; a Store of your own must keep the same semantics
// (the conformance suite in store_test.go shows them).
type Store interface {
	// GetOrLease returns the key's value if it holds one. Otherwise, if no live lease is held,
	// it grants a lease to token for leaseTTL; if one is held, it reports the holder. All in
	// one atomic step.
	GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error)

	// GetOrLeaseMany is GetOrLease for several keys with one token, in as few round trips as
	// the store allows (RedisStore: one per node when every key holds a value, two with misses,
	// whatever the number of keys). The result has one Lookup per key, in order.
	GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error)

	// Lease grants a lease to token whether or not the key holds a value (to refresh or
	// replace it), unless another live lease is held, which it reports. The value, if any, is
	// kept until a fill replaces it.
	Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error)

	// Fill stores value for ttl if token still holds the key's lease, and ends the lease. It
	// reports whether the value was stored.
	Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error)

	// FillMany is Fill for several entries under one token. It reports, per entry, whether
	// it was stored.
	FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error)

	// Release ends token's lease on key, if token still holds it, leaving any value in place.
	// It reports whether token held the lease.
	Release(ctx context.Context, key, token string) (bool, error)

	// Delete removes the keys' values and voids their leases.
	Delete(ctx context.Context, keys ...string) error

	// DeletePattern removes every key matching the glob pattern (Redis MATCH syntax) and
	// returns how many of them held a value.
	DeletePattern(ctx context.Context, pattern string) (int, error)

	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
}

// Lookup is a store's answer to GetOrLease or Lease.
type Lookup struct {
	// Value is the stored bytes, or nil when the key holds no value. It may share memory
	// with the store (MemoryStore's entry, RedisStore's batch reply): read-only.
	Value []byte
	// Granted is true when the lease was granted to the caller's token.
	Granted bool
	// Holder is the token of another caller's live lease, when one blocks the caller.
	Holder string
	// HolderTTL is the time left on Holder's lease, when the store knows it.
	HolderTTL time.Duration
}

// ReleaseManyStore is an optional interface of a Store that releases many leases of one token
// in one round trip (per node). A Cache uses it, when its store has it, to end the leases of
// a batch whose load failed; otherwise it calls Release per key. RedisStore and MemoryStore
// implement it.
type ReleaseManyStore interface {
	// ReleaseMany is Release for several keys under one token. It reports, per key, whether
	// token held the lease.
	ReleaseMany(ctx context.Context, token string, keys []string) ([]bool, error)
}

// LeaseManyStore is an optional interface of a Store that takes many leases of one token in
// one round trip (per node). A Cache uses it, when its store has it, for the keys of a batch
// whose values it must replace (undecodable, or past their stale windows) and for the
// background refreshes a batch starts; otherwise it calls Lease per key. RedisStore and
// MemoryStore implement it.
type LeaseManyStore interface {
	// LeaseMany is Lease for several keys with one token. The result has one Lookup per key,
	// in order; none carries a Value.
	LeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error)
}

// InProcessStore is an optional interface of a Store that lives in this process, as
// MemoryStore does: its calls neither wait on a network nor honour deadlines. A Cache over one
// calls it without store timeouts, without coalescing concurrent lookups of a key (each is as
// cheap as sharing one), and answers hits with Peek alone: no token, no lease, no breaker. A
// wrapper that embeds *MemoryStore to intercept its calls must hide Peek too, or hits bypass it.
type InProcessStore interface {
	Store
	// Peek returns the live value at key, or nil if the key holds none (no value, or only a
	// lease). It must not block, grant a lease or modify anything, and the bytes returned must
	// never change afterwards: the Cache decodes them without copying.
	Peek(key string) []byte
}

// ValueBytesStore is an optional interface of a Store that says what it does with the bytes
// of values, so that a Cache copies no more than it must. Without it, a Cache assumes the
// safest: the bytes a read returns may change or be reused once the call returns (so a decoded
// value never shares memory with them), and the slices given to Fill and FillMany are kept as
// they are (so it trims their spare capacity first).
type ValueBytesStore interface {
	// ImmutableReads reports that the Value bytes its reads return (GetOrLease,
	// GetOrLeaseMany, Lease, Peek) are never modified or reused afterwards: a decoded string
	// may share memory with them (RawCodec).
	ImmutableReads() bool
	// KeepsWrites reports that it keeps the slices passed to Fill and FillMany, rather than
	// copying them out (as a network store does when it sends them).
	KeepsWrites() bool
}

// ValueReader is an optional interface of a Store that can read a key's value alone, without
// the lease script: RedisStore implements it with HGET. A Cache over one reads a key with
// ReadValue first while its calls mostly hit (a hit then costs the server a plain read, not a
// script), and goes to GetOrLease only on a miss; while calls mostly miss it sends GetOrLease
// first (lookup.go). A plain read is as fresh as GetOrLease's: only a live value may be
// returned, never a value its Invalidate removed.
type ValueReader interface {
	// ReadValue returns the value at key, or nil if the key holds none (nothing, a bare lease,
	// or anything that is not an entry: GetOrLease then deals with it). The bytes follow the
	// rules of Lookup.Value.
	ReadValue(ctx context.Context, key string) ([]byte, error)
}

// FillEntry is one value of a FillMany.
type FillEntry struct {
	Key   string
	Value []byte
	TTL   time.Duration
}

// TagStore is an optional interface of a Store that indexes keys by tag, for the Tags and
// TagsOf call options and Cache.InvalidateTags. RedisStore and MemoryStore implement it; a
// Cache over a Store without it refuses both with an error wrapping ErrTagsUnsupported.
//
// A tag's record is a set of keys, each with a version (how many times, or when, it was last
// recorded: any number that grows with every AddTags of that key under that tag) and an expiry.
// Records past their expiry may be dropped at any time; nothing else removes a key from a tag
// but RemoveTags. The index must not grow without bound: expired records are dropped as new
// ones come in (RedisStore: on every AddTags of the tag, and the whole tag expires with its
// last record).
type TagStore interface {
	Store
	// AddTags records, for each tag of tagged, that the keys listed with it carry it, for at
	// least life from now (a key recorded already keeps the later of the two expiries, and gets
	// a new version). Keys arrive prefixed, as in every Store method, and so do tags: the
	// Cache names each tag prefix + "\x00tag:" + tag, and RedisStore keeps its record at
	// that key.
	AddTags(ctx context.Context, tagged map[string][]string, life time.Duration) error

	// TaggedKeys returns, for each of tags in order, the keys whose records under it have not
	// expired, each with the version of its record.
	TaggedKeys(ctx context.Context, tags []string) ([][]TaggedKey, error)

	// RemoveTags removes from each tag of tagged the keys listed with it, each only if its
	// record is still at the version given: a key recorded again since TaggedKeys returned it
	// stays.
	RemoveTags(ctx context.Context, tagged map[string][]TaggedKey) error
}

// TaggedKey is one key of a tag's record (TagStore).
type TaggedKey struct {
	Key     string
	Version int64
}
