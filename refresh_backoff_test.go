package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A background refresh whose loader fails is not retried by the next hit: the key's refreshes
// pause for minRefreshBackoff, doubling with each failure, and a success clears the pause.
// Without it a fast-failing database would see one reload per hit, as with no cache at all.
func TestRefreshBackoff(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		c := instances[string](t, b, 1, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithStaleWhileRevalidate(24*time.Hour))...)[0]
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		clk.advance(time.Hour + time.Minute) // stale: every hit asks for a refresh

		var calls atomic.Int32
		failing := func(context.Context) (string, error) {
			calls.Add(1)
			return "", errors.New("database down")
		}
		hits := func(n int) {
			t.Helper()
			for range n {
				v, err := c.GetOrLoad(bg(), "k", failing)
				require.NoError(t, err)
				require.Equal(t, "v1", v)
				idle(t, c) // the refresh it started, if any, is over
			}
		}
		hits(50)
		require.EqualValues(t, 1, calls.Load(), "reloads by 50 hits right after a failed one")

		clk.advance(minRefreshBackoff + time.Millisecond)
		hits(50)
		require.EqualValues(t, 2, calls.Load(), "one reload once the pause is over")
		clk.advance(minRefreshBackoff + time.Millisecond) // the second pause is twice as long
		hits(20)
		require.EqualValues(t, 2, calls.Load(), "reloads during the doubled pause")
		clk.advance(minRefreshBackoff)
		hits(20)
		require.EqualValues(t, 3, calls.Load(), "one reload after the doubled pause")

		// A success (here the caller's own load past the stale window) clears the pause: the
		// new value's refreshes start at once.
		clk.advance(48 * time.Hour)
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v2", nil })
		require.NoError(t, err)
		require.Equal(t, "v2", v)
		clk.advance(time.Hour + time.Minute)
		v, err = c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { calls.Add(1); return "v3", nil })
		require.NoError(t, err)
		require.Equal(t, "v2", v, "stale, served at once")
		idle(t, c)
		require.EqualValues(t, 4, calls.Load(), "the refresh after a success is not held back")
		v, err = c.GetOrLoad(bg(), "k", failing)
		require.NoError(t, err)
		require.Equal(t, "v3", v)
	})
}

// Batch refreshes back off as single ones do: after a failed background reload of a batch's
// keys, later batches start none for the pause; a batch load that fills the keys clears it.
func TestRefreshBackoffMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		const ttl = 100 * time.Millisecond // of the fake clock: far shorter than the pause
		c := backendCache[string](t, b, append(slices.Clone(slowMachine), WithTTL(ttl), WithTTLJitter(0), WithStaleWhileRevalidate(24*time.Hour))...)
		useClock(clk, c)
		keys := []string{"a", "b"}
		var calls atomic.Int32
		loadV := func(v string, err error) func(context.Context, []string) (map[string]string, error) {
			return func(_ context.Context, missing []string) (map[string]string, error) {
				calls.Add(1)
				out := map[string]string{}
				for _, k := range missing {
					out[k] = k + v
				}
				return out, err
			}
		}
		read := func(load func(context.Context, []string) (map[string]string, error), want string) {
			t.Helper()
			got, err := c.GetOrLoadMany(bg(), keys, load)
			require.NoError(t, err)
			require.Equal(t, map[string]string{"a": "a" + want, "b": "b" + want}, got)
			idle(t, c) // the refresh it started, if any, is over
		}
		read(loadV("1", nil), "1")
		clk.advance(ttl + time.Millisecond) // stale: every batch asks for a refresh
		calls.Store(0)
		for range 20 {
			read(loadV("", errors.New("database down")), "1")
		}
		require.EqualValues(t, 1, calls.Load(), "reloads by 20 batches right after a failed one")

		// Within the pause, a batch load that fills the keys clears it: the new values'
		// refreshes start at once.
		require.NoError(t, c.Invalidate(bg(), keys...))
		read(loadV("2", nil), "2")
		clk.advance(ttl + time.Millisecond)
		calls.Store(0)
		read(loadV("3", nil), "2")
		require.EqualValues(t, 1, calls.Load(), "the refresh after a fill is not held back")
		read(loadV("", errors.New("must not load")), "3")
	})
}

// The pause grows to maxRefreshBackoff and no further, and the keys remembered stay bounded.
func TestRefreshBackoffBounds(t *testing.T) {
	var b refreshBackoff
	now := int64(0)
	delay := time.Duration(0)
	for range 10 {
		b.failed("k", now)
		delay = time.Duration(b.keys["k"].until - now)
		require.False(t, b.allow("k", now+int64(delay)-1))
		now += int64(delay)
		require.True(t, b.allow("k", now))
	}
	require.Equal(t, maxRefreshBackoff, delay)
	now += int64(2 * maxRefreshBackoff) // long past: it starts over
	b.failed("k", now)
	require.Equal(t, minRefreshBackoff, time.Duration(b.keys["k"].until-now))

	// Past the bound by a few: each key refused scans the full map (O(maxBackoffKeys)), so
	// 3 x maxBackoffKeys took 23 s under -race on a loaded machine for the same check.
	for i := range maxBackoffKeys + 64 {
		b.failed(fmt.Sprint("x", i), now)
	}
	require.LessOrEqual(t, len(b.keys), maxBackoffKeys)
	now += int64(maxRefreshBackoff) + 1
	b.failed("late", now) // lapsed entries make room
	require.False(t, b.allow("late", now))
	require.Less(t, len(b.keys), 10)
	b.succeeded("late")
	require.True(t, b.allow("late", now))
}

// With the circuit breaker open, an L1 hit that would refresh early starts no refresh: it
// would only wait on a sick store in the background (and time out) for nothing.
func TestRefreshSkippedWithBreakerOpen(t *testing.T) {
	clk := newFakeClock()
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, l1Opts(WithEarlyRefresh(1), WithCircuitBreaker(1, time.Hour), WithInvalidateTimeout(time.Nanosecond))...)
	useClock(clk, c)
	waitLive(t, c)
	_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
		time.Sleep(2 * time.Millisecond)
		return "v1", nil
	})
	require.NoError(t, err)
	require.NotNil(t, c.l1.hit("k"))
	store.fail.Store(true)
	require.Error(t, c.Invalidate(bg(), "other")) // one failure opens the breaker
	require.True(t, c.Stats().BreakerOpen)
	errs := c.Stats().StoreErrors

	clk.advance(time.Hour - time.Millisecond)
	c.fresh.rand = func() float64 { return 0.99 } // refresh, were the store usable
	v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
	require.NoError(t, err)
	require.Equal(t, "v1", v)
	require.Zero(t, c.refreshes(), "a refresh started with the breaker open")
	idle(t, c)
	require.Equal(t, errs, c.Stats().StoreErrors, "the store was called with the breaker open")
}

// grantThenFail is a store whose Lease takes effect and then reports a failure, as a lease
// script that ran but whose reply timed out.
type grantThenFail struct {
	*MemoryStore
	Peek   struct{} // hides MemoryStore.Peek (InProcessStore): every read goes through the methods above
	leases atomic.Int32
}

func (s *grantThenFail) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	_, _ = s.MemoryStore.Lease(ctx, key, token, leaseTTL)
	s.leases.Add(1)
	return Lookup{}, errInjected
}

// A background refresh whose lease request failed releases the lease the store may have
// granted all the same, so other processes need not wait out the lease TTL to refresh.
func TestRefreshReleasesLeaseOnFailure(t *testing.T) {
	clk := newFakeClock()
	store := &grantThenFail{MemoryStore: NewMemoryStore()}
	t.Cleanup(func() { store.MemoryStore.Close() })
	c := newTestCache[string](t, store, WithTTL(time.Hour), WithTTLJitter(0), WithStaleWhileRevalidate(time.Hour), WithLeaseTTL(time.Hour))
	useClock(clk, c)
	_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
	require.NoError(t, err)
	clk.advance(time.Hour + time.Minute)
	v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
	require.NoError(t, err)
	require.Equal(t, "v1", v, "stale, served")
	idle(t, c)
	require.EqualValues(t, 1, store.leases.Load(), "the refresh asked for the lease")
	lk, err := store.MemoryStore.Lease(bg(), c.cfg.prefix+"k", "another-process", time.Minute)
	require.NoError(t, err)
	require.True(t, lk.Granted, "the key is still leased by the failed refresh (holder %q)", lk.Holder)
}
