package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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
