package cacheaside

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// With a cap, the loader is called in chunks of at most the cap, never more than the
// concurrency at once, together with exactly the missing keys.
func TestGetOrLoadManyChunks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// slowMachine: the chunks are counted exactly, so the 20 keys cached first must be
		// stored; with the default 50 ms store timeout a loaded machine once failed their fill
		// (on Cluster) and all 115 keys went to the loader, in 12 chunks.
		c := backendCache[int](t, b, append(slowMachine, WithBatchLoadSize(10), WithBatchLoadConcurrency(3))...)
		var keys, cached []string
		for i := range 115 {
			keys = append(keys, itemKey(i))
			if i%6 == 0 && len(cached) < 20 {
				cached = append(cached, itemKey(i))
			}
		}
		_, err := c.GetOrLoadMany(bg(), cached, func(_ context.Context, missing []string) (map[string]int, error) {
			out := map[string]int{}
			for _, k := range missing {
				out[k] = itemIndex(k)
			}
			return out, nil
		})
		require.NoError(t, err)

		var mu sync.Mutex
		var calls [][]string
		var running, peak atomic.Int32
		load := func(_ context.Context, missing []string) (map[string]int, error) {
			now := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
			}
			mu.Lock()
			calls = append(calls, slices.Clone(missing))
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
			out := map[string]int{}
			for _, k := range missing {
				if itemExists(itemIndex(k)) {
					out[k] = itemIndex(k)
				}
			}
			return out, nil
		}
		got, err := c.GetOrLoadMany(bg(), keys, load)
		require.NoError(t, err)
		require.Len(t, calls, 10, "95 missing keys in chunks of 10")
		var all []string
		for _, call := range calls {
			require.LessOrEqual(t, len(call), 10)
			all = append(all, call...)
		}
		var want []string
		for _, k := range keys {
			if !slices.Contains(cached, k) {
				want = append(want, k)
			}
		}
		sort.Strings(all)
		sort.Strings(want)
		require.Equal(t, want, all, "the chunks cover exactly the missing keys, once each")
		require.LessOrEqual(t, peak.Load(), int32(3), "chunks loading at once")
		for _, k := range keys {
			i := itemIndex(k)
			if v, ok := got[k]; ok != (itemExists(i) || slices.Contains(cached, k)) || (ok && v != i) {
				t.Errorf("%s: %d, %v", k, v, ok)
			}
		}

		// A failing chunk fails the call; the other chunks are cached.
		var more []string
		for i := 200; i < 230; i++ {
			more = append(more, itemKey(i))
		}
		boom := errors.New("boom")
		var failingDone atomic.Int32
		_, err = c.GetOrLoadMany(bg(), more, func(ctx context.Context, missing []string) (map[string]int, error) {
			defer failingDone.Add(1)
			if slices.Contains(missing, itemKey(215)) {
				return nil, boom
			}
			time.Sleep(10 * time.Millisecond)
			out := map[string]int{}
			for _, k := range missing {
				out[k] = itemIndex(k)
			}
			return out, nil
		})
		require.ErrorIs(t, err, boom)
		stPoll(t, 10*time.Second, time.Millisecond, "the other chunks", func() bool { return failingDone.Load() == 3 })
		mu.Lock()
		calls = nil
		mu.Unlock()
		within(t, 5*time.Second, "a batch after a failed chunk (its leases released)", func() {
			_, err = c.GetOrLoadMany(bg(), more, load)
		})
		require.NoError(t, err)
		require.Len(t, calls, 1, "only the failed chunk is loaded again")
		require.Contains(t, calls[0], itemKey(215))
		require.LessOrEqual(t, len(calls[0]), 10)
	})
}

// Without a cap, load is called once with every missing key, however many.
func TestGetOrLoadManyNoCap(t *testing.T) {
	forMemoryAndReal(t, func(t *testing.T, b backend) {
		c := backendCache[int](t, b, slowMachine...)
		db := newKeyLoads(2000, 0)
		var calls atomic.Int32
		keys := make([]string, 2000)
		for i := range keys {
			keys[i] = itemKey(i)
		}
		got, err := c.GetOrLoadMany(bg(), keys, func(ctx context.Context, missing []string) (map[string]int, error) {
			calls.Add(1)
			require.Len(t, missing, len(keys))
			return db.batch(ctx, missing)
		})
		require.NoError(t, err)
		checkBatch(t, keys, got)
		require.EqualValues(t, 1, calls.Load())
	})
}

// A batch read of 100 cached keys is one round trip on a standalone Redis and one per master
// on Cluster; a batch of 100 missing keys adds one fill round trip (per master).
func TestGetOrLoadManyRoundTrips(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		counter := countRoundTrips(raw)
		c := newTestCache[int](t, NewRedisStore(raw), slowMachine...) // counts loads: no fail-open on a busy machine
		keys := make([]string, 100)
		for i := range keys {
			keys[i] = itemKey(i)
		}
		load := func(_ context.Context, missing []string) (map[string]int, error) {
			out := map[string]int{}
			for _, k := range missing {
				out[k] = itemIndex(k)
			}
			return out, nil
		}
		// Dials every master and loads the scripts everywhere.
		_, err := c.GetOrLoadMany(bg(), itemKeys(200)[100:], load)
		require.NoError(t, err)
		nodes := 1
		if b.cluster {
			nodes = 3
		}

		counter.reset()
		got, err := c.GetOrLoadMany(bg(), keys, load)
		require.NoError(t, err)
		require.Len(t, got, 100)
		// Read (plain HGETs), lease the misses, fill: the store has not seen a run of batches
		// of misses, so it reads first (redis_batch.go).
		require.Equal(t, 3, counter.maxPerNode(), "round trips per node of a 100-key batch of misses: %v", counter.perNode())
		require.Len(t, counter.perNode(), nodes, "100 keys reach every master")

		counter.reset()
		got, err = c.GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]int, error) {
			return nil, errors.New("all cached: no load")
		})
		require.NoError(t, err)
		require.Len(t, got, 100)
		require.Equal(t, 1, counter.maxPerNode(), "round trips per node of a 100-key batch of hits: %v", counter.perNode())
		require.Len(t, counter.perNode(), nodes)
	})
}

// A batch caller whose context ends gets ctx.Err() promptly, whether it waits for its own load
// or for another process's lease; its load goes on and fills the cache.
func TestGetOrLoadManyCancel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		caches := instances[string](t, b, 2, slowMachine...)
		batch := newBlockingLoads()
		ctx, cancel := context.WithCancel(bg())
		done := make(chan error, 1)
		go func() {
			_, err := caches[0].GetOrLoadMany(ctx, []string{"a", "b"}, batch.batch)
			done <- err
		}()
		waitStarted(t, batch.started, "the batch load")
		ctx2, cancel2 := context.WithCancel(bg())
		done2 := make(chan error, 1)
		go func() {
			_, err := caches[1].GetOrLoadMany(ctx2, []string{"b", "c"}, func(_ context.Context, missing []string) (map[string]string, error) {
				return map[string]string{"c": "c"}, nil
			})
			done2 <- err
		}()
		time.Sleep(10 * time.Millisecond)
		cancel()
		cancel2()
		within(t, 5*time.Second, "the cancelled batches", func() {
			require.ErrorIs(t, <-done, context.Canceled)
			require.ErrorIs(t, <-done2, context.Canceled)
		})
		close(batch.release)
		stPoll(t, 10*time.Second, 5*time.Millisecond, "the abandoned load's fill", func() bool {
			m, err := caches[1].GetOrLoadMany(bg(), []string{"a", "b"}, func(context.Context, []string) (map[string]string, error) {
				return nil, errors.New("not yet")
			})
			return err == nil && m["a"] == "batch-a" && m["b"] == "batch-b"
		})
	})
}

func TestBatchOptionsValidate(t *testing.T) {
	for _, o := range []Option{WithBatchLoadSize(-1), WithBatchLoadConcurrency(0)} {
		_, err := New[int](NewMemoryStore(), o)
		require.ErrorIs(t, err, ErrInvalidOption)
	}
}

// A chunk whose loader panics panics the batch caller (and a Warm's caller) with a
// *PanicError; one whose loader calls runtime.Goexit fails the batch. Either way its keys are
// loadable again at once (the leases are released), as a single key's is after a Goexit.
func TestGetOrLoadManyChunkPanicAndGoexit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[int](t, b, append(slices.Clone(slowMachine), WithBatchLoadSize(2))...)
		keys := []string{"a", "b", "c", "d", "e"}
		good := func(_ context.Context, missing []string) (map[string]int, error) {
			out := map[string]int{}
			for _, k := range missing {
				out[k] = len(k)
			}
			return out, nil
		}
		bad := func(kind string) func(context.Context, []string) (map[string]int, error) {
			return func(ctx context.Context, missing []string) (map[string]int, error) {
				if slices.Contains(missing, "c") {
					if kind == "panic" {
						panic("loader blew up")
					}
					runtime.Goexit()
				}
				return good(ctx, missing)
			}
		}
		requirePanic := func(what string, fn func()) {
			t.Helper()
			defer func() {
				r := recover()
				pe, ok := r.(*PanicError)
				require.True(t, ok, "%s: want a *PanicError, got %#v", what, r)
				require.Equal(t, "loader blew up", pe.Value)
			}()
			fn()
		}
		requirePanic("GetOrLoadMany", func() { _, _ = c.GetOrLoadMany(bg(), keys, bad("panic")) })
		requirePanic("Warm", func() { _, _ = c.Warm(bg(), []string{"c", "x"}, bad("panic")) })
		_, err := c.GetOrLoadMany(bg(), keys, bad("goexit"))
		require.ErrorIs(t, err, errLoaderExit)

		var got map[string]int
		within(t, 5*time.Second, "a batch after the failures", func() { got, err = c.GetOrLoadMany(bg(), keys, good) })
		require.NoError(t, err)
		require.Len(t, got, len(keys))

		// The same holds for GetOrLoad: a Goexit releases the lease.
		_, err = c.GetOrLoad(bg(), "single", func(context.Context) (int, error) {
			runtime.Goexit()
			return 0, nil
		})
		require.ErrorIs(t, err, errLoaderExit)
		within(t, 5*time.Second, "a read after the Goexit", func() {
			v, err := c.GetOrLoad(bg(), "single", func(context.Context) (int, error) { return 7, nil })
			require.NoError(t, err)
			require.Equal(t, 7, v)
		})
	})
}

// slowBatchStore is a MemoryStore whose batch lookups take 30µs per key, like a large batch
// over the network.
type slowBatchStore struct{ *MemoryStore }

func (s slowBatchStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	select {
	case <-time.After(time.Duration(len(keys)) * 30 * time.Microsecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.MemoryStore.GetOrLeaseMany(ctx, keys, token, leaseTTL)
}

// A large batch gets a store timeout in proportion to its size: 2,000 keys read in 60 ms do
// not fail open under the default 50 ms store timeout.
func TestGetOrLoadManyLargeBatchTimeout(t *testing.T) {
	mem := NewMemoryStore()
	t.Cleanup(func() { mem.Close() })
	c := newTestCache[int](t, slowBatchStore{mem}, WithConnectTimeout(DefaultStoreTimeout))
	db := newKeyLoads(2000, 0)
	keys := itemKeys(2000)
	got, err := c.GetOrLoadMany(bg(), keys, db.batch)
	require.NoError(t, err)
	checkBatch(t, keys, got)
	got, err = c.GetOrLoadMany(bg(), keys, func(context.Context, []string) (map[string]int, error) {
		return nil, errors.New("the batch failed open: its keys were not read from the store")
	})
	require.NoError(t, err)
	checkBatch(t, keys, got)
}
