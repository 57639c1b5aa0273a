package cacheaside

// The store gateway: every store call a Cache makes goes through it. It bounds the call (the
// store timeout; the connect timeout until the store has answered once; more for large
// batches), tells the circuit breaker and the metrics how it went, and holds what the Cache
// knows of its store: the optional interfaces it implements (an in-process store, a plain
// read, tags), the lease TTL and whether the store has answered yet.

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside/internal/breaker"
)

// gateway is a Cache's way to its Store. It is not generic: nothing in it depends on the
// cached type.
type gateway struct {
	store          Store
	mem            InProcessStore // the store, when it is in this process: no timeouts, hits peeked
	plain          ValueReader    // the store's plain read, if it has one (lookup.go)
	tags           TagStore       // the store's tag index (tags.go); nil if it has none
	timeout        time.Duration  // WithStoreTimeout
	connectTimeout time.Duration  // WithConnectTimeout
	leaseTTL       time.Duration  // WithLeaseTTL, else the load timeout
	warm           atomic.Bool    // the store has answered once
	breaker        *breaker.Breaker
	deadlines      *deadlines // shared deadlines of store calls (storebound.go); nil with mem
	obs            *observer
	life           *lifecycle // releases run on goroutines the Cache owns
	tokens         *tokens    // lease tokens (lease.go)
	// unreleased counts leases this process would not fill and could not release either (the
	// store failed every attempt): other processes wait for them until they expire.
	unreleased atomic.Uint64
}

func newGateway(store Store, cfg *config, obs *observer, life *lifecycle) *gateway {
	g := &gateway{
		store:          store,
		timeout:        cfg.storeTimeout,
		connectTimeout: cfg.connectTimeout,
		leaseTTL:       cfg.leaseTTL,
		obs:            obs,
		life:           life,
		tokens:         newTokens(),
	}
	if g.leaseTTL == 0 {
		g.leaseTTL = cfg.loadTimeout
	}
	g.tags, _ = store.(TagStore)
	if m, inProcess := store.(InProcessStore); inProcess {
		g.mem = m
	} else {
		g.deadlines = newDeadlines(cfg.storeTimeout)
		g.plain, _ = store.(ValueReader)
	}
	g.breaker = breaker.New(cfg.breakerFailures, obs.breakerChanged)
	obs.breaker = g.breaker
	return g
}

// A batch operation of n keys is allowed 1 + n/batchKeysPerTimeout store timeouts, at most
// maxBatchTimeouts: a large batch (far longer to encode, send and run than one key) must not
// fail open on a healthy store, and a hung store must not hold it for long either.
const (
	batchKeysPerTimeout = 100
	maxBatchTimeouts    = 20
)

// storeCall runs one store operation bounded by the store timeout (the connect timeout until
// the store has answered once) and tells the breaker, and the metrics as op, how it went. A
// failure caused by the caller's own context is not the store's.
func storeCall[R any](g *gateway, ctx context.Context, op storeOp, call func(context.Context) (R, error)) (R, error) {
	return storeCallN(g, ctx, op, 1, call)
}

// storeCallN is storeCall for an operation on n keys.
func storeCallN[R any](g *gateway, ctx context.Context, op storeOp, n int, call func(context.Context) (R, error)) (R, error) {
	warm := g.warm.Load()
	return storeCallWithin(g, ctx, op, warm, g.storeTimeout(warm, n), call)
}

// storeCallWithin is storeCall bounded by timeout instead of the store timeout (the write path
// has its own budget: invalidate.go). warm is whether the store had answered when the call
// began.
func storeCallWithin[R any](g *gateway, ctx context.Context, op storeOp, warm bool, timeout time.Duration, call func(context.Context) (R, error)) (R, error) {
	octx, cancel := ctx, noCancel
	if g.mem == nil { // an in-process store neither blocks nor honours deadlines
		octx, cancel = g.bound(ctx, timeout) // storebound.go: no timer per call
	}
	octx, obs := g.obs.storeStart(octx, op)
	r, err := call(octx)
	cancel()
	g.obs.storeEnd(obs, err, ctx.Err() != nil)
	switch {
	case err == nil:
		g.breaker.Success()
		if !warm {
			g.warm.Store(true)
		}
	case ctx.Err() != nil:
		// the caller left; that says nothing of the store
	case !warm:
		g.breaker.Trip()
	default:
		g.breaker.Failure()
	}
	return r, err
}

// storeTimeout is the bound of a store operation on n keys: the connect timeout until the
// store has answered once (warm), then the store timeout, scaled up for large batches.
func (g *gateway) storeTimeout(warm bool, n int) time.Duration {
	timeout := g.timeout
	if !warm {
		timeout = max(timeout, g.connectTimeout)
	}
	if n > batchKeysPerTimeout {
		timeout *= time.Duration(min(1+n/batchKeysPerTimeout, maxBatchTimeouts))
	}
	return timeout
}

// bound returns ctx bounded by timeout, and the function that releases what the bound holds.
// Calls on a detached context (no Done channel) with the store timeout share a deadline (see
// above); any other call gets its own context.WithTimeout.
func (g *gateway) bound(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout == g.timeout && ctx.Done() == nil {
		if _, has := ctx.Deadline(); !has {
			return &boundCtx{ctx, g.deadlines.get(time.Now())}, noCancel
		}
	}
	return context.WithTimeout(ctx, timeout)
}

// readValue is the plain read of readOwn, bounded and accounted as the read-or-lease is.
func (g *gateway) readValue(ctx context.Context, sk string) ([]byte, error) {
	v, err := storeCall(g, detach(ctx), opGetOrLease, func(ctx context.Context) ([]byte, error) {
		return g.plain.ReadValue(ctx, sk)
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return v, err
}
