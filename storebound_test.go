package cacheaside

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type boundKey struct{}

// Store calls starting within one slice share one deadline (one timer), between the store
// timeout and the store timeout plus a slice after their start; the caller's values pass
// through, and the shared deadline ends them as a context deadline would.
func TestStoreCallsShareDeadlines(t *testing.T) {
	c := newTestCache[string](t, redisBackend().newStore(t), WithStoreTimeout(40*time.Millisecond))
	parent := context.WithValue(context.Background(), boundKey{}, "v")
	start := time.Now()
	a, cancelA := c.gw.bound(parent, c.cfg.storeTimeout)
	defer cancelA()
	b, cancelB := c.gw.bound(detach(parent), c.cfg.storeTimeout)
	defer cancelB()
	if time.Since(start) < c.gw.deadlines.slice { // the two calls began in one slice
		require.Equal(t, a.Done(), b.Done(), "calls of one slice share one deadline")
	}
	da, ok := a.Deadline()
	require.True(t, ok)
	require.GreaterOrEqual(t, da.Sub(start), c.cfg.storeTimeout)
	require.LessOrEqual(t, time.Until(da), c.cfg.storeTimeout+c.gw.deadlines.slice)
	require.Equal(t, "v", a.Value(boundKey{}))
	require.NoError(t, a.Err())

	within(t, 10*time.Second, "the shared deadline", func() { <-a.Done() })
	require.ErrorIs(t, a.Err(), context.DeadlineExceeded)
	require.True(t, errors.Is(context.Cause(a), context.DeadlineExceeded))

	// A context that can be cancelled, or another timeout, gets a context of its own.
	live, cancel := context.WithCancel(context.Background())
	defer cancel()
	own, cancelOwn := c.gw.bound(live, c.cfg.storeTimeout)
	defer cancelOwn()
	_, shared := own.(*boundCtx)
	require.False(t, shared)
	own, cancelOwn2 := c.gw.bound(parent, time.Second)
	defer cancelOwn2()
	_, shared = own.(*boundCtx)
	require.False(t, shared)
}
