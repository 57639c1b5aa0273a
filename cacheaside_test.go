package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Guarantee 1: any number of goroutines in any number of processes asking for one missing key
// cause one loader call.
func TestStampedeAcrossInstances(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		caches := instances[int](t, b, 8, slowMachine...) // counts loader calls exactly
		var calls atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				v, err := caches[i%len(caches)].GetOrLoad(bg(), "cold", func(ctx context.Context) (int, error) {
					calls.Add(1)
					time.Sleep(100 * time.Millisecond)
					return 42, nil
				})
				if err != nil || v != 42 {
					t.Errorf("GetOrLoad = %v, %v; want 42, nil", v, err)
				}
			}()
		}
		within(t, 30*time.Second, "200 readers", func() {
			close(start)
			wg.Wait()
		})
		require.EqualValues(t, 1, calls.Load(), "loader calls for one cold key across 8 instances")
	})
}

// Several cold keys at once, each read by many goroutines on many instances: one load each.
func TestStampedeManyKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		caches := instances[string](t, b, 4, slowMachine...) // counts loader calls exactly
		const keys = 20
		var calls [keys]atomic.Int32
		var wg sync.WaitGroup
		for i := range 400 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k := i % keys
				want := fmt.Sprint("v", k)
				v, err := caches[i%len(caches)].GetOrLoad(bg(), fmt.Sprint("k", k), func(ctx context.Context) (string, error) {
					calls[k].Add(1)
					time.Sleep(20 * time.Millisecond)
					return want, nil
				})
				if err != nil || v != want {
					t.Errorf("GetOrLoad(k%d) = %q, %v", k, v, err)
				}
			}()
		}
		within(t, 30*time.Second, "400 readers", wg.Wait)
		for k := range calls {
			require.EqualValues(t, 1, calls[k].Load(), "loader calls for key %d", k)
		}
	})
}

// A load that started before an Invalidate never writes its value back, and a call that starts
// after the Invalidate returned never joins it, even in the same instance.
func TestInvalidateDuringLoad(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[string](t, b, 2, slowMachine...) // a timed-out store call would fail open
		a, other := cs[0], cs[1]
		release := make(chan struct{})
		loading := make(chan struct{})
		oldDone := make(chan string, 1)
		go func() {
			v, err := a.GetOrLoad(bg(), "k", func(ctx context.Context) (string, error) {
				close(loading)
				<-release
				return "old", nil
			})
			if err != nil {
				t.Error(err)
			}
			oldDone <- v
		}()
		<-loading
		require.NoError(t, other.Invalidate(bg(), "k"))

		// Same instance, after the Invalidate returned: must not join the old load.
		var calls atomic.Int32
		v, err := a.GetOrLoad(bg(), "k", func(ctx context.Context) (string, error) {
			calls.Add(1)
			return "new", nil
		})
		require.NoError(t, err)
		require.Equal(t, "new", v)
		require.EqualValues(t, 1, calls.Load())

		close(release)
		require.Equal(t, "old", <-oldDone, "the caller that started before the invalidation gets its own load")

		// The old fill was refused: every instance reads "new".
		for _, c := range cs {
			v, err := c.GetOrLoad(bg(), "k", func(ctx context.Context) (string, error) { return "reloaded", nil })
			require.NoError(t, err)
			require.Equal(t, "new", v)
		}
	})
}

// Guarantee 2 under real concurrency: readers with slow loaders race writers that update the
// source of truth and then invalidate. No read that began after an invalidation returned sees
// an older version, and at rest every cached value equals the source of truth.
func TestNoStaleSetRace(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// slowMachine: an Invalidate must not time out on a busy machine (the test stops at an
		// invalidation error).
		caches := instances[int64](t, b, 4, append(slowMachine, WithLeaseWait(time.Millisecond, 10*time.Millisecond))...)
		const keys = 4
		var truth [keys]atomic.Int64
		// invalidated[k] is the newest version whose invalidation has returned.
		var invalidated [keys]atomic.Int64
		var violations atomic.Int32
		var reads, writes atomic.Int64
		// 2 s per store in make verify; 1 s in make test (-short).
		d := 2 * time.Second
		if testing.Short() {
			d = time.Second
		}
		ctx, cancel := context.WithTimeout(bg(), d)
		defer cancel()
		var wg sync.WaitGroup
		for r := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(r), 1))
				for ctx.Err() == nil {
					k := rng.IntN(keys)
					floor := invalidated[k].Load()
					v, err := caches[r%len(caches)].GetOrLoad(ctx, fmt.Sprint(k), func(context.Context) (int64, error) {
						v := truth[k].Load()
						time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
						return v, nil
					})
					if err != nil {
						if ctx.Err() == nil {
							t.Errorf("read: %v", err)
						}
						return
					}
					reads.Add(1)
					if v < floor {
						violations.Add(1)
						t.Errorf("key %d: read %d after the invalidation of version %d had returned", k, v, floor)
					}
				}
			}()
		}
		var writeMu [keys]sync.Mutex
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 2))
				for ctx.Err() == nil {
					k := rng.IntN(keys)
					writeMu[k].Lock() // one writer per key at a time, as a row lock would
					v := truth[k].Add(1)
					err := caches[w%len(caches)].Invalidate(bg(), fmt.Sprint(k))
					if err == nil && invalidated[k].Load() < v {
						invalidated[k].Store(v)
					}
					writeMu[k].Unlock()
					if err != nil {
						t.Errorf("invalidate: %v", err)
						return
					}
					writes.Add(1)
					time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
				}
			}()
		}
		wg.Wait()
		t.Logf("%d reads, %d writes, %d violations", reads.Load(), writes.Load(), violations.Load())
		require.Positive(t, writes.Load())
		// At rest: whatever is cached equals the truth.
		for k := range keys {
			for i, c := range caches {
				v, err := c.GetOrLoad(bg(), fmt.Sprint(k), func(context.Context) (int64, error) { return truth[k].Load(), nil })
				require.NoError(t, err)
				require.Equal(t, truth[k].Load(), v, "key %d on instance %d at rest", k, i)
			}
		}
	})
}

// Guarantee 5: a caller whose context ends leaves promptly; the shared load goes on for the
// others.
func TestCancelledWaiter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[string](t, b, 2, slowMachine...) // counts loader calls exactly
		release := make(chan struct{})
		loading := make(chan struct{})
		var calls atomic.Int32
		load := func(ctx context.Context) (string, error) {
			if calls.Add(1) == 1 {
				close(loading)
			}
			select {
			case <-release:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return "v", nil
		}
		firstCtx, cancelFirst := context.WithCancel(bg())
		firstErr := make(chan error, 1)
		go func() {
			_, err := cs[0].GetOrLoad(firstCtx, "k", load)
			firstErr <- err
		}()
		<-loading

		// A waiter in the same instance and one in another, each leaving on its own context.
		for i, c := range cs {
			ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
			within(t, 5*time.Second, "a cancelled waiter", func() {
				_, err := c.GetOrLoad(ctx, "k", load)
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("waiter %d: err = %v, want DeadlineExceeded", i, err)
				}
			})
			cancel()
		}

		// The first caller leaves too; the load goes on.
		cancelFirst()
		within(t, 5*time.Second, "the cancelled first caller", func() {
			require.ErrorIs(t, <-firstErr, context.Canceled)
		})

		got := make(chan string, 1)
		go func() {
			v, err := cs[1].GetOrLoad(bg(), "k", load)
			if err != nil {
				t.Error(err)
			}
			got <- v
		}()
		close(release)
		within(t, 10*time.Second, "a patient waiter", func() {
			require.Equal(t, "v", <-got)
		})
		require.EqualValues(t, 1, calls.Load(), "the shared load ran once and was not cancelled")
	})
}

// A caller with an already cancelled context gets ctx.Err() and no load.
func TestCancelledBeforeCall(t *testing.T) {
	c := newTestCache[int](t, NewMemoryStore())
	ctx, cancel := context.WithCancel(bg())
	cancel()
	_, err := c.GetOrLoad(ctx, "k", func(context.Context) (int, error) {
		t.Error("loader called")
		return 0, nil
	})
	require.ErrorIs(t, err, context.Canceled)
}

// Stored TTLs are jittered (by default up to 10% shorter) so keys filled together do not
// expire together; jitter 0 stores the TTL as given.
//
// A key's stored TTL is bounded from what PTTL answers and when: at least the PTTL, at most
// the PTTL plus the time since the call that filled it began. The checks use those bounds,
// not the raw PTTLs, which shrink as the loop goes (by a second and more on a loaded machine
// under -race: "no jitter" failed so once). slowMachine: a fill that outlives the default
// 50 ms store timeout leaves no key behind (PTTL -2).
func TestTTLJitter(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		// spread returns, over 50 keys, the smallest and largest lower bounds of their stored
		// TTLs (lo, hi) and the smallest and largest upper bounds (loUp, hiUp).
		spread := func(opts ...Option) (lo, hi, loUp, hiUp time.Duration) {
			prefix := testPrefix(t)
			c := newTestCache[int](t, NewRedisStore(raw), append(append([]Option{WithPrefix(prefix), WithTTL(100 * time.Second)}, slowMachine...), opts...)...)
			lo, hi, loUp, hiUp = time.Hour, 0, time.Hour, 0
			for i := range 50 {
				k := fmt.Sprint("k", i)
				t0 := time.Now()
				_, err := c.GetOrLoad(bg(), k, func(context.Context) (int, error) { return i, nil })
				require.NoError(t, err)
				ttl, err := raw.PTTL(bg(), prefix+k).Result()
				require.NoError(t, err)
				require.Positive(t, ttl, "PTTL of %s: the fill left no key (-2) or no TTL (-1)", k)
				up := ttl + time.Since(t0) + time.Millisecond // PTTL is in whole milliseconds
				lo, hi = min(lo, ttl), max(hi, ttl)
				loUp, hiUp = min(loUp, up), max(hiUp, up)
			}
			return lo, hi, loUp, hiUp
		}
		lo, hi, loUp, hiUp := spread()
		t.Logf("default jitter: TTLs in [%v, %v] (upper bounds [%v, %v])", lo, hi, loUp, hiUp)
		require.GreaterOrEqual(t, loUp, 89*time.Second)
		require.LessOrEqual(t, hi, 100*time.Second)
		require.Greater(t, hi-loUp, 2*time.Second, "TTLs spread out")

		lo, hi, loUp, hiUp = spread(WithTTLJitter(0))
		t.Logf("no jitter: TTLs in [%v, %v] (upper bounds [%v, %v])", lo, hi, loUp, hiUp)
		require.LessOrEqual(t, hi, 100*time.Second, "no jitter")
		require.GreaterOrEqual(t, loUp, 100*time.Second-time.Millisecond, "no jitter: every key stored for 100 s")
	})
}

// Values over the maximum size are returned but not stored.
func TestMaxValueSize(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b, WithMaxValueSize(1024))
		var calls atomic.Int32
		big := strings.Repeat("x", 2000)
		for range 2 {
			v, err := c.GetOrLoad(bg(), "big", func(context.Context) (string, error) { calls.Add(1); return big, nil })
			require.NoError(t, err)
			require.Equal(t, big, v)
		}
		require.EqualValues(t, 2, calls.Load(), "too large: not stored")
		for range 2 {
			_, err := c.GetOrLoad(bg(), "small", func(context.Context) (string, error) { calls.Add(1); return "s", nil })
			require.NoError(t, err)
		}
		require.EqualValues(t, 3, calls.Load(), "small: stored")
	})
}

func TestNewValidates(t *testing.T) {
	_, err := New[int](nil)
	require.Error(t, err)
	var nilStore *RedisStore
	_, err = New[int](nilStore)
	require.Error(t, err)
	bad := map[string]Option{
		"negative TTL":          WithTTL(-time.Second),
		"zero TTL":              WithTTL(0),
		"negative negative TTL": WithNegativeTTL(-1),
		"negative beta":         WithEarlyRefresh(-0.5),
		"local size":            WithLocalCache(0, time.Second),
		"local ttl":             WithLocalCache(10, -1),
		"jitter":                WithTTLJitter(1),
		"load timeout":          WithLoadTimeout(0),
		"lease":                 WithLeaseTTL(-1),
		"store timeout":         WithStoreTimeout(0),
		"connect timeout":       WithConnectTimeout(0),
		"max size":              WithMaxValueSize(-1),
		"codec":                 WithCodec(nil),
		"breaker":               WithCircuitBreaker(0, time.Second),
		"lease wait":            WithLeaseWait(time.Second, time.Millisecond),
		"nil option":            nil,
	}
	for name, opt := range bad {
		_, err := New[int](NewMemoryStore(), opt)
		require.ErrorIs(t, err, ErrInvalidOption, name)
		require.True(t, strings.HasPrefix(err.Error(), "cacheaside: "), name)
	}
	c, err := New[int](NewMemoryStore(), WithNegativeTTL(0), WithEarlyRefresh(0), WithTTLJitter(0), WithMaxValueSize(0))
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

func TestNilLoader(t *testing.T) {
	c := newTestCache[int](t, NewMemoryStore())
	_, err := c.GetOrLoad(bg(), "k", nil)
	require.Error(t, err)
	_, err = c.GetOrLoadMany(bg(), []string{"k"}, nil)
	require.Error(t, err)
}

// Close cancels loads in flight, waits for the cache's goroutines, and makes later calls fail;
// a caller whose load Close ended gets ErrClosed, not context.Canceled.
func TestClose(t *testing.T) {
	c, err := New[int](NewMemoryStore())
	require.NoError(t, err)
	loading := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(bg(), "k", func(ctx context.Context) (int, error) {
			close(loading)
			<-ctx.Done()
			return 0, ctx.Err()
		})
		result <- err
	}()
	<-loading
	within(t, 5*time.Second, "Close", func() { require.NoError(t, c.Close()) })
	require.ErrorIs(t, <-result, ErrClosed, "Close ended the load; the caller's own context is live")
	require.NoError(t, c.Close(), "idempotent")
	_, err = c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil })
	require.ErrorIs(t, err, ErrClosed)
	_, err = c.GetOrLoadMany(bg(), []string{"k"}, func(context.Context, []string) (map[string]int, error) { return nil, nil })
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, c.Invalidate(bg(), "k"), ErrClosed)
	_, err = c.InvalidatePattern(bg(), "*")
	require.ErrorIs(t, err, ErrClosed)
}

// A waiter for another process's lease takes it over when the holder dies (its lease
// expires) and loads itself.
func TestLeaseTakeover(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		s := b.newStore(t)
		// A "process" that took the lease and died.
		_, err := s.GetOrLease(bg(), prefix+"k", "dead-process:1", 300*time.Millisecond)
		require.NoError(t, err)
		c := backendCache[string](t, b, WithPrefix(prefix))
		got := make(chan string, 1)
		go func() {
			v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "mine", nil })
			if err != nil {
				t.Error(err)
			}
			got <- v
		}()
		b.advance(400 * time.Millisecond) // the dead holder's lease expires while we wait
		within(t, 10*time.Second, "a takeover", func() { require.Equal(t, "mine", <-got) })
	})
}
