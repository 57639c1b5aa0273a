package cacheaside

import (
	"context"
	"time"

	"github.com/cacheaside/cacheaside/internal/glob"
	"github.com/maypok86/otter/v2"
)

var (
	_ Store            = (*MemoryStore)(nil)
	_ ReleaseManyStore = (*MemoryStore)(nil)
	_ LeaseManyStore   = (*MemoryStore)(nil)
	_ InProcessStore   = (*MemoryStore)(nil)
	_ ValueBytesStore  = (*MemoryStore)(nil)
	_ WakingStore      = (*MemoryStore)(nil)
)

// DefaultMemoryMaxBytes is the default bound of a MemoryStore: 64 MiB of keys, values and
// per-entry overhead.
const DefaultMemoryMaxBytes = 64 << 20

// memEntryOverhead is the weight charged per entry on top of its key, value and token.
const memEntryOverhead = 64

// MemoryStore keeps entries in this process, in an otter cache bounded by weight (bytes), with
// per-entry expiry and the same value and lease semantics as RedisStore. It suits a single
// process, tests, and a Redis-free development setup; several processes need RedisStore to
// share one cache.
type MemoryStore struct {
	c    *otter.Cache[string, *memEntry]
	base time.Time // monotonic origin of deadlines
	bus  memBus    // invalidation broadcast between the Caches on this store (broadcast_memory.go)
	tags memTags   // the tag index (memory_tags.go)
}

// memEntry is immutable once stored; every change stores a new one.
type memEntry struct {
	value    []byte // nil: no value
	token    string // "": no lease
	leaseEnd int64  // lease deadline, nanoseconds since base
	expires  int64  // entry deadline, nanoseconds since base
}

// MemoryOption configures a MemoryStore.
type MemoryOption func(*memoryConfig)

type memoryConfig struct {
	maxBytes uint64
}

// WithMemoryMaxBytes bounds the store's weight: the sum of key, value and lease token lengths
// plus 64 bytes per entry. Least valuable entries are evicted past it (otter's W-TinyLFU).
// Default: DefaultMemoryMaxBytes (64 MiB). Values of n below 1 keep the default.
func WithMemoryMaxBytes(n int64) MemoryOption {
	return func(c *memoryConfig) {
		if n > 0 {
			c.maxBytes = uint64(n)
		}
	}
}

// NewMemoryStore returns an empty in-process store.
func NewMemoryStore(opts ...MemoryOption) *MemoryStore {
	cfg := memoryConfig{maxBytes: DefaultMemoryMaxBytes}
	for _, o := range opts {
		o(&cfg)
	}
	s := &MemoryStore{base: time.Now()}
	s.c = otter.Must(&otter.Options[string, *memEntry]{
		MaximumWeight: cfg.maxBytes,
		Weigher: func(k string, e *memEntry) uint32 {
			w := len(k) + len(e.value) + len(e.token) + memEntryOverhead
			return uint32(min(w, 1<<32-1))
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *memEntry]) time.Duration {
			return time.Duration(e.Value.expires - s.now())
		}),
	})
	return s
}

func (s *MemoryStore) now() int64 { return int64(time.Since(s.base)) }

// live returns the entry at key if it has not expired.
func (s *MemoryStore) live(e *memEntry, found bool, now int64) *memEntry {
	if !found || e == nil || e.expires <= now {
		return nil
	}
	return e
}

// peek returns key's live value, or nil: the hit path, with no lock and no write.
func (s *MemoryStore) peek(key string) []byte {
	if e, ok := s.c.GetIfPresent(key); ok && e.value != nil && e.expires > s.now() {
		return e.value
	}
	return nil
}

// Peek implements InProcessStore: key's live value, or nil, with no lock and no write.
func (s *MemoryStore) Peek(key string) []byte { return s.peek(key) }

// ImmutableReads implements ValueBytesStore: a stored value is never modified; a fill
// replaces it with another slice.
func (s *MemoryStore) ImmutableReads() bool { return true }

// KeepsWrites implements ValueBytesStore: the store keeps the slices it is given.
func (s *MemoryStore) KeepsWrites() bool { return true }

// GetOrLease implements Store.
func (s *MemoryStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	if v := s.peek(key); v != nil {
		return Lookup{Value: v}, nil
	}
	var out Lookup
	s.c.Compute(key, func(old *memEntry, found bool) (*memEntry, otter.ComputeOp) {
		now := s.now()
		out = Lookup{}
		if e := s.live(old, found, now); e != nil {
			if e.value != nil {
				out.Value = e.value
				return old, otter.CancelOp
			}
			if e.token != "" && e.leaseEnd > now {
				out.Holder, out.HolderTTL = e.token, time.Duration(e.leaseEnd-now)
				return old, otter.CancelOp
			}
		}
		out.Granted = true
		end := now + int64(leaseTTL)
		return &memEntry{token: token, leaseEnd: end, expires: end}, otter.WriteOp
	})
	return out, nil
}

// GetOrLeaseMany implements Store.
func (s *MemoryStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	return each(keys, func(k string) (Lookup, error) { return s.GetOrLease(ctx, k, token, leaseTTL) })
}

// Lease implements Store.
func (s *MemoryStore) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	var out Lookup
	s.c.Compute(key, func(old *memEntry, found bool) (*memEntry, otter.ComputeOp) {
		now := s.now()
		out = Lookup{}
		end := now + int64(leaseTTL)
		e := s.live(old, found, now)
		if e == nil {
			out.Granted = true
			return &memEntry{token: token, leaseEnd: end, expires: end}, otter.WriteOp
		}
		if e.token != "" && e.leaseEnd > now {
			out.Holder, out.HolderTTL = e.token, time.Duration(e.leaseEnd-now)
			return old, otter.CancelOp
		}
		out.Granted = true
		expires := e.expires
		if e.value == nil {
			expires = end
		}
		return &memEntry{value: e.value, token: token, leaseEnd: end, expires: expires}, otter.WriteOp
	})
	return out, nil
}

// Fill implements Store.
func (s *MemoryStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	stored := false
	s.c.Compute(key, func(old *memEntry, found bool) (*memEntry, otter.ComputeOp) {
		now := s.now()
		e := s.live(old, found, now)
		if e == nil || e.token != token || e.leaseEnd <= now {
			stored = false
			return old, otter.CancelOp
		}
		stored = true
		return &memEntry{value: value, expires: now + int64(ttl)}, otter.WriteOp
	})
	if stored {
		s.wake(key) // wake.go
	}
	return stored, nil
}

// FillMany implements Store.
func (s *MemoryStore) FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error) {
	return each(entries, func(e FillEntry) (bool, error) { return s.Fill(ctx, e.Key, token, e.Value, e.TTL) })
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, key, token string) (bool, error) {
	held := false
	s.c.Compute(key, func(old *memEntry, found bool) (*memEntry, otter.ComputeOp) {
		now := s.now()
		e := s.live(old, found, now)
		switch {
		case e == nil || e.token != token:
			held = false
			return old, otter.CancelOp
		case e.value == nil:
			held = true
			return nil, otter.InvalidateOp
		default:
			held = e.leaseEnd > now
			return &memEntry{value: e.value, expires: e.expires}, otter.WriteOp
		}
	})
	if held {
		s.wake(key) // wake.go
	}
	return held, nil
}

// Delete implements Store.
func (s *MemoryStore) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		s.c.Invalidate(k)
	}
	return nil
}

// DeletePattern implements Store. It walks every key, so it costs time in the store's size.
func (s *MemoryStore) DeletePattern(ctx context.Context, pattern string) (int, error) {
	n := 0
	for k := range s.c.Keys() {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if !glob.Match(pattern, k) {
			continue
		}
		if e, ok := s.c.Invalidate(k); ok && e != nil && e.value != nil && e.expires > s.now() {
			n++
		}
	}
	return n, nil
}

// Ping implements Store; the memory store always answers.
func (s *MemoryStore) Ping(context.Context) error { return nil }

// Close stops the store's background goroutine. The store must not be used after it.
func (s *MemoryStore) Close() error {
	s.c.StopAllGoroutines()
	return nil
}

// ReleaseMany is Release for several keys under one token.
func (s *MemoryStore) ReleaseMany(ctx context.Context, token string, keys []string) ([]bool, error) {
	return each(keys, func(k string) (bool, error) { return s.Release(ctx, k, token) })
}

// LeaseMany is Lease for several keys under one token.
func (s *MemoryStore) LeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	return each(keys, func(k string) (Lookup, error) { return s.Lease(ctx, k, token, leaseTTL) })
}

// each runs op on every element of in, in order: the batch form of a single-key method. A
// MemoryStore's single-key methods never fail, so neither does each.
func each[E, R any](in []E, op func(E) (R, error)) ([]R, error) {
	out := make([]R, len(in))
	for i, e := range in {
		out[i], _ = op(e)
	}
	return out, nil
}
