package cacheaside

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

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
	data, _, ok := c.entries.encode(bg(), "", *new(T), false, 0)
	require.True(t, ok)
	return append(data[:19:19], payload...)
}

// otherTypeEntry is a valid entry written by a Cache of another type.
func otherTypeEntry(t testing.TB) []byte {
	c, err := New[string](NewMemoryStore())
	require.NoError(t, err)
	defer c.Close()
	data, _, ok := c.entries.encode(bg(), "", "a string", false, 0)
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
