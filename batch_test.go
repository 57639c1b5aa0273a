package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/slot"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// forMemoryAndReal runs fn against the memory store, the real Redis and the real Cluster: the
// large tests, too slow on miniredis under -race to be worth it.
func forMemoryAndReal(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, mk := range []func() backend{memoryBackend, redisBackend, clusterBackend} {
		b := mk()
		if b.advance == nil {
			b.advance = time.Sleep
		}
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// keyLoads counts loads per key of a fake database of n items: item:i holds i, except every
// tenth from 3 on, which does not exist.
type keyLoads struct {
	n     []atomic.Int32
	delay time.Duration
}

func newKeyLoads(n int, delay time.Duration) *keyLoads {
	return &keyLoads{n: make([]atomic.Int32, n), delay: delay}
}

func itemKey(i int) string { return fmt.Sprint("item:", i) }

func itemIndex(k string) int {
	var i int
	_, _ = fmt.Sscanf(k, "item:%d", &i) // a key of another shape: 0
	return i
}

func itemExists(i int) bool { return i%10 != 3 }

func (l *keyLoads) batch(ctx context.Context, missing []string) (map[string]int, error) {
	time.Sleep(l.delay)
	out := make(map[string]int, len(missing))
	for _, k := range missing {
		i := itemIndex(k)
		l.n[i].Add(1)
		if itemExists(i) {
			out[k] = i
		}
	}
	return out, nil
}

func (l *keyLoads) single(i int) func(context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		m, err := l.batch(ctx, []string{itemKey(i)})
		if v, ok := m[itemKey(i)]; ok || err != nil {
			return v, err
		}
		return 0, ErrNotFound
	}
}

// checkBatch checks a batch result against the fake database.
func checkBatch(t *testing.T, keys []string, got map[string]int) {
	t.Helper()
	for _, k := range keys {
		i := itemIndex(k)
		v, ok := got[k]
		switch {
		case !itemExists(i) && ok:
			t.Errorf("%s does not exist, got %d", k, v)
		case itemExists(i) && (!ok || v != i):
			t.Errorf("%s: got %d, %v", k, v, ok)
		}
	}
	if len(got) > len(keys) {
		t.Errorf("%d values for %d keys", len(got), len(keys))
	}
}

// 1,000 keys over every slot range, part cached beforehand (values and not-founds), part not
// found, read by overlapping batches and single reads from 3 instances at once: every key
// loaded exactly once, every result right.
func TestGetOrLoadManyAtScale(t *testing.T) {
	forMemoryAndReal(t, func(t *testing.T, b backend) {
		const n = 1000
		caches := instances[int](t, b, 3, slowMachine...)
		if b.cluster {
			checkSlotCoverage(t, b, caches[0].cfg.prefix, n)
		}
		db := newKeyLoads(n, 5*time.Millisecond)
		// Cached beforehand: a quarter of the keys, and half of the keys that do not exist
		// (as not found).
		var cached []string
		notFound := 0
		for i := range n {
			if i%4 == 0 || i%20 == 3 {
				cached = append(cached, itemKey(i))
				if !itemExists(i) {
					notFound++
				}
			}
		}
		require.Equal(t, n/20, notFound, "not-found keys cached beforehand")
		got, err := caches[0].GetOrLoadMany(bg(), cached, db.batch)
		require.NoError(t, err)
		checkBatch(t, cached, got)

		var wg sync.WaitGroup
		for inst, c := range caches {
			for g := range 3 {
				wg.Add(1)
				go func() { // overlapping windows of 600 keys, shuffled
					defer wg.Done()
					start := (inst*3 + g) * 97
					keys := make([]string, 600)
					for j := range keys {
						keys[j] = itemKey((start + j) % n)
					}
					rand.Shuffle(len(keys), func(a, b int) { keys[a], keys[b] = keys[b], keys[a] })
					got, err := c.GetOrLoadMany(bg(), keys, db.batch)
					if err != nil {
						t.Error(err)
						return
					}
					checkBatch(t, keys, got)
				}()
			}
			wg.Add(1)
			go func() { // single reads across the whole range
				defer wg.Done()
				for i := inst; i < n; i += 11 {
					v, err := c.GetOrLoad(bg(), itemKey(i), db.single(i))
					switch {
					case !itemExists(i) && !errors.Is(err, ErrNotFound):
						t.Errorf("single %d: %v, %v", i, v, err)
					case itemExists(i) && (err != nil || v != i):
						t.Errorf("single %d: %v, %v", i, v, err)
					}
				}
			}()
		}
		within(t, 60*time.Second, "concurrent batches and reads", wg.Wait)

		all := make([]string, n)
		for i := range all {
			all[i] = itemKey(i)
		}
		got, err = caches[2].GetOrLoadMany(bg(), all, db.batch)
		require.NoError(t, err)
		checkBatch(t, all, got)
		for i := range n {
			if l := db.n[i].Load(); l != 1 {
				t.Errorf("%s loaded %d times", itemKey(i), l)
			}
		}
	})
}

// checkSlotCoverage checks that the n item keys under prefix fall in every master's slot range.
func checkSlotCoverage(t *testing.T, b backend, prefix string, n int) {
	t.Helper()
	cc, ok := b.client(t).(*redis.ClusterClient)
	require.True(t, ok)
	ranges, err := cc.ClusterSlots(bg()).Result() //nolint:staticcheck // SA1019: CLUSTER SLOTS answers on Redis 6 too, CLUSTER SHARDS only from 7

	require.NoError(t, err)
	perMaster := map[string]int{}
	for _, r := range ranges {
		perMaster[r.Nodes[0].Addr] += 0
	}
	for i := range n {
		s := slot.Of(prefix + itemKey(i))
		for _, r := range ranges {
			if s >= r.Start && s <= r.End {
				perMaster[r.Nodes[0].Addr]++
			}
		}
	}
	require.Len(t, perMaster, 3, "masters of the test cluster")
	for addr, count := range perMaster {
		require.Greater(t, count, n/10, "keys in the slots of master %s", addr)
	}
}

// blockingLoads is a loader that records its calls and blocks until released.
type blockingLoads struct {
	mu      sync.Mutex
	calls   [][]string
	started chan struct{} // receives once per call
	release chan struct{}
}

func newBlockingLoads() *blockingLoads {
	return &blockingLoads{started: make(chan struct{}, 100), release: make(chan struct{})}
}

func (l *blockingLoads) batch(ctx context.Context, missing []string) (map[string]string, error) {
	l.mu.Lock()
	l.calls = append(l.calls, slices.Clone(missing))
	l.mu.Unlock()
	l.started <- struct{}{}
	<-l.release
	out := make(map[string]string, len(missing))
	for _, k := range missing {
		out[k] = "batch-" + k
	}
	return out, nil
}

func (l *blockingLoads) keys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var all []string
	for _, c := range l.calls {
		all = append(all, c...)
	}
	sort.Strings(all)
	return all
}

func waitStarted(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start", what)
	}
}

// A batch joins the load of a concurrent GetOrLoad of one of its keys, in the same process or
// in another: the key is not loaded twice, and the batch gets the single load's value.
func TestGetOrLoadManyJoinsSingle(t *testing.T) {
	for _, where := range []string{"same instance", "other instance"} {
		t.Run(where, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b backend) {
				caches := instances[string](t, b, 2, slowMachine...)
				single, batcher := caches[0], caches[0]
				if where == "other instance" {
					batcher = caches[1]
				}
				started, release := make(chan struct{}), make(chan struct{})
				var singleLoads atomic.Int32
				singleDone := make(chan error, 1)
				go func() {
					v, err := single.GetOrLoad(bg(), "k", func(context.Context) (string, error) {
						singleLoads.Add(1)
						close(started)
						<-release
						return "single", nil
					})
					if err == nil && v != "single" {
						err = fmt.Errorf("single got %q", v)
					}
					singleDone <- err
				}()
				waitStarted(t, started, "the single load")

				batch := newBlockingLoads()
				close(batch.release) // the batch's own loads do not block
				type result struct {
					m   map[string]string
					err error
				}
				done := make(chan result, 1)
				go func() {
					m, err := batcher.GetOrLoadMany(bg(), []string{"x", "k", "y"}, batch.batch)
					done <- result{m, err}
				}()
				waitStarted(t, batch.started, "the batch load")
				select {
				case r := <-done:
					t.Fatalf("the batch returned before the single load ended: %v", r)
				case <-time.After(20 * time.Millisecond):
				}
				close(release)
				var r result
				within(t, 30*time.Second, "the batch", func() { r = <-done })
				require.NoError(t, r.err)
				require.Equal(t, map[string]string{"x": "batch-x", "k": "single", "y": "batch-y"}, r.m)
				require.Equal(t, []string{"x", "y"}, batch.keys(), "the batch loads only its other keys")
				require.NoError(t, <-singleDone)
				require.EqualValues(t, 1, singleLoads.Load())
			})
		})
	}
}

// A GetOrLoad of a key a batch is loading joins the batch's load, in the same process or in
// another.
func TestGetOrLoadJoinsBatch(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		caches := instances[string](t, b, 2, slowMachine...)
		batch := newBlockingLoads()
		done := make(chan error, 1)
		go func() {
			m, err := caches[0].GetOrLoadMany(bg(), []string{"a", "b"}, batch.batch)
			if err == nil && len(m) != 2 {
				err = fmt.Errorf("batch got %v", m)
			}
			done <- err
		}()
		waitStarted(t, batch.started, "the batch load")
		var wg sync.WaitGroup
		for i, c := range []*Cache[string]{caches[0], caches[0], caches[1], caches[1]} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.GetOrLoad(bg(), "ab"[i%2:i%2+1], func(context.Context) (string, error) {
					t.Errorf("single read %d loaded a key the batch is loading", i)
					return "single", nil
				})
				if err != nil || v != "batch-"+"ab"[i%2:i%2+1] {
					t.Errorf("single read %d: %q, %v", i, v, err)
				}
			}()
		}
		time.Sleep(20 * time.Millisecond) // let the single reads find the leases
		close(batch.release)
		within(t, 30*time.Second, "the single reads", wg.Wait)
		require.NoError(t, <-done)
		require.Len(t, batch.calls, 1)
	})
}

// Keys whose leases a process holds and never fills (it died) are waited for, then taken over
// and loaded together by the waiting batch, each once.
func TestGetOrLoadManyTakesOverDeadLeases(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		c := newTestCache[int](t, s, append(slices.Clone(b.opts), WithLeaseWait(time.Millisecond, 20*time.Millisecond))...)
		const n = 20
		var dead, keys []string
		for i := range 2 * n {
			keys = append(keys, itemKey(i))
			if i%2 == 0 {
				dead = append(dead, itemKey(i))
			}
		}
		deadSks := make([]string, len(dead))
		for i, k := range dead {
			deadSks[i] = c.cfg.prefix + k
		}
		lks, err := s.GetOrLeaseMany(bg(), deadSks, "dead-process:1", 300*time.Millisecond)
		require.NoError(t, err)
		for _, lk := range lks {
			require.True(t, lk.Granted)
		}
		var mu sync.Mutex
		var calls [][]string
		load := func(_ context.Context, missing []string) (map[string]int, error) {
			mu.Lock()
			calls = append(calls, slices.Clone(missing))
			mu.Unlock()
			out := map[string]int{}
			for _, k := range missing {
				out[k] = itemIndex(k)
			}
			return out, nil
		}
		go b.advance(350 * time.Millisecond) // the dead leases expire (miniredis: when told)
		var got map[string]int
		within(t, 30*time.Second, "the batch", func() { got, err = c.GetOrLoadMany(bg(), keys, load) })
		require.NoError(t, err)
		require.Len(t, got, 2*n)
		for _, k := range keys {
			require.Equal(t, itemIndex(k), got[k])
		}
		var all []string
		for _, call := range calls {
			all = append(all, call...)
		}
		sort.Strings(all)
		want := slices.Clone(keys)
		sort.Strings(want)
		require.Equal(t, want, all, "every key loaded once")
		require.LessOrEqual(t, len(calls), 4, "the dead leases' keys are loaded together: %v", calls)
	})
}

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

// leaseOneByOne hides the optional LeaseManyStore (and ReleaseManyStore) of its store: a
// Store of someone else's, which the Cache drives one key at a time.
type leaseOneByOne struct{ Store }

// Entries a batch must replace, undecodable ones and ones past their stale windows, are
// leased together, in one round trip (per node) for all of them, like the misses: a batch of
// 50 of each costs 3 round trips on a standalone Redis (read, leases, fill) and 3 per master
// on Cluster, whatever its size, and loads each key once. With stale-if-error, a failed load
// serves the expired values. A store without LeaseMany gets the same answers, one lease at a
// time.
func TestGetOrLoadManyReplacesTogether(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		stores := map[string]func() (Store, *roundTrips){"LeaseMany": func() (Store, *roundTrips) {
			if !b.real {
				return b.newStore(t), nil
			}
			raw := b.client(t)
			counter := countRoundTrips(raw)
			return NewRedisStore(raw), counter
		}}
		if b.name == "memory" {
			stores["one by one"] = func() (Store, *roundTrips) { return leaseOneByOne{b.newStore(t)}, nil }
		}
		for name, mk := range stores {
			t.Run(name, func(t *testing.T) {
				s, counter := mk()
				clk := newFakeClock()
				c := newTestCache[int](t, s, append(slices.Clone(slowMachine), WithTTL(time.Hour), WithTTLJitter(0), WithStaleIfError(time.Hour))...)
				useClock(clk, c)
				var mu sync.Mutex
				loads := map[string]int{}
				load := func(_ context.Context, missing []string) (map[string]int, error) {
					mu.Lock()
					defer mu.Unlock()
					out := map[string]int{}
					for _, k := range missing {
						loads[k]++
						out[k] = 1000 + loads[k]
					}
					return out, nil
				}
				// replace sets up 50 expired and 50 undecodable entries under name, then
				// reads them all in one batch.
				replace := func(name string) []string {
					var expired, garbage []string
					for i := range 50 {
						expired = append(expired, fmt.Sprintf("%s:expired:%d", name, i))
						garbage = append(garbage, fmt.Sprintf("%s:garbage:%d", name, i))
					}
					_, err := c.GetOrLoadMany(bg(), expired, load)
					require.NoError(t, err)
					for _, k := range garbage {
						sk := c.cfg.prefix + k
						require.True(t, stGetOrLease(t, s, sk, "writer", time.Minute).Granted)
						require.True(t, stFill(t, s, sk, "writer", []byte("not an envelope"), time.Hour))
					}
					clk.advance(time.Hour + time.Minute) // past expiry, within stale-if-error
					if counter != nil {
						counter.reset()
					}
					keys := append(slices.Clone(expired), garbage...)
					got, err := c.GetOrLoadMany(bg(), keys, load)
					require.NoError(t, err)
					for _, k := range expired {
						require.Equal(t, 1002, got[k], "%s: replaced by its second load", k)
					}
					for _, k := range garbage {
						require.Equal(t, 1001, got[k], "%s: replaced by its first load", k)
					}
					return expired
				}
				replace("warm-up") // dials every node and loads the scripts everywhere
				expired := replace("batch")
				if counter != nil {
					nodes := counter.perNode()
					t.Logf("round trips of a batch replacing 100 entries: %d (per node: %v)", counter.load(), nodes)
					if b.cluster {
						require.Len(t, nodes, 3, "100 keys reach every master")
						require.LessOrEqual(t, counter.maxPerNode(), 3, "round trips per master: %v", nodes)
					} else {
						require.Equal(t, 3, counter.load(), "round trips: read, leases, fill")
					}
				}
				for k, n := range loads {
					want := 1
					if strings.Contains(k, ":expired:") {
						want = 2 // the first load cached it
					}
					require.Equal(t, want, n, "loads of %s", k)
				}

				// Expired again; the loader fails: stale-if-error serves the expired values.
				clk.advance(time.Hour + time.Minute)
				if counter != nil {
					counter.reset()
				}
				boom := errors.New("database down")
				got, err := c.GetOrLoadMany(bg(), expired, func(context.Context, []string) (map[string]int, error) { return nil, boom })
				require.NoError(t, err)
				for _, k := range expired {
					require.Equal(t, 1002, got[k], "%s: the expired value stands in for the failed load", k)
				}
				require.EqualValues(t, len(expired), c.Stats().StaleIfError)
				if counter != nil && !b.cluster {
					require.Equal(t, 3, counter.load(), "round trips: read, leases, release")
				}
				if counter != nil && b.cluster {
					require.LessOrEqual(t, counter.maxPerNode(), 3, "round trips per master: %v", counter.perNode())
				}
				// The leases were released: the keys load at once.
				within(t, 10*time.Second, "a batch after the failed one", func() {
					got, err = c.GetOrLoadMany(bg(), expired, load)
				})
				require.NoError(t, err)
				for _, k := range expired {
					require.Equal(t, 1003, got[k])
				}
			})
		}
	})
}

// leaseManyLost is a MemoryStore whose LeaseMany takes the leases and then fails, as a
// request whose reply is lost does.
type leaseManyLost struct{ *MemoryStore }

func (s leaseManyLost) LeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	_, _ = s.MemoryStore.LeaseMany(ctx, keys, token, leaseTTL)
	return nil, errors.New("reply lost")
}

// When the leases to replace a batch's entries fail, the keys are loaded without the store,
// and the leases the store may have granted all the same are released after: other callers
// do not wait a lease TTL for them.
func TestGetOrLoadManyReleasesLostLeases(t *testing.T) {
	mem := NewMemoryStore()
	t.Cleanup(func() { mem.Close() })
	c := newTestCache[string](t, leaseManyLost{mem}, WithLeaseTTL(time.Hour))
	keys := []string{"a", "b"}
	for _, k := range keys {
		sk := c.cfg.prefix + k
		require.True(t, stGetOrLease(t, mem, sk, "writer", time.Minute).Granted)
		require.True(t, stFill(t, mem, sk, "writer", []byte("not an envelope"), time.Hour))
	}
	got, err := c.GetOrLoadMany(bg(), keys, func(_ context.Context, missing []string) (map[string]string, error) {
		out := map[string]string{}
		for _, k := range missing {
			out[k] = k + "1"
		}
		return out, nil
	})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a": "a1", "b": "b1"}, got)
	for _, k := range keys {
		stPoll(t, 10*time.Second, time.Millisecond, "the release of "+k, func() bool {
			lk := stLease(t, mem, c.cfg.prefix+k, stNewToken(), time.Minute)
			return lk.Granted
		})
	}
}
