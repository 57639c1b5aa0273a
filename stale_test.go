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

// Stale-while-revalidate: past its TTL, within the window, a value is served at once (the
// reload is held up, and no read waits for it) while one background reload across all
// instances replaces it. Past the window it is a miss.
func TestStaleWhileRevalidate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 3, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithStaleWhileRevalidate(time.Hour))...)
		useClock(clk, cs...)
		_, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v1", nil })
		require.NoError(t, err)
		before := misses(cs...)

		clk.advance(time.Hour + time.Minute)
		gate := make(chan struct{})
		started := make(chan struct{}, 100)
		var calls atomic.Int32
		reload := func(ctx context.Context) (string, error) {
			calls.Add(1)
			started <- struct{}{}
			select {
			case <-gate:
				return "v2", nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := cs[i%3].GetOrLoad(bg(), "k", reload)
				if err != nil || v != "v1" {
					t.Errorf("stale read = %q, %v; want v1 at once", v, err)
				}
			}()
		}
		within(t, 10*time.Second, "stale reads while the reload is held up", wg.Wait)
		within(t, 10*time.Second, "the background reload", func() { <-started })
		close(gate)
		idle(t, cs...)
		require.EqualValues(t, 1, calls.Load(), "background reloads across 3 instances")
		require.Equal(t, before, misses(cs...), "reads that waited")
		require.EqualValues(t, 30, sumStats(func(s Stats) uint64 { return s.Stale }, cs...), "stale requests")
		require.Zero(t, sumStats(func(s Stats) uint64 { return s.EarlyRefreshes }, cs...), "a refresh after expiry is not early")
		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "", errors.New("must not load") })
			require.NoError(t, err)
			require.Equal(t, "v2", v)
		}
		require.EqualValues(t, 1, calls.Load())

		// v2 expires at now+1h; past its window it is a miss, loaded by the caller.
		clk.advance(2*time.Hour + time.Minute)
		v, err := cs[1].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v3", nil })
		require.NoError(t, err)
		require.Equal(t, "v3", v)
		require.Equal(t, before+1, misses(cs...))
	})
}

// Stale-if-error: while the loader fails, callers get the expired value (within the window)
// and no error; once it works again, the new value replaces it. Not-found answers and the
// caller's own cancellation are never hidden, nor is a failure past the window.
func TestStaleIfError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 3, append(slowMachine, WithTTL(time.Hour), WithTTLJitter(0), WithStaleIfError(time.Hour))...)
		useClock(clk, cs...)
		for _, k := range []string{"k", "nf"} {
			_, err := cs[0].GetOrLoad(bg(), k, func(context.Context) (string, error) { return "v1", nil })
			require.NoError(t, err)
		}
		clk.advance(time.Hour + time.Minute)

		boom := errors.New("database down")
		var failed atomic.Int32
		failing := func(context.Context) (string, error) {
			failed.Add(1)
			time.Sleep(5 * time.Millisecond)
			return "", boom
		}
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := cs[i%3].GetOrLoad(bg(), "k", failing)
				if err != nil || v != "v1" {
					t.Errorf("GetOrLoad with the loader failing = %q, %v; want v1, nil", v, err)
				}
			}()
		}
		within(t, 20*time.Second, "readers", wg.Wait)
		require.Positive(t, failed.Load(), "the expired value is not served without trying the loader")
		var served uint64
		for _, c := range cs {
			served += c.Stats().StaleIfError
		}
		require.EqualValues(t, 30, served, "stale values served")
		require.EqualValues(t, 30, sumStats(func(s Stats) uint64 { return s.Stale }, cs...), "stale requests")

		// The caller's cancellation is its own.
		gate := make(chan struct{})
		ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
		_, err := cs[1].GetOrLoad(ctx, "k", func(lctx context.Context) (string, error) {
			select {
			case <-gate:
			case <-lctx.Done():
			}
			return "", boom
		})
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		close(gate)
		// A not-found is an answer, not a failure.
		_, err = cs[2].GetOrLoad(bg(), "nf", func(context.Context) (string, error) { return "", ErrNotFound })
		require.ErrorIs(t, err, ErrNotFound)

		// Recovery: the loader works again.
		within(t, 10*time.Second, "recovery", func() {
			for {
				v, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "v2", nil })
				require.NoError(t, err)
				if v == "v2" {
					return
				}
				time.Sleep(time.Millisecond) // the cancelled caller's load may still hold the lease
			}
		})
		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", failing)
			require.NoError(t, err)
			require.Equal(t, "v2", v)
		}

		// Past the window the failure is the caller's.
		clk.advance(3 * time.Hour)
		_, err = cs[2].GetOrLoad(bg(), "k", failing)
		require.ErrorIs(t, err, boom)
	})
}

// GetOrLoadMany follows the same rules per key: stale values within the revalidate window are
// served at once and refreshed in the background, one load per key; expired ones stand in
// for a failed load within the stale-if-error window.
func TestManyStale(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		cs := instances[string](t, b, 2, append(slowMachine, WithTTL(time.Hour), WithNegativeTTL(time.Hour), WithTTLJitter(0),
			WithStaleWhileRevalidate(time.Hour), WithStaleIfError(2*time.Hour))...)
		useClock(clk, cs...)
		keys := []string{"a", "b", "c"}
		m, err := cs[0].GetOrLoadMany(bg(), keys, func(_ context.Context, missing []string) (map[string]string, error) {
			return map[string]string{"a": "a1", "b": "b1"}, nil // c: not found
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a1", "b": "b1"}, m)

		clk.advance(time.Hour + time.Minute)
		gate := make(chan struct{})
		var mu sync.Mutex
		loaded := map[string]int{}
		reload := func(ctx context.Context, missing []string) (map[string]string, error) {
			mu.Lock()
			for _, k := range missing {
				loaded[k]++
			}
			mu.Unlock()
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			out := map[string]string{}
			for _, k := range missing {
				if k != "c" {
					out[k] = k + "2"
				}
			}
			return out, nil
		}
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, err := cs[i%2].GetOrLoadMany(bg(), keys, reload)
				if err != nil || len(m) != 2 || m["a"] != "a1" || m["b"] != "b1" {
					t.Errorf("stale batch = %v, %v", m, err)
				}
			}()
		}
		within(t, 10*time.Second, "stale batch reads", wg.Wait)
		close(gate)
		idle(t, cs...)
		require.Equal(t, map[string]int{"a": 1, "b": 1, "c": 1}, loaded, "one background load per key")
		m, err = cs[1].GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]string, error) {
			return nil, errors.New("must not load")
		})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a2", "b": "b2"}, m)

		// Past the revalidate window, within stale-if-error: a failed load serves the old values.
		clk.advance(2*time.Hour + time.Minute)
		boom := errors.New("database down")
		m, err = cs[0].GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]string, error) { return nil, boom })
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a2", "b": "b2"}, m)
		require.EqualValues(t, 3, cs[0].Stats().StaleIfError)
		require.EqualValues(t, 5*3+3, cs[0].Stats().Stale, "stale requests: 5 revalidating batches of 3 keys, then 3 stale-if-error")
		// A key with nothing to stand in fails the call.
		_, err = cs[0].GetOrLoadMany(bg(), []string{"a", "new"}, func(context.Context, []string) (map[string]string, error) { return nil, boom })
		require.ErrorIs(t, err, boom)
	})
}

// A caller waiting for another process's lease does not take a value that is past its stale
// windows when the lease ends: it replaces it, as a fresh caller would.
func TestWaiterSkipsExpiredValue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		clk := newFakeClock()
		prefix := testPrefix(t)
		c := backendCache[string](t, b, append(slowMachine, WithPrefix(prefix), WithTTL(time.Hour), WithTTLJitter(0),
			WithStaleWhileRevalidate(time.Minute), WithStaleIfError(time.Hour))...)
		useClock(clk, c)
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "old", nil })
		require.NoError(t, err)
		clk.advance(time.Hour + 2*time.Minute) // past the revalidate window: a miss

		// Another process holds the key's lease over the value, and dies.
		lk, err := b.newStore(t).Lease(bg(), prefix+"k", "dead-process:1", 300*time.Millisecond)
		require.NoError(t, err)
		require.True(t, lk.Granted)
		got := make(chan string, 1)
		go func() {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "new", nil })
			if err != nil {
				t.Error(err)
			}
			got <- v
		}()
		b.advance(400 * time.Millisecond)
		within(t, 10*time.Second, "the waiter", func() { require.Equal(t, "new", <-got) })
	})
}
