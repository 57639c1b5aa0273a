package cacheaside

import (
	"context"
	"hash/maphash"
	"sync"
)

// Concurrent calls for one key in this process share read-or-lease round trips: at most one
// lookup per key is in flight, and the calls that arrive meanwhile share the next one, sent
// when it returns. A call only ever shares a lookup sent after it began, so the answer is as
// fresh as its own would have been (the rule of lease.go holds), while a hot key costs the
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
	mu sync.Mutex
	// keys with a lookup in flight, each with the next lookup, shared by the calls that
	// arrived since (nil if none): a key's first call allocates nothing.
	keys map[string]*sharedLookup[T]
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
		l.shards[i].keys = make(map[string]*sharedLookup[T])
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
	s, busy := sh.keys[sk]
	if !busy {
		sh.keys[sk] = nil
		sh.mu.Unlock()
		lk, f, err = c.readOwn(ctx, sk, gen, load)
		c.handOver(sh, sk)
		return lk, f, err
	}
	if s == nil {
		s = &sharedLookup[T]{done: make(chan struct{}), ctx: context.WithoutCancel(ctx), gen: gen, load: load}
		sh.keys[sk] = s
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

// Plain reads first, or the lease script first (Cache.scriptFirst). With a store that has a
// plain read (RedisStore: HGET), a hit costs one HGET, about a GET, where the script costs the
// server more (EVALSHA); but a miss then costs an HGET and the script, one round trip more. So
// the Cache adapts: after any miss it sends the script first for the next scriptWindow lookups
// that find a value, then goes back to plain reads. A workload that mostly hits reads plainly;
// one that mostly misses keeps a miss at one round trip before the load. In the steady state
// of either, the choice costs one atomic load per lookup, shared by every core.
const scriptWindow = 16

// detach is context.WithoutCancel, without an allocation for a context that has no
// cancellation already (context.Background()).
func detach(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}

// readOwn is one read-or-lease round trip, starting the load flight if it wins the lease.
func (c *Cache[T]) readOwn(ctx context.Context, sk string, gen uint64, load func(context.Context) (T, error)) (Lookup, *flight[T], error) {
	if c.gw.mem != nil {
		// An in-process hit needs no token, no timeout and no breaker: nothing can fail.
		if v := c.gw.mem.Peek(sk); v != nil {
			return Lookup{Value: v}, nil, nil
		}
	}
	plain := c.gw.plain != nil && c.scriptFirst.Load() <= 0
	if plain {
		// A plain read (no lease, no token, no script): a value is a hit, as fresh as the
		// read-or-lease's would be. Only a miss needs the lease script, which follows.
		v, err := c.gw.readValue(ctx, sk)
		switch {
		case err != nil:
			return Lookup{}, nil, err // no lease can have been granted
		case v != nil:
			return Lookup{Value: v}, nil, nil
		}
		c.scriptFirst.Store(scriptWindow)
	}
	tok := c.gw.tokens.next()
	lk, err := c.gw.lookup(ctx, sk, tok)
	if err != nil {
		return lk, nil, &lookupError{tok, err}
	}
	if c.gw.plain != nil && !plain {
		if lk.Value == nil {
			if c.scriptFirst.Load() != scriptWindow {
				c.scriptFirst.Store(scriptWindow)
			}
		} else if c.scriptFirst.Add(-1) < 0 {
			c.scriptFirst.Store(0)
		}
	}
	if !lk.Granted {
		return lk, nil, nil
	}
	f := c.startLoad(ctx, sk, tok, gen, load)
	if f == nil { // closed since the lookup was sent: the lease is not used
		c.gw.abandon(ctx, sk, tok)
		return Lookup{}, nil, ErrClosed
	}
	return lk, f, nil
}

// handOver ends the lookup in flight for sk: if calls queued a next one, it is sent on a
// goroutine the Cache owns; otherwise the key has no lookup in flight any more.
func (c *Cache[T]) handOver(sh *lookupShard[T], sk string) {
	sh.mu.Lock()
	s := sh.keys[sk]
	if s == nil {
		delete(sh.keys, sk)
		sh.mu.Unlock()
		return
	}
	sh.keys[sk] = nil // in flight, nothing queued behind it yet
	sh.mu.Unlock()

	if !c.gw.breaker.Allow() {
		s.err = errBreakerOpen // the sharers go to their loader without asking the store
		close(s.done)
		c.handOver(sh, sk)
		return
	}
	sent := c.life.goOwned(func() {
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
