package cacheaside

// Keeping hot keys warm: XFetch early refresh, stale-while-revalidate, stale-if-error.
//
// Every entry carries its logical expiry and how long the load that produced it took (the
// envelope header). The store keeps it longer than that, for the stale windows:
//
//	physical TTL = logical TTL (jittered) + max(stale-while-revalidate, stale-if-error)
//
// On a hit, with any of these options on (and only then: plain hits read no clock):
//
//	now < expiry                 fresh: served. With early refresh, served and refreshed in
//	                             the background when shouldRefresh says so.
//	expiry <= now < expiry+SWR   stale: served, and refreshed in the background.
//	otherwise                    expired: a miss. The caller takes the lease over the value
//	                             and loads; if that load fails (not ErrNotFound) while
//	                             now < expiry+SIE, the expired value is served instead.
//
// The refreshes themselves are refresh.go's.

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// shouldRefresh is the XFetch decision (Vattani, Chierichetti, Lowenstein, "Optimal
// Probabilistic Cache Stampede Prevention", VLDB 2015): refresh when
//
//	now - delta*beta*ln(u) >= expiry
//
// with u uniform in (0,1]. At a time remaining = expiry-now before expiry it refreshes with
// probability exp(-remaining/(delta*beta)): rarely far from expiry, more often close to it
// and the longer the last load took. beta <= 0 or delta <= 0 never refreshes before expiry.
// now and expiry are Unix nanoseconds. u outside (0,1] is clamped into it.
func shouldRefresh(now, expiry int64, delta time.Duration, beta, u float64) bool {
	if now >= expiry {
		return true
	}
	if !(beta > 0) || delta <= 0 {
		return false
	}
	switch {
	case u <= 0:
		u = math.SmallestNonzeroFloat64
	case !(u < 1): // u >= 1 or NaN: -ln(u) = 0
		return false
	}
	remaining := expiry - now
	if remaining < 0 { // overflowed: expiry > now
		remaining = math.MaxInt64
	}
	return float64(remaining) <= float64(delta)*beta*-math.Log(u)
}

// verdict is what a hit does with a decoded entry.
type verdict uint8

const (
	serveIt      verdict = iota // fresh: serve it
	serveRefresh                // fresh: serve it and refresh it in the background (early refresh)
	serveStale                  // past expiry, within stale-while-revalidate: serve it and refresh it
	expired                     // a miss; servable only if the load fails (stale-if-error)
)

// resultOf is the request result, for the metrics, of an entry served with verdict vd.
func resultOf(vd verdict, h envelope.Header) result {
	if vd == serveStale {
		return resultStale
	}
	return hitResult(h.NotFound())
}

// refresher is a Cache's freshness policy: what a hit does with an entry (judge), how long an
// expired one may stand in for a failed load, which keys' refreshes are backed off after a
// failure, and the clock and random source of all of it (injectable for tests).
type refresher struct {
	timed           bool // any of the options on: only then does a hit read the clock
	beta            float64
	staleRevalidate time.Duration
	staleIfError    time.Duration
	extraTTL        time.Duration  // physical TTL - logical TTL: the longer stale window
	now             func() int64   // Unix nanoseconds
	rand            func() float64 // uniform in [0,1)
	backoff         refreshBackoff // keys whose background refresh failed lately (refresh_backoff.go)
	refreshes       atomic.Uint64  // background refreshes that loaded (early or stale-while-revalidate)
}

func newRefresher(cfg *config) *refresher {
	return &refresher{
		timed:           cfg.beta > 0 || cfg.staleRevalidate > 0 || cfg.staleIfError > 0,
		beta:            cfg.beta,
		staleRevalidate: cfg.staleRevalidate,
		staleIfError:    cfg.staleIfError,
		extraTTL:        max(cfg.staleRevalidate, cfg.staleIfError),
		now:             func() int64 { return time.Now().UnixNano() },
		rand:            rand.Float64,
	}
}

// judge classifies a decoded entry at a hit. Without early refresh and stale windows it reads
// no clock and draws no random number.
func (r *refresher) judge(h envelope.Header) verdict {
	if !r.timed {
		return serveIt
	}
	now := r.now()
	switch {
	case now < h.Expiry:
		if r.beta > 0 && shouldRefresh(now, h.Expiry, h.Delta, r.beta, 1-r.rand()) {
			return serveRefresh
		}
		return serveIt
	case now-h.Expiry < int64(r.staleRevalidate):
		return serveStale
	}
	return expired
}

// refreshAllowed reports whether sk may be refreshed now: no refresh of it failed lately.
func (r *refresher) refreshAllowed(sk string) bool { return r.backoff.allow(sk, r.now()) }

// refreshFailed backs sk's refreshes off; refreshSucceeded (a fresh value stored) clears it.
func (r *refresher) refreshFailed(sk string)    { r.backoff.failed(sk, r.now()) }
func (r *refresher) refreshSucceeded(sk string) { r.backoff.succeeded(sk) }

// staleValue is an expired entry a caller saw, kept in case its load fails.
type staleValue[T any] struct {
	v        T
	notFound bool
	expiry   int64 // logical expiry; 0: none kept
}

// keepStale returns the entry to serve if the caller's load fails, when stale-if-error is on.
func keepStale[T any](r *refresher, v T, h envelope.Header) staleValue[T] {
	if r.staleIfError == 0 {
		return staleValue[T]{}
	}
	return staleValue[T]{v: v, notFound: h.NotFound(), expiry: h.Expiry}
}

// staleOK reports whether s may stand in for a failed load now.
func (r *refresher) staleOK(expiry int64) bool {
	return expiry != 0 && r.now()-expiry < int64(r.staleIfError)
}

// orStale returns a caller's result: the stale value instead of a load error (not ErrNotFound,
// not the caller's own cancellation) when stale-if-error allows it; served says it did.
func (c *Cache[T]) orStale(ctx context.Context, v T, err error, s *staleValue[T]) (_ T, _ error, served bool) {
	if err == nil || ctx.Err() != nil || errors.Is(err, ErrNotFound) || !c.fresh.staleOK(s.expiry) {
		return v, err, false
	}
	c.obs.staleIfError()
	if s.notFound {
		var zero T
		return zero, ErrNotFound, true
	}
	return s.v, nil, true
}
