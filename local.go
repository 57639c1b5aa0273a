package cacheaside

// The local cache (WithLocalCache): an in-process L1 of decoded values in front of the store,
// kept coherent across instances by invalidation messages (broadcast.go).
//
// An L1 hit serves a value that is no older than the store's for this instance: once this
// instance's Invalidate(k) has returned, or once it has received another instance's
// invalidation of k, no L1 entry of k from before is served. The rules that make it so:
//
//   - Every entry carries the generation of its key (generation.go) read BEFORE the store
//     operation that showed its value fresh: the lookup that returned it, or the lookup that
//     granted (or saw live) the lease it was loaded and filled under. A hit serves the entry
//     only if that generation is still the key's. Every invalidation bumps it: this
//     instance's Invalidate (before and after the store delete), a delivered message, a
//     flush. So an entry whose fill began before an invalidation is never served, however
//     late it was stored: the check is made on every read, not once before the store.
//   - Only values that are fresh for any later caller enter L1: values the store returned,
//     and loads whose fill the store accepted (the lease was still theirs, so no invalidation
//     came between the lease and the fill). A load whose fill was refused may be returned to
//     the caller that started it, never kept; a load made without the store is never kept.
//   - L1 is read and filled only while the instance is subscribed to the invalidation
//     channel. Losing the subscription, and getting it back, each bump every generation (the
//     epoch) and clear the entries: messages sent in between were missed.
//   - An entry lives for the local TTL, never past its value's logical expiry (the envelope
//     header): L1 never extends a value's life.
//
// The hit path reads one otter entry, the key's generation and a coarse clock: no network, no
// decoding, no allocation, and no precise clock read. The local TTL is checked against the
// coarse clock the L1 owns (l1ClockTick; its goroutine stops at Close), so an entry may be
// served up to a tick (more if that goroutine runs late) past its local TTL. The logical expiry stays exact: an
// entry whose logical expiry is within l1ExactWindow of the end of its local TTL (capped) is
// checked against the precise clock (c.fresh.now) on every hit, the only entries that read it.

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/maypok86/otter/v2"
)

// local is a Cache's L1. Keys are user keys (without the prefix), so a hit builds no string.
type local[T any] struct {
	entries    *otter.Cache[string, *l1Entry[T]]
	clock      *otter.CoarseClock // the time of the local TTL; stopped by Close
	ttl        time.Duration
	live       atomic.Bool // subscribed: entries may be read and stored
	subscribed atomic.Bool // has been live once
	keepRaw    bool        // keep the stored bytes in entries, for early refresh from an L1 hit
	prefix     string      // the Cache's: fillStored takes store keys
	schema     uint32      // the Cache's fingerprint, to read the header of stored bytes
	gens       *generations
	fresh      *refresher // its clock: the precise one of logical expiries

	// onMessage, when set (tests only), is called after each message from another instance
	// has been applied.
	onMessage atomic.Pointer[func()]
}

// l1Entry is one decoded value (or a cached not-found) and where it came from. Immutable.
type l1Entry[T any] struct {
	val      T
	notFound bool
	gen      uint64         // the key's generation before the store operation that showed it fresh
	stripe   *atomic.Uint64 // the key's generation stripe, so a hit does not hash the key again
	expiry   int64          // the value's logical expiry, Unix nanoseconds (envelope header)
	delta    time.Duration  // how long the load that produced it took (envelope header)
	until    int64          // coarse-clock time past which it is not served: fill time + min(local TTL, expiry - fill time)
	capped   bool           // expiry is near until (l1ExactWindow): hits check it exactly
	raw      []byte         // the stored entry, only with early refresh on (local.keepRaw)
}

// l1ClockTick is the resolution of the L1's coarse clock: how often its goroutine reads the
// time, and so (scheduling delays aside) how late past its local TTL an entry may be served.
const l1ClockTick = time.Millisecond

// l1ExactWindow: an L1 entry whose logical expiry is less than this after the end of its local
// TTL has its logical expiry checked against the precise clock on every hit (capped), so a
// coarse clock lagging by up to this much never serves a value past its logical expiry.
const l1ExactWindow = time.Second

// newLocal starts the L1's coarse clock: call stop to end its goroutine.
func newLocal[T any](cfg *config, schema uint32, gens *generations, fresh *refresher) *local[T] {
	l := &local[T]{
		ttl: cfg.localTTL, keepRaw: cfg.beta > 0, clock: otter.NewCoarseClock(l1ClockTick),
		prefix: cfg.prefix, schema: schema, gens: gens, fresh: fresh,
	}
	maxEntries := cfg.localMax
	// No otter expiry: an otter entry with one costs a hit twice the time of a plain one. The
	// L1 checks each entry's end itself (hit), on the same coarse clock; an entry past it holds
	// its slot until size eviction or the next fill of its key replaces it.
	l.entries = otter.Must(&otter.Options[string, *l1Entry[T]]{
		MaximumSize: maxEntries,
		Clock:       l.clock,
	})
	return l
}

// stop ends the L1's goroutines (otter's and the coarse clock's); the L1 is not live after.
func (l *local[T]) stop() {
	l.live.Store(false)
	l.entries.StopAllGoroutines()
	l.clock.Stop()
}

// header rebuilds the envelope header of the value, for the early-refresh decision on an L1
// hit (GetOrLoad, xfetch.go). An L1 entry never outlives its logical expiry, so judge never
// says expired (nor stale) for it. e.raw is kept when New saw WithEarlyRefresh
// (local.keepRaw): the refresh compares it with what the store holds. The refresh's flight is
// launched with the key's generation read before its lease is taken, so its accepted fill
// enters L1 too.
func (e *l1Entry[T]) header() envelope.Header {
	h := envelope.Header{Expiry: e.expiry, Delta: e.delta}
	if e.notFound {
		h.Flags = envelope.FlagNotFound
	}
	return h
}

// hit returns key's L1 entry if it may be served: the L1 is live and the entry's generation
// is still the key's, and (for a capped entry, see fill) its logical expiry has not
// passed. It allocates nothing, and reads the clock only for capped entries.
func (l *local[T]) hit(key string) *l1Entry[T] {
	if l == nil || !l.live.Load() {
		return nil
	}
	e, ok := l.entries.GetIfPresent(key)
	if !ok || l.clock.NowNano() >= e.until || e.gen != l.gens.loadStripe(e.stripe) || (e.capped && l.fresh.now() >= e.expiry) {
		return nil
	}
	return e
}

// fill keeps v, decoded from the stored entry raw, as key's L1 entry, under gen: the key's
// generation read before the store operation that showed raw fresh. Call it only with values
// fresh for any later caller (see the top of this file). Nothing is kept if the key was
// invalidated since gen, if the L1 is not live, or if the value's logical expiry has passed.
//
// A gen of 0 is never kept: the L1 goes live with an epoch bump, so every generation read
// while it is live is at least 1 (flights that are not a caller's, such as the discarded ones
// of loadWithoutStore, carry 0).
func (l *local[T]) fill(key string, gen uint64, v T, raw []byte) {
	if l == nil || !l.live.Load() || gen != l.gens.load(key) {
		return
	}
	h, _, ok := envelope.Decode(raw, l.schema)
	if !ok {
		return
	}
	left := time.Duration(h.Expiry - l.fresh.now()) // the clock of the stale windows
	if left <= 0 {
		return
	}
	// The coarse clock keeps an entry served past its TTL by as much as the clock lags: an
	// entry whose logical expiry comes less than l1ExactWindow after its local TTL is checked
	// against the precise clock on every hit (hit) instead, so no lag up to that window
	// serves it past its logical expiry.
	ttl, capped := min(l.ttl, left), left <= l.ttl+l1ExactWindow
	e := &l1Entry[T]{gen: gen, stripe: l.gens.stripe(key), expiry: h.Expiry, delta: h.Delta, until: l.clock.NowNano() + int64(ttl), capped: capped, notFound: h.NotFound()}
	if !e.notFound {
		e.val = v
	}
	if l.keepRaw {
		e.raw = raw
	}
	l.entries.Set(key, e)
}

// fillStored is fill for a store key (prefix + key).
func (l *local[T]) fillStored(sk string, gen uint64, v T, raw []byte) {
	if l != nil {
		l.fill(sk[len(l.prefix):], gen, v, raw)
	}
}

// l1Many moves the keys L1 can serve into b.out (cached not-founds are left out of it, as the
// store's are) and returns the others, reusing keys' backing array. With early refresh, the
// entries the draw says to refresh are refreshed together in the background with b.load, as
// GetOrLoad does for one.
func (c *Cache[T]) l1Many(ctx context.Context, keys []string, b *batch[T]) []string {
	if c.l1 == nil || !c.l1.live.Load() {
		return keys
	}
	rest := keys[:0]
	var refreshes []refreshReq
	for _, k := range keys {
		e := c.l1.hit(k)
		if e != nil && c.fresh.timed && c.fresh.judge(e.header()) == serveRefresh {
			refreshes = append(refreshes, refreshReq{k, c.cfg.prefix + k, c.gens.load(k), e.raw, true})
		}
		switch {
		case e == nil:
			rest = append(rest, k)
		case e.notFound:
			c.obs.count(k, resultNegativeHit)
		default:
			c.obs.count(k, resultL1Hit)
			b.out[k] = e.val
		}
	}
	if len(refreshes) > 0 {
		c.refreshMany(ctx, refreshes, b.load)
	}
	return rest
}

// forget drops keys' entries and returns how many it dropped (keys without a live entry
// are not counted); their generations were bumped already. It only frees memory: the bump
// alone keeps them from being served.
func (l *local[T]) forget(keys []string) int {
	if l == nil {
		return 0
	}
	n := 0
	for _, k := range keys {
		if _, dropped := l.entries.Invalidate(k); dropped {
			n++
		}
	}
	return n
}

// dropAll is flushLocal for an L1 that exists, one entry at a time, and returns how many
// entries it dropped. Entries stored meanwhile may stay, and be served: they were filled
// after the epoch bump.
func (l *local[T]) dropAll() int {
	l.gens.bumpAll()
	n := 0
	for k := range l.entries.Keys() {
		if _, dropped := l.entries.Invalidate(k); dropped {
			n++
		}
	}
	return n
}

// flushLocal makes every L1 entry unservable (an epoch bump: gens is shared with the Cache,
// whose store-less flights it also dates) and drops them all; l may be nil.
func flushLocal[T any](gens *generations, l *local[T]) {
	gens.bumpAll()
	if l != nil {
		l.entries.InvalidateAll()
	}
}

// isLive reports whether the L1 is in use (tests).
func (l *local[T]) isLive() bool { return l != nil && l.live.Load() }
