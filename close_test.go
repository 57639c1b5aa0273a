package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// leasedKeys returns the keys under prefix that hold a lease (field t) in the Redis behind b.
func leasedKeys(t testing.TB, b backend, prefix string) []string {
	t.Helper()
	raw := b.client(t)
	var leased []string
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 500).Iterator()
		for iter.Next(ctx) {
			ok, err := c.HExists(ctx, iter.Val(), "t").Result()
			if err == nil && ok {
				leased = append(leased, iter.Val())
			}
		}
		return iter.Err()
	}
	switch c := raw.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex
		require.NoError(t, c.ForEachMaster(bg(), func(ctx context.Context, n *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, n)
		}))
	case *redis.Client:
		require.NoError(t, scan(bg(), c))
	}
	return leased
}

// TestCloseReleasesLeases: a burst of cold-key reads, then Close a few milliseconds later:
// when Close returns, no key holds a lease of the closed instance, and another instance reads
// every key at once (not after the lease TTL).
func TestCloseReleasesLeases(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if b.name == "miniredis" {
			t.Skip("real stores and memory only: timing of a burst")
		}
		prefix := testPrefix(t)
		// slowMachine: a lookup that times out under load may be granted its lease after the
		// release Close sends for it (a late lease, which expires with its TTL: late_lease_test.go
		// and TestFailOpenLateLease cover it). This test is about the leases Close knows of.
		a := backendCache[int](t, b, append([]Option{WithPrefix(prefix)}, slowMachine...)...)
		const n = 400
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := a.GetOrLoad(bg(), fmt.Sprint("k", i), func(ctx context.Context) (int, error) {
					select {
					case <-ctx.Done():
						return 0, ctx.Err()
					case <-time.After(20 * time.Millisecond):
						return i, nil
					}
				})
				if err != nil && !errors.Is(err, ErrClosed) {
					t.Errorf("k%d: %v, want a value or ErrClosed", i, err)
				}
			}()
		}
		time.Sleep(2 * time.Millisecond)
		within(t, 20*time.Second, "Close", func() { require.NoError(t, a.Close()) })
		within(t, 5*time.Second, "every call to return after Close", wg.Wait)
		if b.real {
			require.Zero(t, a.Stats().UnreleasedLeases)
			require.Empty(t, leasedKeys(t, b, prefix), "leases left behind by Close")
		}
		other := backendCache[int](t, b, WithPrefix(prefix))
		var slow atomic.Int64
		var owg sync.WaitGroup
		for i := range n {
			owg.Add(1)
			go func() {
				defer owg.Done()
				ctx, cancel := context.WithTimeout(bg(), 2*time.Second)
				defer cancel()
				if _, err := other.GetOrLoad(ctx, fmt.Sprint("k", i), func(context.Context) (int, error) { return i, nil }); err != nil {
					slow.Add(1)
				}
			}()
		}
		owg.Wait()
		require.Zero(t, slow.Load(), "keys that made another instance wait for a lease Close left")
	})
}

// TestCloseRacesCallers: Close at a random moment while 16 goroutines read a hot key (its
// value invalidated now and then, so lookups, loads and shared lookups are all in flight):
// every call returns, with a value or ErrClosed: 1,000 times on memory and on Redis in make
// verify (about 35 s here), 100 and 40 times in make test (-short).
func TestCloseRacesCallers(t *testing.T) {
	for _, mk := range []func() backend{memoryBackend, redisBackend} {
		b := mk()
		t.Run(b.name, func(t *testing.T) {
			prefix := testPrefix(t)
			store := b.newStore(t)
			rounds := 1000 // make verify; make test (-short): 100 on memory, 40 on Redis
			if testing.Short() {
				rounds = 100
				if b.real {
					rounds = 40
				}
			}
			for r := range rounds {
				c, err := New[int](store, WithPrefix(prefix))
				require.NoError(t, err)
				var wg sync.WaitGroup
				var bad atomic.Value
				for g := range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; ; i++ {
							if g == 0 && i%3 == 0 {
								_ = c.Invalidate(bg(), "hot")
							}
							_, err := c.GetOrLoad(bg(), "hot", func(ctx context.Context) (int, error) {
								time.Sleep(rand.N(time.Millisecond))
								return r, ctx.Err()
							})
							if errors.Is(err, ErrClosed) {
								return
							}
							if err != nil {
								bad.CompareAndSwap(nil, err)
								return
							}
						}
					}()
				}
				time.Sleep(rand.N(3 * time.Millisecond))
				require.NoError(t, c.Close())
				returned := make(chan struct{})
				go func() { wg.Wait(); close(returned) }()
				select {
				case <-returned:
				case <-time.After(10 * time.Second):
					t.Fatalf("round %d: calls still blocked 10 s after Close", r)
				}
				if err := bad.Load(); err != nil {
					t.Fatalf("round %d: a call returned %v, want a value or ErrClosed", r, err)
				}
			}
		})
	}
}
