package cacheaside

// The write path: Invalidate and InvalidatePattern.
//
// An invalidation is what keeps a cache-aside cache fresh after a write, so it has its own
// budget (WithInvalidateTimeout, seconds), not the read path's fail-fast store timeout, and it
// ignores the circuit breaker: a store that is slow or briefly failing is retried with backoff
// until it takes the delete, and only a store that stays unreachable for the whole budget (or
// the caller's ctx) makes it fail, with an *InvalidationError naming what may be stale.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cacheaside/cacheaside/internal/glob"
)

// Backoff between the attempts of an invalidation, and the bound of one attempt of an
// Invalidate (an InvalidatePattern's attempt may take the whole budget: it scans).
const (
	invalidateBackoffMin = 10 * time.Millisecond
	invalidateBackoffMax = time.Second
	invalidateAttempt    = time.Second
)

// invalidate is Invalidate (cacheaside.go).
func (c *Cache[T]) invalidate(ctx context.Context, keys ...string) error {
	if c.life.isClosed() {
		return ErrClosed
	}
	if len(keys) == 0 {
		return nil
	}
	c.obs.invalidated(invalidatedKey, len(keys))
	sks := make([]string, len(keys))
	for i, k := range keys {
		sks[i] = c.cfg.prefix + k
	}
	removed, err := c.invalidateKeys(ctx, c.inval.deadline(), keys, sks)
	if err != nil {
		c.stats.invalFailed.Add(1)
		return &InvalidationError{Keys: append([]string(nil), keys...), Removed: removed, Err: err}
	}
	return nil
}

// invalidateKeys removes keys (whose store keys are sks) from the store and this instance's
// local cache and tells the other instances, with retries until deadline. The
// keys' generations are bumped before the delete, to stop local store-less joins and L1 fills
// early, and after it, so that a load or L1 fill that began in between is not used either.
func (c *Cache[T]) invalidateKeys(ctx context.Context, deadline time.Time, keys, sks []string) (removed bool, err error) {
	for _, k := range keys {
		c.gens.bump(k)
	}
	removed, err = c.inval.deleteAndPublish(ctx, deadline, sks, encodeKeysMsg(c.gw.tokens.id, keys))
	for _, k := range keys {
		c.gens.bump(k)
	}
	c.l1.forget(keys)
	return removed, err
}

// invalidatePattern is InvalidatePattern (cacheaside.go).
func (c *Cache[T]) invalidatePattern(ctx context.Context, pattern string) (int, error) {
	if c.life.isClosed() {
		return 0, ErrClosed
	}
	if pattern == "" {
		return 0, errors.New("cacheaside: invalidate pattern: empty pattern")
	}
	c.obs.invalidated(invalidatedPattern, 1)
	c.gens.bumpAll()
	full := glob.Escape(c.cfg.prefix) + pattern
	n, removed := 0, false
	err := c.inval.retry(ctx, c.inval.deadline(), true, func(ctx context.Context, warm bool, timeout time.Duration) error {
		if !removed {
			m, err := storeCallWithin(c.gw, ctx, opDeletePattern, warm, timeout, func(ctx context.Context) (int, error) {
				return c.gw.store.DeletePattern(ctx, full)
			})
			n += m // a failed scan removed some: they count, and are gone
			if err != nil {
				return err
			}
			removed = true
		}
		return c.inval.publish(ctx, warm, timeout, encodeAllMsg(c.gw.tokens.id, pattern))
	})
	flushLocal(c.gens, c.l1) // bumps the epoch again
	if err != nil {
		c.stats.invalFailed.Add(1)
		return n, &InvalidationError{Pattern: pattern, Removed: removed, Err: err}
	}
	return n, nil
}

// deletePublisher is implemented by a store that can delete keys and publish a message after
// the delete in one round trip (RedisStore on a standalone or Sentinel client).
type deletePublisher interface {
	// deleteAndPublish is Delete then Publish in one round trip. ok is false, and nothing
	// done, when the store cannot do that.
	deleteAndPublish(ctx context.Context, keys []string, channel string, msg []byte) (ok bool, err error)
}

// invalidator carries out the store side of an invalidation: the delete and the message to the
// other instances, retried within the invalidation's own budget (WithInvalidateTimeout), not the
// read path's store timeout, and past the circuit breaker.
type invalidator struct {
	gw      *gateway
	bus     Broadcaster // nil if the store cannot broadcast: nothing is published
	channel string      // this prefix's invalidation channel
	budget  time.Duration
}

// deadline is the end of the budget of an invalidation that starts now.
func (v *invalidator) deadline() time.Time { return time.Now().Add(v.budget) }

// retry runs attempt until it succeeds, deadline (the end of the invalidation's
// budget) has passed, or ctx ends, with backoff between attempts. Each attempt gets the bound
// it must pass to its store calls: one second, or what is left of the budget if that is less
// (all of it, if whole).
func (v *invalidator) retry(ctx context.Context, deadline time.Time, whole bool, attempt func(ctx context.Context, warm bool, timeout time.Duration) error) error {
	backoff := invalidateBackoffMin
	var timer *time.Timer
	for {
		left := time.Until(deadline)
		timeout := left
		if !whole {
			timeout = min(left, invalidateAttempt)
		}
		err := attempt(ctx, v.gw.warm.Load(), max(timeout, time.Millisecond))
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errors.Join(err, context.Cause(ctx))
		}
		sleep := backoff/2 + rand.N(backoff/2+1)
		if left = time.Until(deadline); sleep >= left {
			return err
		}
		backoff = min(2*backoff, invalidateBackoffMax)
		if timer == nil {
			timer = time.NewTimer(sleep)
			defer timer.Stop()
		} else {
			timer.Reset(sleep)
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return errors.Join(err, context.Cause(ctx))
		}
	}
}

// deleteAndPublish removes sks from the store, then publishes msg to the other instances: in
// one round trip when the store can, else as two store calls, with retries (retry).
// removed reports whether the delete succeeded, even if the publish did not.
func (v *invalidator) deleteAndPublish(ctx context.Context, deadline time.Time, sks []string, msg []byte) (removed bool, err error) {
	dp, both := v.gw.store.(deletePublisher)
	both = both && v.bus != nil
	err = v.retry(ctx, deadline, false, func(ctx context.Context, warm bool, timeout time.Duration) error {
		if !removed && both {
			var done bool
			_, err := storeCallWithin(v.gw, ctx, opDelete, warm, timeout, func(ctx context.Context) (struct{}, error) {
				ok, err := dp.deleteAndPublish(ctx, sks, v.channel, msg)
				done = ok
				return struct{}{}, err
			})
			if err != nil {
				return err
			}
			if done {
				removed = true
				return nil
			}
			both = false // the store cannot do both at once: from now on, two calls
		}
		if !removed {
			_, err := storeCallWithin(v.gw, ctx, opDelete, warm, timeout, func(ctx context.Context) (struct{}, error) {
				return struct{}{}, v.gw.store.Delete(ctx, sks...)
			})
			if err != nil {
				return err
			}
			removed = true
		}
		return v.publish(ctx, warm, timeout, msg)
	})
	return removed, err
}

// publish sends an invalidation message to the other instances, bounded by timeout. Without
// a broadcasting store it does nothing.
func (v *invalidator) publish(ctx context.Context, warm bool, timeout time.Duration, msg []byte) error {
	if v.bus == nil {
		return nil
	}
	_, err := storeCallWithin(v.gw, ctx, opPublish, warm, timeout, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, v.bus.Publish(ctx, v.channel, msg)
	})
	if err != nil {
		return fmt.Errorf("publish to other instances: %w", err)
	}
	return nil
}
