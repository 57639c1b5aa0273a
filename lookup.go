package cacheaside

import (
	"context"
	"hash/maphash"
	"sync"
)

// Concurrent calls for one key in this process share read-or-lease round trips: at most one
// lookup per key is in flight, and the calls that arrive meanwhile share the next one, sent
// when it returns. A call only ever shares a lookup sent after it began, so the answer is as
// fresh as its own would have been (the rule of lock.go holds), while a hot key costs the
// store one round trip at a time per process instead of one per caller, and a burst on a cold
// connection pool does not dial a connection per caller.
//
// When a shared lookup is granted the lease, the flight that loads under it starts before the
// answer is published, so every sharer joins it; they all began before the lease was granted,
// so the load is fresh for each of them.

type lookupShards[T any] struct {
	seed   maphash.Seed
	shards [64]lookupShard[T]
}

type lookupShard[T any] struct {
	mu   sync.Mutex
	keys map[string]*lookupSlot[T] // keys with a lookup in flight
}

type lookupSlot[T any] struct {
	next *sharedLookup[T] // shared by the calls that arrived since; nil if none
}

// sharedLookup is one read-or-lease round trip and its outcome.
type sharedLookup[T any] struct {
	done chan struct{}
	ctx  context.Context // the first sharer's, detached from its cancellation
	gen  uint64
	load func(context.Context) (T, error)

	// Set before done is closed.
	lk  Lookup
	f   *flight[T] // the load flight, when the lookup was granted the lease
	err error
}

func newLookupShards[T any]() *lookupShards[T] {
	l := &lookupShards[T]{seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].keys = make(map[string]*lookupSlot[T])
	}
	return l
}

func (l *lookupShards[T]) shard(sk string) *lookupShard[T] {
	return &l.shards[maphash.String(l.seed, sk)%uint64(len(l.shards))]
}

// read is the read-or-lease a call starts with. If the key was granted to this call (or to a
// lookup it shared), f is the flight loading it.
func (c *Cache[T]) read(ctx context.Context, sk string, gen uint64, load func(context.Context) (T, error)) (lk Lookup, f *flight[T], err error) {
	if c.lookups == nil {
		return c.readOwn(ctx, sk, gen, load)
	}
	sh := c.lookups.shard(sk)
	sh.mu.Lock()
	slot, busy := sh.keys[sk]
	if !busy {
		sh.keys[sk] = &lookupSlot[T]{}
		sh.mu.Unlock()
		lk, f, err = c.readOwn(ctx, sk, gen, load)
		c.handOver(sh, sk)
		return lk, f, err
	}
	s := slot.next
	if s == nil {
		s = &sharedLookup[T]{done: make(chan struct{}), ctx: context.WithoutCancel(ctx), gen: gen, load: load}
		slot.next = s
	}
	sh.mu.Unlock()
	c.obs.coalesced(ctx, coalescedLookup)
	select {
	case <-s.done:
		return s.lk, s.f, s.err
	case <-ctx.Done():
		return Lookup{}, nil, ctx.Err()
	}
}

// lookupError is a failed read-or-lease, with the token it asked the lease for: the store
// may have granted it all the same.
type lookupError struct {
	token string
	err   error
}

func (e *lookupError) Error() string { return e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

// readOwn is one read-or-lease round trip, starting the load flight if it wins the lease.
func (c *Cache[T]) readOwn(ctx context.Context, sk string, gen uint64, load func(context.Context) (T, error)) (Lookup, *flight[T], error) {
	if c.mem != nil {
		// An in-process hit needs no token, no timeout and no breaker: nothing can fail.
		if v := c.mem.Peek(sk); v != nil {
			return Lookup{Value: v}, nil, nil
		}
	}
	tok := c.tokens.next()
	lk, err := c.lookup(ctx, sk, tok)
	if err != nil {
		return lk, nil, &lookupError{tok, err}
	}
	if !lk.Granted {
		return lk, nil, nil
	}
	f := c.startLoad(ctx, sk, tok, gen, load)
	if f == nil { // closed since the lookup was sent: the lease is not used
		c.abandon(ctx, sk, tok)
		return Lookup{}, nil, ErrClosed
	}
	return lk, f, nil
}

// handOver ends the lookup in flight for sk: if calls queued a next one, it is sent on a
// goroutine the Cache owns; otherwise the key has no lookup in flight any more.
func (c *Cache[T]) handOver(sh *lookupShard[T], sk string) {
	sh.mu.Lock()
	slot := sh.keys[sk]
	s := slot.next
	if s == nil {
		delete(sh.keys, sk)
		sh.mu.Unlock()
		return
	}
	slot.next = nil
	sh.mu.Unlock()

	if !c.breaker.Allow() {
		s.err = errBreakerOpen // the sharers go to their loader without asking the store
		close(s.done)
		c.handOver(sh, sk)
		return
	}
	sent := c.background(func() {
		s.lk, s.f, s.err = c.readOwn(s.ctx, sk, s.gen, s.load)
		close(s.done)
		c.handOver(sh, sk)
	})
	if !sent { // closed: every sharer must still be answered
		s.err = ErrClosed
		close(s.done)
		c.handOver(sh, sk)
	}
}
