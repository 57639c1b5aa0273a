package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A loader panic reaches every caller sharing the load, and frees the key's lease at once.
func TestLoaderPanic(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// A lease of a minute: if the panic did not free it, the next load would wait that long.
		cs := instances[string](t, b, 2, WithLeaseTTL(time.Minute))
		started := make(chan struct{})
		release := make(chan struct{})
		var calls atomic.Int32
		boom := func(context.Context) (string, error) {
			if calls.Add(1) == 1 {
				close(started)
			}
			<-release
			panic("boom")
		}
		var wg sync.WaitGroup
		var panics atomic.Int32
		call := func(c *Cache[string]) {
			defer wg.Done()
			defer func() {
				r := recover()
				pe, ok := r.(*PanicError)
				if !ok {
					t.Errorf("recovered %T %v, want *PanicError", r, r)
					return
				}
				if pe.Value != "boom" || !strings.Contains(pe.Error(), "boom") {
					t.Errorf("PanicError %q does not carry the original", pe.Error())
				}
				panics.Add(1)
			}()
			_, _ = c.GetOrLoad(bg(), "k", boom)
		}
		wg.Add(1)
		go call(cs[0])
		<-started
		for range 5 { // joiners of the same instance share the load
			wg.Add(1)
			go call(cs[0])
		}
		// Let the joiners join: each counts as coalesced once it shares the flight. (A 20 ms
		// sleep here once let a joiner on miniredis arrive after the panic, on a loaded
		// machine: it loaded again, calls = 2.)
		within(t, 10*time.Second, "5 joiners sharing the load", func() {
			for cs[0].obs.coalescedN[coalescedFlight].Load() < 5 {
				time.Sleep(time.Millisecond)
			}
		})
		close(release)
		within(t, 10*time.Second, "panicking callers", wg.Wait)
		require.EqualValues(t, 6, panics.Load(), "every caller sharing the load panics")
		require.EqualValues(t, 1, calls.Load())

		within(t, 5*time.Second, "a load after the panic", func() {
			v, err := cs[1].GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "ok", nil })
			require.NoError(t, err)
			require.Equal(t, "ok", v)
		})
	})
}

// A loader that calls runtime.Goexit (t.FailNow in a loader, say) does not hang its callers.
func TestLoaderGoexit(t *testing.T) {
	c := newTestCache[int](t, NewMemoryStore())
	within(t, 5*time.Second, "GetOrLoad with a Goexit loader", func() {
		_, err := c.GetOrLoad(bg(), "k", func(context.Context) (int, error) {
			runtime.Goexit()
			return 1, nil
		})
		require.ErrorIs(t, err, errLoaderExit)
	})
}

// ErrNotFound is cached for the negative TTL; 0 disables it.
func TestNegativeCaching(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		var calls atomic.Int32
		missing := func(context.Context) (int, error) {
			calls.Add(1)
			return 0, fmt.Errorf("user 7: %w", ErrNotFound)
		}
		c := backendCache[int](t, b, WithNegativeTTL(300*time.Millisecond))
		for range 3 {
			_, err := c.GetOrLoad(bg(), "k", missing)
			require.ErrorIs(t, err, ErrNotFound)
		}
		require.EqualValues(t, 1, calls.Load(), "not-found is cached")
		b.advance(400 * time.Millisecond)
		_, err := c.GetOrLoad(bg(), "k", missing)
		require.ErrorIs(t, err, ErrNotFound)
		require.EqualValues(t, 2, calls.Load(), "the negative entry expired")

		calls.Store(0)
		off := backendCache[int](t, b, WithNegativeTTL(0))
		for range 3 {
			_, err := off.GetOrLoad(bg(), "k", missing)
			require.ErrorIs(t, err, ErrNotFound)
		}
		require.EqualValues(t, 3, calls.Load(), "negative caching off")
	})
}

// Other loader errors are returned, not cached, and free the lease at once.
func TestLoaderErrorNotCached(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[int](t, b, 2, WithLeaseTTL(time.Minute))
		dbDown := errors.New("db down")
		_, err := cs[0].GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 0, dbDown })
		require.ErrorIs(t, err, dbDown)
		within(t, 5*time.Second, "a load after a failed one", func() {
			v, err := cs[1].GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 5, nil })
			require.NoError(t, err)
			require.Equal(t, 5, v)
		})
	})
}
