package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
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
