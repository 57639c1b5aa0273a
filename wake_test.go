package cacheaside

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sleepyWaiters are the options of a Cache whose lease waiters would poll only every 20 to
// 40 s: a waiter that returns within seconds of the fill was woken by it (wake.go). The lease
// outlives the test, so its expiry does not cap the sleeps either.
var sleepyWaiters = append([]Option{WithLeaseWait(40*time.Second, 40*time.Second), WithLeaseTTL(time.Minute), WithLoadTimeout(time.Minute)}, slowMachine...)

// A caller waiting for another process's lease is woken by the fill (and by a release) instead
// of sleeping out its backoff: on Redis, standalone and Cluster, and on a MemoryStore.
func TestLeaseWaitersWokenByFill(t *testing.T) {
	run := func(t *testing.T, holder, waiter *Cache[string]) {
		for _, tc := range []struct {
			name    string
			loadErr error
			want    string
		}{
			{"fill", nil, "from-holder"},
			{"release", errors.New("the holder's load failed"), "from-waiter"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				key := "k-" + tc.name
				_, err := waiter.GetOrLoad(bg(), "warm-"+tc.name, constLoad("w"))
				require.NoError(t, err) // dialled, scripts loaded
				started, release := make(chan struct{}), make(chan struct{})
				held := make(chan error, 1)
				go func() {
					_, err := holder.GetOrLoad(bg(), key, func(context.Context) (string, error) {
						close(started)
						<-release
						return "from-holder", tc.loadErr
					})
					held <- err
				}()
				<-started
				var loads atomic.Int32
				got := make(chan string, 1)
				go func() {
					v, err := waiter.GetOrLoad(bg(), key, func(context.Context) (string, error) {
						loads.Add(1)
						return "from-waiter", nil
					})
					if err != nil {
						v = err.Error()
					}
					got <- v
				}()
				// Let the waiter find the lease held and go to sleep, then end the load.
				require.Eventually(t, func() bool { return waiterWaiting(waiter, key) }, 10*time.Second, time.Millisecond)
				time.Sleep(50 * time.Millisecond)
				close(release)
				select {
				case v := <-got:
					require.Equal(t, tc.want, v)
				case <-time.After(10 * time.Second): // polling alone: 20 s at least
					t.Fatal("the waiter was not woken by the holder's " + tc.name)
				}
				if err := <-held; tc.loadErr == nil {
					require.NoError(t, err)
				}
			})
		}
	}
	forEachReal(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		holder := backendCache[string](t, b, append(sleepyWaiters, WithPrefix(prefix))...)
		waiter := backendCache[string](t, b, append(sleepyWaiters, WithPrefix(prefix))...)
		run(t, holder, waiter)
	})
	t.Run("memory", func(t *testing.T) {
		store := NewMemoryStore()
		t.Cleanup(func() { store.Close() })
		holder := newTestCache[string](t, store, append(sleepyWaiters, WithPrefix("p:"))...)
		waiter := newTestCache[string](t, store, append(sleepyWaiters, WithPrefix("p:"))...)
		run(t, holder, waiter)
	})
}

// waiterWaiting reports whether c has a waiter watching store key prefix+key.
func waiterWaiting(c *Cache[string], key string) bool {
	if c.wakes == nil {
		return false
	}
	c.wakes.mu.Lock()
	defer c.wakes.mu.Unlock()
	return c.wakes.keys[c.cfg.prefix+key] != nil
}
