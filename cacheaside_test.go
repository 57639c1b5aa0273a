package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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

// Guarantee 4: bytes that do not decode are a miss, replaced by the next fill.
func TestBadDataIsAMiss(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		c := backendCache[map[string]int](t, b, append([]Option{WithPrefix(prefix)}, slowMachine...)...)
		raw := b.client(t)
		want := map[string]int{"a": 1}
		load := func(context.Context) (map[string]int, error) { return want, nil }
		poison := map[string]func(key string) error{
			"string":        func(k string) error { return raw.Set(bg(), k, "garbage", 0).Err() },
			"list":          func(k string) error { return raw.RPush(bg(), k, "a", "b").Err() },
			"hash-garbage":  func(k string) error { return raw.HSet(bg(), k, "v", "\x00\x01garbage").Err() },
			"hash-empty-v":  func(k string) error { return raw.HSet(bg(), k, "v", "").Err() },
			"truncated":     func(k string) error { return raw.HSet(bg(), k, "v", "\xca\x01\x00").Err() },
			"bad-payload":   func(k string) error { return raw.HSet(bg(), k, "v", string(c.mustEncode(t, "{"))).Err() },
			"other-type":    func(k string) error { return raw.HSet(bg(), k, "v", string(otherTypeEntry(t))).Err() },
			"hash-no-field": func(k string) error { return raw.HSet(bg(), k, "x", "y").Err() },
		}
		for name, write := range poison {
			t.Run(name, func(t *testing.T) {
				key := "bad:" + name
				require.NoError(t, write(prefix+key))
				var calls atomic.Int32
				v, err := c.GetOrLoad(bg(), key, func(ctx context.Context) (map[string]int, error) {
					calls.Add(1)
					return load(ctx)
				})
				require.NoError(t, err)
				require.Equal(t, want, v)
				require.EqualValues(t, 1, calls.Load())
				// Replaced: the next read is a hit.
				v, err = c.GetOrLoad(bg(), key, func(context.Context) (map[string]int, error) {
					t.Error("loader called: the bad entry was not replaced")
					return nil, nil
				})
				require.NoError(t, err)
				require.Equal(t, want, v)
			})
		}
	})
}

// mustEncode builds an envelope of this cache's schema around a raw payload.
func (c *Cache[T]) mustEncode(t testing.TB, payload string) []byte {
	t.Helper()
	data, _, ok := c.encode(bg(), "", *new(T), false, 0)
	require.True(t, ok)
	return append(data[:19:19], payload...)
}

// otherTypeEntry is a valid entry written by a Cache of another type.
func otherTypeEntry(t testing.TB) []byte {
	c, err := New[string](NewMemoryStore())
	require.NoError(t, err)
	defer c.Close()
	data, _, ok := c.encode(bg(), "", "a string", false, 0)
	require.True(t, ok)
	return data
}

// Values written by a Cache of another type under the same prefix read as misses, not garbage.
func TestTypeChangeIsAMiss(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		s := b.newStore(t)
		asString := newTestCache[string](t, s, WithPrefix(prefix))
		_, err := asString.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "42", nil })
		require.NoError(t, err)
		asInt := newTestCache[int](t, s, WithPrefix(prefix))
		v, err := asInt.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 7, nil })
		require.NoError(t, err)
		require.Equal(t, 7, v)
	})
}

// GetOrLoadMany calls load once with exactly the missing keys; keys it leaves out are
// not found, cached as such, and absent from the result.
func TestGetOrLoadManyContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b, slowMachine...)
		for _, k := range []string{"a", "b"} {
			_, err := c.GetOrLoad(bg(), k, func(context.Context) (string, error) { return "cached-" + k, nil })
			require.NoError(t, err)
		}
		var calls [][]string
		load := func(ctx context.Context, missing []string) (map[string]string, error) {
			calls = append(calls, append([]string(nil), missing...))
			out := map[string]string{}
			for _, k := range missing {
				if k != "d" {
					out[k] = "loaded-" + k
				}
			}
			return out, nil
		}
		got, err := c.GetOrLoadMany(bg(), []string{"a", "b", "c", "d", "c"}, load)
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "cached-a", "b": "cached-b", "c": "loaded-c"}, got)
		require.Len(t, calls, 1)
		sort.Strings(calls[0])
		require.Equal(t, []string{"c", "d"}, calls[0])

		got, err = c.GetOrLoadMany(bg(), []string{"a", "b", "c", "d"}, load)
		require.NoError(t, err)
		require.Len(t, got, 3)
		require.Len(t, calls, 1, "all cached (d as not found): no load")

		_, err = c.GetOrLoad(bg(), "d", func(context.Context) (string, error) {
			t.Error("d should be cached as not found")
			return "", nil
		})
		require.ErrorIs(t, err, ErrNotFound)

		got, err = c.GetOrLoadMany(bg(), nil, load)
		require.NoError(t, err)
		require.Empty(t, got)
		require.Len(t, calls, 1)
	})
}

// A batch load error fails the batch and caches nothing.
func TestGetOrLoadManyError(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[int](t, b)
		boom := errors.New("boom")
		_, err := c.GetOrLoadMany(bg(), []string{"x", "y"}, func(context.Context, []string) (map[string]int, error) { return nil, boom })
		require.ErrorIs(t, err, boom)
		got, err := c.GetOrLoadMany(bg(), []string{"x", "y"}, func(_ context.Context, missing []string) (map[string]int, error) {
			require.Len(t, missing, 2)
			return map[string]int{"x": 1, "y": 2}, nil
		})
		require.NoError(t, err)
		require.Equal(t, map[string]int{"x": 1, "y": 2}, got)
	})
}

// Batches and single reads over overlapping keys, on several instances: every key loaded
// exactly once.
func TestGetOrLoadManyConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		caches := instances[int](t, b, 3, slowMachine...)
		const n = 60
		var loads [n]atomic.Int32
		keyOf := func(i int) string { return fmt.Sprint("item:", i) }
		idx := func(k string) int {
			var i int
			_, _ = fmt.Sscanf(k, "item:%d", &i) // a key of another shape: 0
			return i
		}
		batch := func(ctx context.Context, missing []string) (map[string]int, error) {
			time.Sleep(10 * time.Millisecond)
			out := make(map[string]int, len(missing))
			for _, k := range missing {
				i := idx(k)
				loads[i].Add(1)
				if i%10 != 9 { // every tenth does not exist
					out[k] = i
				}
			}
			return out, nil
		}
		var wg sync.WaitGroup
		for g := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := caches[g%len(caches)]
				if g%3 == 0 {
					for i := g; i < n; i += 7 {
						v, err := c.GetOrLoad(bg(), keyOf(i), func(ctx context.Context) (int, error) {
							m, err := batch(ctx, []string{keyOf(i)})
							if v, ok := m[keyOf(i)]; ok || err != nil {
								return v, err
							}
							return 0, ErrNotFound
						})
						if i%10 == 9 {
							if !errors.Is(err, ErrNotFound) {
								t.Errorf("key %d: %v", i, err)
							}
						} else if err != nil || v != i {
							t.Errorf("key %d: %v, %v", i, v, err)
						}
					}
					return
				}
				var keys []string
				for i := g % 5; i < n; i += 1 + g%4 {
					keys = append(keys, keyOf(i))
				}
				got, err := c.GetOrLoadMany(bg(), keys, batch)
				if err != nil {
					t.Error(err)
					return
				}
				for _, k := range keys {
					i := idx(k)
					v, ok := got[k]
					if i%10 == 9 {
						if ok {
							t.Errorf("key %d should be absent", i)
						}
					} else if !ok || v != i {
						t.Errorf("key %d: %v, %v", i, v, ok)
					}
				}
			}()
		}
		within(t, 30*time.Second, "concurrent batches", wg.Wait)
		for i := range loads {
			if l := loads[i].Load(); l > 1 {
				t.Errorf("key %d loaded %d times", i, l)
			}
		}
	})
}

// Invalidate removes every key given, across hash slots on Cluster.
func TestInvalidateMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[int](t, b)
		keys := make([]string, 100)
		for i := range keys {
			keys[i] = fmt.Sprint("k", i)
			_, err := c.GetOrLoad(bg(), keys[i], func(context.Context) (int, error) { return i, nil })
			require.NoError(t, err)
		}
		require.NoError(t, c.Invalidate(bg(), keys...))
		require.NoError(t, c.Invalidate(bg()))
		var calls atomic.Int32
		for i, k := range keys {
			v, err := c.GetOrLoad(bg(), k, func(context.Context) (int, error) { calls.Add(1); return -i, nil })
			require.NoError(t, err)
			require.Equal(t, -i, v)
		}
		require.EqualValues(t, len(keys), calls.Load())
	})
}

// Invalidate is one round trip on a standalone Redis, and at most one per master on Cluster.
func TestInvalidateRoundTrips(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		counter := countRoundTrips(raw)
		c := newTestCache[int](t, NewRedisStore(raw))
		keys := make([]string, 50)
		for i := range keys {
			keys[i] = fmt.Sprint("k", i)
		}
		require.NoError(t, c.Invalidate(bg(), "warm-up"))
		counter.reset()
		require.NoError(t, c.Invalidate(bg(), keys...))
		if !b.cluster {
			require.Equal(t, 1, counter.load(), "round trips for a 50-key Invalidate (UNLINK and PUBLISH pipelined)")
			return
		}
		// One UNLINK pipeline per master, then the PUBLISH to one of them: it must follow every
		// delete, or an instance could reload a key from a master that has not deleted it yet.
		nodes := counter.perNode()
		require.Len(t, nodes, 3, "50 keys reach every master")
		require.Equal(t, len(nodes)+1, counter.load(), "round trips for a 50-key Invalidate: %v", nodes)
		require.LessOrEqual(t, counter.maxPerNode(), 2, "round trips per master: %v", nodes)
	})
}

// A hit is one round trip; a miss with a load at most two.
func TestRoundTrips(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		counter := countRoundTrips(raw)
		c := newTestCache[int](t, NewRedisStore(raw))
		require.NoError(t, raw.Ping(bg()).Err()) // dial and load nothing yet
		_, err := c.GetOrLoad(bg(), "warm", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err) // loads scripts on the server

		counter.reset()
		_, err = c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err)
		require.LessOrEqual(t, counter.load(), 2, "round trips of a miss with a load")

		counter.reset()
		_, err = c.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 1, nil })
		require.NoError(t, err)
		require.Equal(t, 1, counter.load(), "round trips of a hit")
	})
}

// roundTrips counts the round trips a client makes, per node: each command, and each pipeline
// a node receives. Build it with countRoundTrips.
type roundTrips struct {
	mu    sync.Mutex
	nodes map[string]int // by node address ("" for a client of one server)
}

// countRoundTrips counts raw's round trips. raw must not have sent anything yet. On Cluster
// the hook goes on each node's client as go-redis creates it (OnNewNode): a hook on the
// ClusterClient itself runs once per pipeline however many nodes it goes to (go-redis v9
// runs the node clients' pipeline hooks once per node: processPipelineNode), so it could
// not see a node sent more than one.
func countRoundTrips(raw redis.UniversalClient) *roundTrips {
	r := &roundTrips{nodes: map[string]int{}}
	if cc, ok := raw.(*redis.ClusterClient); ok {
		cc.OnNewNode(func(node *redis.Client) { node.AddHook(nodeTrips{r, node.Options().Addr}) })
	} else {
		raw.AddHook(nodeTrips{r, ""})
	}
	return r
}

func (r *roundTrips) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.nodes)
}

// load returns the round trips of every node together.
func (r *roundTrips) load() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.nodes {
		n += c
	}
	return n
}

// perNode returns the round trips of each node that had any.
func (r *roundTrips) perNode() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.nodes)
}

// maxPerNode returns the round trips of the busiest node.
func (r *roundTrips) maxPerNode() int {
	n := 0
	for _, c := range r.perNode() {
		n = max(n, c)
	}
	return n
}

func (r *roundTrips) add(addr string) {
	r.mu.Lock()
	r.nodes[addr]++
	r.mu.Unlock()
}

// nodeTrips is the hook of one node's client.
type nodeTrips struct {
	r    *roundTrips
	addr string
}

// notCounted are the commands go-redis sends on its own: the handshake of a new connection
// (HELLO, CLIENT SETINFO) and Cluster topology reads.
func notCounted(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "client", "cluster":
		return true
	}
	return false
}

func (h nodeTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h nodeTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if !notCounted(cmd) && !(cmd.Name() == "evalsha" && isNoScript(cmd.Err())) {
			h.r.add(h.addr) // a NOSCRIPT reply is retried as EVAL by go-redis: count that once
		}
		return err
	}
}
func (h nodeTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return !notCounted(c) }) {
			return next(ctx, cmds) // a connection's handshake
		}
		h.r.add(h.addr)
		return next(ctx, cmds)
	}
}

// InvalidatePattern matches within the cache's prefix only, with the prefix's own glob
// characters escaped, counts removed entries, and refuses an empty pattern.
func TestInvalidatePattern(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		base := testPrefix(t)
		s := b.newStore(t)
		// A prefix with glob characters, and a neighbour it would match if not escaped.
		globby := newTestCache[int](t, s, append([]Option{WithPrefix(base + "a*[")}, slowMachine...)...)
		neighbour := newTestCache[int](t, s, append([]Option{WithPrefix(base + "aXY[")}, slowMachine...)...)
		fill := func(c *Cache[int], keys ...string) {
			for _, k := range keys {
				_, err := c.GetOrLoad(bg(), k, func(context.Context) (int, error) { return 1, nil })
				require.NoError(t, err)
			}
		}
		var users []string
		for i := range 70 { // enough to land on every cluster master
			users = append(users, fmt.Sprint("user:", i))
		}
		fill(globby, users...)
		fill(globby, "order:1")
		fill(neighbour, users...)

		_, err := globby.InvalidatePattern(bg(), "")
		require.Error(t, err)

		n, err := globby.InvalidatePattern(bg(), "user:*")
		require.NoError(t, err)
		require.Equal(t, len(users), n)

		var loads atomic.Int32
		count := func(c *Cache[int], keys ...string) int {
			loads.Store(0)
			for _, k := range keys {
				_, err := c.GetOrLoad(bg(), k, func(context.Context) (int, error) { loads.Add(1); return 2, nil })
				require.NoError(t, err)
			}
			return int(loads.Load())
		}
		require.Equal(t, len(users), count(globby, users...), "matching keys removed")
		require.Zero(t, count(globby, "order:1"), "non-matching key kept")
		require.Zero(t, count(neighbour, users...), "another prefix untouched")
	})
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
