package cacheaside

// The lease protocol, after Facebook's memcache leases (Nishtala et al., NSDI 2013).
//
//	caller                         store (one atomic script per key)
//	------                         ---------------------------------
//	(plain read of the value ─────▶ hit: return it; a miss goes on to GetOrLease: lookup.go)
//	GetOrLease(k, tok) ─────────▶  value?      ─▶ hit: return it
//	                               live lease? ─▶ held by L: wait for L's fill (poll with
//	                                              backoff, woken by the fill: wake.go; join
//	                                              L's flight if it is ours)
//	                               else        ─▶ grant tok (PX = lease TTL)
//	load from the database
//	Fill(k, tok, value) ────────▶  stored only if k's lease is still tok
//	Invalidate(k) ──────────────▶  delete value and lease: every outstanding token is void,
//	                               so a load that began before it can never store its value
//
// Tokens are per load, never per process, and made only for a lookup that may be granted one.
// Each call asks the store itself before joining any flight in this process, so a call that
// begins after an Invalidate never joins a load that began before it. A plain read that finds
// a value needs no lease: the value is as fresh as the read (an Invalidate deletes it; a fill
// that lands after one holds a lease granted after it). Only a miss must go through the
// read-or-lease before joining anything. A fill the store refused is not handed to callers who joined: they read
// again.

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"
)

// tokens issues lease tokens unique across processes: a random instance id and a counter.
type tokens struct {
	id  string
	seq atomic.Uint64
}

func newTokens() *tokens {
	var b [8]byte
	_, _ = crand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return &tokens{id: hex.EncodeToString(b[:]) + ":"}
}

func (t *tokens) next() string {
	var b [40]byte
	return string(strconv.AppendUint(append(b[:0], t.id...), t.seq.Add(1), 36))
}

// A release that fails is tried releaseAttempts times in all, releaseBackoff apart, doubling:
// a lease this process will not fill must not make every process wait for it until it
// expires (the lease TTL, seconds) because one round trip failed. The attempts of freeLeases
// are bounded by the store timeout times 4, 16, 64..., at most releaseMaxTimeout: a burst of
// releases (Close during a burst of cold reads) may wait for pool connections longer than
// a read would, and must not fail for it.
const (
	releaseAttempts   = 4
	releaseBackoff    = 5 * time.Millisecond
	releaseMaxTimeout = time.Second
)

// lookup is the read-or-lease every call starts with.
//
// It runs detached from the caller's cancellation (the store timeout bounds it), so its answer
// is always known: a lease granted to a caller that left meanwhile is released at once, in the
// background, instead of blocking the key in every process until it expires. The caller then
// gets ctx.Err().
func (g *gateway) lookup(ctx context.Context, sk, tok string) (Lookup, error) {
	lk, err := storeCall(g, detach(ctx), opGetOrLease, func(ctx context.Context) (Lookup, error) {
		return g.store.GetOrLease(ctx, sk, tok, g.leaseTTL)
	})
	return g.unlessLeft(ctx, sk, tok, lk, err)
}

// leaseOver takes a lease on a key whose value must be replaced, as lookup does.
func (g *gateway) leaseOver(ctx context.Context, sk, tok string) (Lookup, error) {
	lk, err := storeCall(g, context.WithoutCancel(ctx), opLease, func(ctx context.Context) (Lookup, error) {
		return g.store.Lease(ctx, sk, tok, g.leaseTTL)
	})
	return g.unlessLeft(ctx, sk, tok, lk, err)
}

// unlessLeft returns ctx.Err() if the caller left during a lookup, releasing the lease it may
// have been granted.
func (g *gateway) unlessLeft(ctx context.Context, sk, tok string, lk Lookup, err error) (Lookup, error) {
	if ctx.Err() == nil {
		return lk, err
	}
	if err == nil && lk.Granted {
		g.abandon(ctx, sk, tok)
	}
	return Lookup{}, ctx.Err()
}

// abandon releases, in the background, a lease that will not be filled: its caller left
// before using it, its fill failed, or the lookup that asked for it failed (the store may have
// granted it anyway). See freeLeases.
func (g *gateway) abandon(ctx context.Context, sk, tok string) {
	g.freeLeases(ctx, tok, []string{sk}, releaseAttempts)
}

// release ends tok's lease at once (loader error or panic, value not storable) and reports
// whether tok still held it. It runs on the flight's context, detached from callers. If the
// store fails, the release is retried in the background (freeLeases).
func (g *gateway) release(ctx context.Context, sk, tok string) (bool, error) {
	held, err := g.releaseOnce(ctx, sk, tok)
	if err != nil {
		g.freeLeases(ctx, tok, []string{sk}, releaseAttempts-1)
	}
	return held, err
}

func (g *gateway) releaseOnce(ctx context.Context, sk, tok string) (bool, error) {
	return storeCall(g, context.WithoutCancel(ctx), opRelease, func(ctx context.Context) (bool, error) {
		return g.store.Release(ctx, sk, tok)
	})
}

// freeLeases releases tok's leases on sks, trying up to tries times while the store fails. It
// runs in the background, or at once on the calling goroutine when the Cache is closing:
// every goroutine that can hold a lease is one Close waits for (a call inside the gate, or a
// goroutine of the Cache), so the releases are sent before Close returns. A release only ends
// tok's own lease, so releasing a lease that was filled, voided or never granted does
// nothing.
func (g *gateway) freeLeases(ctx context.Context, tok string, sks []string, tries int) {
	if tries <= 0 || len(sks) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	run := func() {
		backoff := releaseBackoff
		timeout := g.storeTimeout(true, len(sks))
		for i := range tries {
			if i > 0 {
				time.Sleep(backoff/2 + rand.N(backoff/2+1))
				backoff *= 2
			}
			timeout = min(4*timeout, max(releaseMaxTimeout, timeout))
			if _, err := g.releaseManyWithin(ctx, tok, sks, timeout); err == nil {
				return
			}
		}
		g.unreleased.Add(uint64(len(sks))) // they expire with their lease TTL
	}
	if !g.life.goOwned(run) {
		run()
	}
}

// takeLeaseUnsafely is the broken build's fill (see Cache.unsafeSkipLeaseCheck): like a cache
// without leases it overwrites whatever the key holds. It voids every lease on the key
// (including the one of a load that began after the invalidation this load missed), takes a
// fresh one and returns its token to fill under. Tests only.
func (g *gateway) takeLeaseUnsafely(ctx context.Context, sk, tok string) string {
	fresh := g.tokens.next()
	lk, err := storeCall(g, context.WithoutCancel(ctx), opLease, func(ctx context.Context) (Lookup, error) {
		if err := g.store.Delete(ctx, sk); err != nil {
			return Lookup{}, err
		}
		return g.store.Lease(ctx, sk, fresh, g.leaseTTL)
	})
	if err == nil && lk.Granted {
		return fresh
	}
	return tok
}

// releaseMany ends tok's leases on sks, in one round trip (per node) if the store implements
// ReleaseManyStore, and reports per key whether tok held it. If the store fails, the release
// is retried in the background (freeLeases).
func (g *gateway) releaseMany(ctx context.Context, tok string, sks []string) ([]bool, error) {
	held, err := g.releaseManyOnce(ctx, tok, sks)
	if err != nil {
		g.freeLeases(ctx, tok, sks, releaseAttempts-1)
	}
	return held, err
}

// releaseManyOnce is one attempt of releaseMany.
func (g *gateway) releaseManyOnce(ctx context.Context, tok string, sks []string) ([]bool, error) {
	return g.releaseManyWithin(ctx, tok, sks, g.storeTimeout(g.warm.Load(), len(sks)))
}

// releaseManyWithin is one attempt of releaseMany, its store calls bounded by timeout.
func (g *gateway) releaseManyWithin(ctx context.Context, tok string, sks []string, timeout time.Duration) ([]bool, error) {
	ctx = context.WithoutCancel(ctx)
	rs, ok := g.store.(ReleaseManyStore)
	if !ok || len(sks) == 1 {
		held := make([]bool, len(sks))
		var errs []error
		for i, sk := range sks {
			var err error
			held[i], err = storeCallWithin(g, ctx, opRelease, g.warm.Load(), timeout, func(ctx context.Context) (bool, error) {
				return g.store.Release(ctx, sk, tok)
			})
			errs = append(errs, err)
		}
		return held, errors.Join(errs...)
	}
	held, err := storeCallWithin(g, ctx, opRelease, g.warm.Load(), timeout, func(ctx context.Context) ([]bool, error) {
		held, err := rs.ReleaseMany(ctx, tok, sks)
		return oneEach(held, err, len(sks))
	})
	if err != nil {
		held = make([]bool, len(sks))
	}
	return held, err
}

// leaseOverMany is leaseOver for several keys under one token: one round trip (per node) if
// the store implements LeaseManyStore, else one Lease per key, stopping at the first failure.
// Like lookup it runs detached from ctx's cancellation: if the caller left meanwhile, the
// leases granted are released in the background and it returns ctx.Err().
func (g *gateway) leaseOverMany(ctx context.Context, sks []string, tok string) ([]Lookup, error) {
	dctx := context.WithoutCancel(ctx)
	var lks []Lookup
	var err error
	if ls, ok := g.store.(LeaseManyStore); ok {
		lks, err = storeCallN(g, dctx, opLease, len(sks), func(ctx context.Context) ([]Lookup, error) {
			lks, err := ls.LeaseMany(ctx, sks, tok, g.leaseTTL)
			return oneEach(lks, err, len(sks))
		})
	} else {
		lks = make([]Lookup, len(sks))
		for i := 0; i < len(sks) && err == nil; i++ {
			lks[i], err = storeCall(g, dctx, opLease, func(ctx context.Context) (Lookup, error) {
				return g.store.Lease(ctx, sks[i], tok, g.leaseTTL)
			})
		}
	}
	if err != nil {
		lks = nil // the store may have granted any of them
	}
	if ctx.Err() != nil {
		g.abandonMany(ctx, tok, sks, lks)
		return nil, ctx.Err()
	}
	return lks, err
}

// abandonMany releases, in the background, the leases granted to tok that will not be
// filled (a caller that left, a failed fill, Close): those of sks whose lookup says Granted,
// or all of sks if lks is nil. See freeLeases.
func (g *gateway) abandonMany(ctx context.Context, tok string, sks []string, lks []Lookup) {
	granted := sks
	if lks != nil {
		granted = nil
		for i, lk := range lks {
			if lk.Granted {
				granted = append(granted, sks[i])
			}
		}
	}
	g.freeLeases(ctx, tok, granted, releaseAttempts)
}

// getOrLeaseMany is lookup for several keys under one token, in one round trip (per node). Like
// lookup it runs detached from ctx's cancellation; the caller releases what was granted if ctx
// ended meanwhile.
func (g *gateway) getOrLeaseMany(ctx context.Context, sks []string, tok string) ([]Lookup, error) {
	return storeCallN(g, context.WithoutCancel(ctx), opGetOrLeaseMany, len(sks), func(ctx context.Context) ([]Lookup, error) {
		lks, err := g.store.GetOrLeaseMany(ctx, sks, tok, g.leaseTTL)
		return oneEach(lks, err, len(sks))
	})
}

// heldPoller is an optional interface of a Store: GetOrLeaseMany for keys found leased a moment
// ago, which skips what a lookup may start with (RedisStore: the plain read goes straight to
// the lease script).
type heldPoller interface {
	pollMany(ctx context.Context, keys []string, token string, ttl time.Duration) ([]Lookup, error)
}

// pollHeld reads again, under tok, keys a wait found leased: as getOrLeaseMany, but on ctx
// (a wait's flight: Close ends it), and through heldPoller if the store has it.
func (g *gateway) pollHeld(ctx context.Context, sks []string, tok string) ([]Lookup, error) {
	return storeCallN(g, ctx, opGetOrLeaseMany, len(sks), func(ctx context.Context) ([]Lookup, error) {
		if hp, ok := g.store.(heldPoller); ok {
			return hp.pollMany(ctx, sks, tok, g.leaseTTL)
		}
		return g.store.GetOrLeaseMany(ctx, sks, tok, g.leaseTTL)
	})
}

var _ heldPoller = (*RedisStore)(nil)
