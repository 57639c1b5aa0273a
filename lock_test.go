package cacheaside

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The shared load runs on the first caller's context without its cancellation, bounded by
// the load timeout: the loader sees the caller's values and a deadline of at most the load
// timeout, the callers get the timeout's error, and the lease is freed at once, so the next
// caller in any process loads instead of waiting out a lease of an hour.
func TestLoadTimeout(t *testing.T) {
	type requestID struct{}
	forEachBackend(t, func(t *testing.T, b backend) {
		const timeout = 200 * time.Millisecond
		cs := instances[string](t, b, 2, append(slowMachine, WithLoadTimeout(timeout), WithLeaseTTL(time.Hour))...)
		caller, cancel := context.WithCancel(context.WithValue(bg(), requestID{}, "req-7"))
		defer cancel()
		var remaining time.Duration
		var hasDeadline bool
		var value any
		within(t, 10*time.Second, "a load past its timeout", func() {
			_, err := cs[0].GetOrLoad(caller, "k", func(lctx context.Context) (string, error) {
				var dl time.Time
				dl, hasDeadline = lctx.Deadline()
				remaining, value = time.Until(dl), lctx.Value(requestID{})
				<-lctx.Done()
				return "", lctx.Err()
			})
			require.ErrorIs(t, err, context.DeadlineExceeded)
		})
		require.True(t, hasDeadline, "the loader's context has no deadline")
		require.Positive(t, remaining)
		require.LessOrEqual(t, remaining, timeout, "the loader's deadline is past the load timeout")
		require.Equal(t, "req-7", value, "the loader does not see the caller's context values")
		require.NoError(t, caller.Err(), "the load timeout cancelled the caller's own context")

		for i, c := range cs {
			within(t, 10*time.Second, "a load after the timed-out one", func() {
				v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v", nil })
				require.NoError(t, err, "instance %d", i)
				require.Equal(t, "v", v)
			})
		}
	})
}

// A caller waiting for another process's lease polls the store with a growing backoff
// (WithLeaseWait: 2 ms doubling to 100 ms by default), not at a fixed short interval: over a
// 600 ms load that is about a dozen reads, where polling every 2 ms would be about 300.
func TestLeaseWaitBacksOff(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		holder := newTestCache[string](t, b.newStore(t), append(slowMachine, WithPrefix(prefix))...)
		raw := b.client(t)
		trips := countRoundTrips(raw)
		waiter := newTestCache[string](t, NewRedisStore(raw), append(slowMachine, WithPrefix(prefix))...)
		_, err := waiter.GetOrLoad(bg(), "warm", func(context.Context) (string, error) { return "w", nil })
		require.NoError(t, err) // dialled, scripts loaded

		const hold = 600 * time.Millisecond
		started := make(chan struct{})
		held := make(chan error, 1)
		go func() {
			_, err := holder.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
				close(started)
				time.Sleep(hold)
				return "from-holder", nil
			})
			held <- err
		}()
		<-started
		trips.reset()
		var loads atomic.Int32
		within(t, 20*time.Second, "the waiter", func() {
			v, err := waiter.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
				loads.Add(1)
				return "from-waiter", nil
			})
			require.NoError(t, err)
			require.Equal(t, "from-holder", v)
		})
		require.NoError(t, <-held)
		require.Zero(t, loads.Load(), "the waiter loaded while the holder's lease lived")
		t.Logf("round trips of a caller waiting %v for another process's lease: %d", hold, trips.load())
		require.GreaterOrEqual(t, trips.load(), 2, "the waiter read the fill")
		require.LessOrEqual(t, trips.load(), 30, "the waiter hammers the store")
	})
}

// With the circuit breaker open from the start, concurrent callers of one key still share
// loads in this process. Without the store a call joins only a load that began after it did
// (an earlier one may predate an invalidation this process cannot see), so a burst costs at
// most two loads: the first, and one for every caller that arrived while it ran.
func TestLoadsCoalescedWithBreakerOpen(t *testing.T) {
	store := newFaultyStore(t)
	c := newTestCache[string](t, store, WithCircuitBreaker(1, time.Hour))
	store.fail.Store(true)
	_, err := c.GetOrLoad(bg(), "trip", constLoad("v"))
	require.NoError(t, err)
	require.True(t, c.Stats().BreakerOpen)

	const callers = 50
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open) // before the cache closes, even on failure
	var loads, entered atomic.Int32
	errs := make(chan error, callers)
	for range callers {
		go func() {
			entered.Add(1)
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
				loads.Add(1)
				<-gate
				time.Sleep(50 * time.Millisecond) // a query takes a while: callers woken meanwhile join
				return "v", nil
			})
			if err == nil && v != "v" {
				err = errors.New("wrong value " + v)
			}
			errs <- err
		}()
	}
	stPoll(t, 10*time.Second, time.Millisecond, "callers start", func() bool { return entered.Load() == callers })
	time.Sleep(100 * time.Millisecond) // for the callers to reach the load (not a timing assertion)
	open()
	within(t, 10*time.Second, "callers", func() {
		for range callers {
			require.NoError(t, <-errs)
		}
	})
	t.Logf("%d callers, breaker open: %d loads", callers, loads.Load())
	require.LessOrEqual(t, loads.Load(), int32(3), "loads of one key with the breaker open (2, or 3 for a straggler)")
}
