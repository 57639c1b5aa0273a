package cacheaside

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// An Invalidate during a background refresh voids its fill: the value it loaded from before
// the invalidation is never stored.
func TestInvalidateDuringRefresh(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 2, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithEarlyRefresh(1))...)
		useClock(clk, cs...)
		_, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) {
			time.Sleep(2 * time.Millisecond) // delta: the refresh decision scales with it
			return "v1", nil
		})
		require.NoError(t, err)
		clk.advance(time.Hour - time.Millisecond) // 1 ms before expiry: the draw below refreshes
		cs[0].fresh.rand = func() float64 { return 0.99 }

		loading := make(chan struct{})
		gate := make(chan struct{})
		v, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) {
			close(loading)
			<-gate
			return "old", nil
		})
		require.NoError(t, err)
		require.Equal(t, "v1", v, "the caller that triggers the refresh gets the current value")
		within(t, 10*time.Second, "the refresh", func() { <-loading })
		require.NoError(t, cs[1].Invalidate(bg(), "k"))
		close(gate)
		idle(t, cs...)
		require.EqualValues(t, 1, cs[0].Stats().EarlyRefreshes)

		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "new", nil })
			require.NoError(t, err)
			require.Equal(t, "new", v)
		}
	})
}

// A refresh goes ahead only if the store still holds the entry that triggered it: a refresh
// that lost the race to another one's fill does not load again, and leaves no lease behind.
func TestRefreshOfReplacedValueSkips(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b, append(slowMachine, WithEarlyRefresh(1))...)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		sk := c.cfg.prefix + "k"
		lk, err := c.gw.store.GetOrLease(bg(), sk, "t", time.Second)
		require.NoError(t, err)
		old, _, _ := c.entries.encode(bg(), sk, "v0", false, time.Millisecond)

		var calls atomic.Int32
		load := func(context.Context) (string, error) { calls.Add(1); return "v2", nil }
		c.refresh(bg(), "k", 0, old, true, load)
		idle(t, c)
		require.Zero(t, calls.Load(), "refreshed a value that was already replaced")
		c.refresh(bg(), "k", 0, lk.Value, true, load)
		idle(t, c)
		require.EqualValues(t, 1, calls.Load(), "the lease was left behind")
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
		require.NoError(t, err)
		require.Equal(t, "v2", v)
	})
}

// Close stops a background refresh: its loader's context is cancelled, and Close waits for it.
// The caller that triggered it has long returned, with its context cancelled.
func TestCloseStopsRefresh(t *testing.T) {
	clk := newFakeClock()
	s := NewMemoryStore()
	t.Cleanup(func() { s.Close() })
	c, err := New[string](s, WithTTL(time.Hour), WithStaleWhileRevalidate(time.Hour))
	require.NoError(t, err)
	useClock(clk, c)
	_, err = c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
	require.NoError(t, err)
	clk.advance(time.Hour + time.Minute)
	loading := make(chan struct{})
	stopped := make(chan error, 1)
	ctx, cancel := context.WithCancel(bg())
	v, err := c.GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
		close(loading)
		<-ctx.Done()
		stopped <- ctx.Err()
		return "", ctx.Err()
	})
	cancel()
	require.NoError(t, err)
	require.Equal(t, "v1", v)
	within(t, 5*time.Second, "the refresh", func() { <-loading })
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-stopped:
		t.Fatalf("the refresh stopped with its trigger's context: %v", err)
	default:
	}
	within(t, 5*time.Second, "Close", func() { require.NoError(t, c.Close()) })
	require.ErrorIs(t, <-stopped, context.Canceled)
}

// leaseCounter counts the Lease calls (refreshes and replacements) sent to the store.
type leaseCounter struct {
	Store
	leases atomic.Int32
}

func (s *leaseCounter) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	s.leases.Add(1)
	return s.Store.Lease(ctx, key, token, leaseTTL)
}

// A process runs one refresh per key at a time: concurrent stale hits start one, not one
// lease attempt each.
func TestRefreshDedupedInProcess(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		s := &leaseCounter{Store: b.newStore(t)}
		c := newTestCache[string](t, s, append(slowMachine, WithTTL(time.Hour), WithStaleWhileRevalidate(time.Hour))...)
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		clk.advance(time.Hour + time.Minute)
		gate := make(chan struct{})
		var calls atomic.Int32
		reload := func(ctx context.Context) (string, error) {
			calls.Add(1)
			select {
			case <-gate:
				return "v2", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.GetOrLoad(bg(), "k", reload)
				if err != nil || v != "v1" {
					t.Errorf("stale read = %q, %v", v, err)
				}
			}()
		}
		within(t, 10*time.Second, "stale reads", wg.Wait)
		// The refresh runs on its own goroutine: it may not have asked for its lease yet.
		stPoll(t, 10*time.Second, time.Millisecond, "the refresh's load", func() bool { return calls.Load() > 0 })
		require.EqualValues(t, 1, s.leases.Load(), "lease attempts for one key in one process")
		close(gate)
		idle(t, c)
		require.EqualValues(t, 1, calls.Load())
	})
}

// With a local cache, hits are L1 hits: they draw the early refresh too, and the refreshed
// value replaces the L1 entry (its fill is accepted under a lease taken after the generation
// was read).
func TestEarlyRefreshFromLocalCache(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		c := backendCache[string](t, b, l1Opts(append(slowMachine, WithEarlyRefresh(1))...)...)
		useClock(clk, c)
		waitLive(t, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
			time.Sleep(2 * time.Millisecond) // delta: the refresh decision scales with it
			return "v1", nil
		})
		require.NoError(t, err)
		require.NotNil(t, c.l1.hit("k"), "the value is in L1")

		clk.advance(time.Hour - time.Millisecond) // 1 ms before expiry: the draw below refreshes
		c.fresh.rand = func() float64 { return 0.99 }
		gate := make(chan struct{})
		v, err := c.GetOrLoad(bg(), "k", func(ctx context.Context) (string, error) {
			select {
			case <-gate:
				return "v2", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		})
		require.NoError(t, err)
		require.Equal(t, "v1", v, "served from L1 at once")
		require.Equal(t, 1, c.refreshes(), "an L1 hit started the refresh")
		close(gate)
		idle(t, c)
		require.EqualValues(t, 1, c.Stats().EarlyRefreshes)

		removeBehindBack(t, c, "k") // what follows comes from L1
		v, err = c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
		require.NoError(t, err)
		require.Equal(t, "v2", v, "the refreshed value replaced the L1 entry")
	})
}

// GetOrLoadMany's L1 hits draw the early refresh as GetOrLoad's do: callers get the current
// values at once, and the keys the draw picks are refreshed together, in one background load
// with the batch loader; batches meanwhile start no other. The refreshed values replace the
// L1 entries.
func TestEarlyRefreshFromLocalCacheMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		c := backendCache[string](t, b, l1Opts(append(slices.Clone(slowMachine), WithEarlyRefresh(1))...)...)
		useClock(clk, c)
		waitLive(t, c)
		keys := []string{"a", "b", "c"}
		versioned := func(v string, missing []string) map[string]string {
			out := map[string]string{}
			for _, k := range missing {
				out[k] = k + v
			}
			return out
		}
		_, err := c.GetOrLoadMany(bg(), keys, func(_ context.Context, missing []string) (map[string]string, error) {
			time.Sleep(2 * time.Millisecond) // delta: the refresh decision scales with it
			return versioned("1", missing), nil
		})
		require.NoError(t, err)
		for _, k := range keys {
			require.NotNil(t, c.l1.hit(k), "%s is in L1", k)
		}

		clk.advance(time.Hour - time.Millisecond) // 1 ms before expiry: the draw below refreshes
		c.fresh.rand = func() float64 { return 0.99 }
		gate := make(chan struct{})
		calls := make(chan []string, 10)
		reload := func(ctx context.Context, missing []string) (map[string]string, error) {
			calls <- slices.Clone(missing)
			select {
			case <-gate:
				return versioned("2", missing), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		for range 3 {
			got, err := c.GetOrLoadMany(bg(), keys, reload)
			require.NoError(t, err)
			require.Equal(t, map[string]string{"a": "a1", "b": "b1", "c": "c1"}, got, "served from L1 at once")
			require.Equal(t, len(keys), c.refreshes(), "the L1 hits started the refresh of every key")
		}
		close(gate)
		idle(t, c)
		require.Len(t, calls, 1, "one background load for the keys of the batches")
		require.ElementsMatch(t, keys, <-calls)
		require.EqualValues(t, len(keys), c.Stats().EarlyRefreshes)

		for _, k := range keys {
			removeBehindBack(t, c, k) // what follows comes from L1
		}
		got, err := c.GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]string, error) {
			return nil, errors.New("must not load")
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a2", "b": "b2", "c": "c2"}, got, "the refreshed values replaced the L1 entries")
	})
}
