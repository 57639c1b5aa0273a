package cacheaside

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

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
