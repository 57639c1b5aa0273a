package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// itemKeys returns item:0 .. item:n-1.
func itemKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = itemKey(i)
	}
	return keys
}

// progressLog checks that progress calls are sequential with done growing, and keeps the last.
type progressLog struct {
	t           *testing.T
	calls       int
	done, total int
}

func (p *progressLog) fn(done, total int) {
	p.calls++
	if done < p.done || total != p.total && p.calls > 1 {
		p.t.Errorf("progress went from (%d, %d) to (%d, %d)", p.done, p.total, done, total)
	}
	p.done, p.total = done, total
}

// Warm of 100,000 keys fills the cache with each key loaded once, reports progress up to the
// total, and a second Warm loads nothing.
func TestWarmLarge(t *testing.T) {
	for _, mk := range []func() backend{memoryBackend, redisBackend} {
		b := mk()
		t.Run(b.name, func(t *testing.T) {
			n := 100_000 // the figure, in make verify; make test (-short) warms 10,000
			if testing.Short() {
				n = 10_000
			}
			c := backendCache[int](t, b, append(slowMachine, WithTTL(5*time.Minute), WithNegativeTTL(5*time.Minute))...)
			t.Cleanup(func() { // the shared Redis does not keep 100,000 keys
				ctx, cancel := context.WithTimeout(bg(), time.Minute)
				defer cancel()
				removed, err := c.InvalidatePattern(ctx, "*")
				require.NoError(t, err)
				require.Equal(t, n, removed)
			})
			db := newKeyLoads(n, 0)
			var calls atomic.Int32
			load := func(ctx context.Context, missing []string) (map[string]int, error) {
				calls.Add(1)
				return db.batch(ctx, missing)
			}
			keys := itemKeys(n)
			progress := &progressLog{t: t}
			var res WarmResult
			var err error
			within(t, 5*time.Minute, "Warm", func() { res, err = c.Warm(bg(), keys, load, WithWarmProgress(progress.fn)) })
			require.NoError(t, err)
			require.Equal(t, WarmResult{Loaded: n - n/10, NotFound: n / 10}, res)
			require.Equal(t, n, progress.done)
			require.Equal(t, n, progress.total)
			require.EqualValues(t, n/DefaultWarmBatchSize, calls.Load(), "one loader call per batch")
			for i := range n {
				if l := db.n[i].Load(); l != 1 {
					t.Fatalf("%s loaded %d times", itemKey(i), l)
				}
			}

			calls.Store(0)
			res, err = c.Warm(bg(), keys, load, WithWarmBatchSize(500), WithWarmConcurrency(2))
			require.NoError(t, err)
			require.Equal(t, WarmResult{Cached: n}, res)
			require.Zero(t, calls.Load(), "a second Warm loads nothing")
		})
	}
}

// Cancelling Warm's context stops it promptly, even with loads in flight that would run to
// a 10-minute load timeout: it returns what was done, counted and kept (each key it counted
// is cached). The loads in flight go on on their own until Close ends them; a Warm from
// another instance then loads the rest, each key once.
func TestWarmCancel(t *testing.T) {
	forMemoryAndReal(t, func(t *testing.T, b backend) {
		// The figure; on a real server the second Warm would take minutes, and make test
		// runs -short (make verify the full size).
		n := 100_000
		if b.real || testing.Short() {
			n = 20_000
		}
		prefix := testPrefix(t)
		opts := append(slices.Clone(slowMachine), WithPrefix(prefix), WithLoadTimeout(10*time.Minute))
		c, err := New[int](b.newStore(t), append(slices.Clone(b.opts), opts...)...)
		require.NoError(t, err)
		defer c.Close()
		db := newKeyLoads(n, 0)
		var batches atomic.Int32
		load := func(ctx context.Context, missing []string) (map[string]int, error) {
			if batches.Add(1) > 20 { // later batches load until their context ends: Close
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return db.batch(ctx, missing)
		}
		ctx, cancel := context.WithCancel(bg())
		defer cancel()
		var progressed atomic.Int32
		stopped := make(chan struct{})
		var res WarmResult
		go func() {
			defer close(stopped)
			res, err = c.Warm(ctx, itemKeys(n), load, WithWarmProgress(func(done, _ int) { progressed.Store(int32(done)) }))
		}()
		stPoll(t, 30*time.Second, time.Millisecond, "20 batches", func() bool { return progressed.Load() >= 20*DefaultWarmBatchSize })
		stPoll(t, 30*time.Second, time.Millisecond, "loads blocked", func() bool { return batches.Load() > 20 })
		cancel()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatal("Warm did not return within 5s of its cancellation")
		}
		require.ErrorIs(t, err, context.Canceled)
		first := res.Loaded + res.NotFound
		require.Equal(t, 20*DefaultWarmBatchSize, first, "the 20 batches loaded, and nothing else")
		require.Zero(t, res.Failed+res.Cached)

		var done []string // the keys loaded: every one is cached
		for i := range n {
			if db.n[i].Load() == 1 {
				done = append(done, itemKey(i))
			}
		}
		require.Len(t, done, first)
		got, err := c.GetOrLoadMany(bg(), done, func(context.Context, []string) (map[string]int, error) {
			return nil, errors.New("a key the cancelled Warm counted was not cached")
		})
		require.NoError(t, err)
		checkBatch(t, done, got)

		within(t, 30*time.Second, "Close with loads in flight", func() { require.NoError(t, c.Close()) })
		other := backendCache[int](t, b, opts...)
		res, err = other.Warm(bg(), itemKeys(n), db.batch)
		require.NoError(t, err)
		require.Equal(t, first, res.Cached, "what the cancelled Warm loaded stayed cached")
		require.Equal(t, n, res.Cached+res.Loaded+res.NotFound)
		for i := range n {
			if l := db.n[i].Load(); l != 1 {
				t.Fatalf("%s loaded %d times", itemKey(i), l)
			}
		}
	})
}

// A failing batch does not stop Warm: its keys count as failed, the error is returned, the
// other batches are loaded.
func TestWarmFailures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[int](t, b, slowMachine...)
		const n = 1000
		db := newKeyLoads(n, 0)
		boom := errors.New("boom")
		load := func(ctx context.Context, missing []string) (map[string]int, error) {
			for _, k := range missing {
				if itemIndex(k)%250 == 7 {
					return nil, fmt.Errorf("batch with %s: %w", k, boom)
				}
			}
			return db.batch(ctx, missing)
		}
		progress := &progressLog{t: t}
		res, err := c.Warm(bg(), itemKeys(n), load, WithWarmProgress(progress.fn))
		require.ErrorIs(t, err, boom)
		require.Equal(t, WarmResult{Loaded: 540, NotFound: 60, Failed: 400}, res)
		require.Equal(t, n, progress.done, "failed keys are done too")

		res, err = c.Warm(bg(), itemKeys(n), db.batch)
		require.NoError(t, err)
		require.Equal(t, WarmResult{Loaded: 360, NotFound: 40, Cached: 600}, res)

		_, err = c.Warm(bg(), nil, nil)
		require.Error(t, err)
		res, err = c.Warm(bg(), nil, db.batch)
		require.NoError(t, err)
		require.Zero(t, res)
	})
}

// An Invalidate during a Warm's load keeps that load's value out of the cache.
func TestWarmInvalidateDuringLoad(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := backendCache[string](t, b, slowMachine...)
		var mu sync.Mutex
		version := map[string]int{}
		read := func(k string) string {
			mu.Lock()
			defer mu.Unlock()
			return fmt.Sprintf("%s@v%d", k, version[k])
		}
		started, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		load := func(_ context.Context, missing []string) (map[string]string, error) {
			out := map[string]string{}
			for _, k := range missing {
				out[k] = read(k)
			}
			once.Do(func() {
				close(started)
				<-release
			})
			return out, nil
		}
		keys := []string{"a", "b", "c"}
		done := make(chan error, 1)
		go func() {
			_, err := c.Warm(bg(), keys, load)
			done <- err
		}()
		waitStarted(t, started, "the Warm load")
		mu.Lock()
		version["b"] = 1 // a write to the source of truth, then its invalidation
		mu.Unlock()
		require.NoError(t, c.Invalidate(bg(), "b"))
		close(release)
		require.NoError(t, <-done)
		got, err := c.GetOrLoadMany(bg(), keys, load)
		require.NoError(t, err)
		require.Equal(t, map[string]string{"a": "a@v0", "b": "b@v1", "c": "c@v0"}, got)
	})
}

// Warm alongside batch and single reads of the same keys from other instances: every key
// loaded once.
func TestWarmWithConcurrentReads(t *testing.T) {
	forMemoryAndReal(t, func(t *testing.T, b backend) {
		const n = 3000
		caches := instances[int](t, b, 3, slowMachine...)
		db := newKeyLoads(n, 2*time.Millisecond)
		var wg sync.WaitGroup
		wg.Add(3)
		var res WarmResult
		go func() {
			defer wg.Done()
			var err error
			res, err = caches[0].Warm(bg(), itemKeys(n), db.batch, WithWarmBatchSize(50))
			if err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			keys := itemKeys(n)
			for lo := n - 100; lo >= 0; lo -= 100 {
				got, err := caches[1].GetOrLoadMany(bg(), keys[lo:lo+100], db.batch)
				if err != nil {
					t.Error(err)
					return
				}
				checkBatch(t, keys[lo:lo+100], got)
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < n; i += 7 {
				if _, err := caches[2].GetOrLoad(bg(), itemKey(i), db.single(i)); err != nil && !errors.Is(err, ErrNotFound) {
					t.Error(err)
				}
			}
		}()
		within(t, 2*time.Minute, "Warm and reads", wg.Wait)
		require.Equal(t, n, res.Loaded+res.NotFound+res.Cached)
		for i := range n {
			if l := db.n[i].Load(); l != 1 {
				t.Errorf("%s loaded %d times", itemKey(i), l)
			}
		}
	})
}
