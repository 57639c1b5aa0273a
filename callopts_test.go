package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/stretchr/testify/require"
)

// storedTTL is the time left until the logical expiry of the value stored at sk.
func (c *Cache[T]) storedTTL(t testing.TB, s Store, sk string) time.Duration {
	t.Helper()
	h, _, ok := envelope.Decode(storedFrame(t, s, sk), c.entries.schema)
	require.True(t, ok)
	return time.Until(time.Unix(0, h.Expiry))
}

// TTL(d) sets the lifetime of what this call's load stores, for GetOrLoad and GetOrLoadMany, in
// the value's header and in the store's own expiry; other calls keep the cache's TTL.
func TestCallTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		c := newTestCache[string](t, s, steady(WithTTL(time.Minute), WithTTLJitter(0))...)
		load := func(context.Context) (string, error) { return "v", nil }
		_, err := c.GetOrLoad(bg(), "default", load)
		require.NoError(t, err)
		_, err = c.GetOrLoad(bg(), "long", load, TTL(time.Hour))
		require.NoError(t, err)
		_, err = c.GetOrLoadMany(bg(), []string{"m1", "m2"}, func(_ context.Context, keys []string) (map[string]string, error) {
			return map[string]string{"m1": "v", "m2": "v"}, nil
		}, TTL(2*time.Hour))
		require.NoError(t, err)

		within := func(k string, want time.Duration) {
			t.Helper()
			got := c.storedTTL(t, s, c.cfg.prefix+k)
			require.InDelta(t, want.Seconds(), got.Seconds(), 5, "%s: logical TTL", k)
			if b.client != nil && b.real {
				pttl, err := b.client(t).PTTL(bg(), c.cfg.prefix+k).Result()
				require.NoError(t, err)
				require.InDelta(t, want.Seconds(), pttl.Seconds(), 5, "%s: Redis TTL", k)
			}
		}
		within("default", time.Minute)
		within("long", time.Hour)
		within("m1", 2*time.Hour)
		within("m2", 2*time.Hour)
	})
}

// A not-found keeps the cache's negative TTL under TTL(d); NegativeTTL sets it, and 0 does not
// cache it.
func TestCallNegativeTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		c := newTestCache[string](t, s, steady(WithNegativeTTL(30*time.Second), WithTTLJitter(0))...)
		var loads atomic.Int32
		notFound := func(context.Context) (string, error) { loads.Add(1); return "", ErrNotFound }

		_, err := c.GetOrLoad(bg(), "a", notFound, TTL(time.Hour))
		require.ErrorIs(t, err, ErrNotFound)
		require.InDelta(t, 30, c.storedTTL(t, s, c.cfg.prefix+"a").Seconds(), 5, "TTL does not apply to a not-found")

		_, err = c.GetOrLoad(bg(), "b", notFound, NegativeTTL(time.Hour))
		require.ErrorIs(t, err, ErrNotFound)
		require.InDelta(t, 3600, c.storedTTL(t, s, c.cfg.prefix+"b").Seconds(), 5)

		loads.Store(0)
		for range 2 {
			_, err = c.GetOrLoad(bg(), "c", notFound, NegativeTTL(0))
			require.ErrorIs(t, err, ErrNotFound)
		}
		require.EqualValues(t, 2, loads.Load(), "NegativeTTL(0): not cached")

		_, err = c.GetOrLoadMany(bg(), []string{"d"}, func(context.Context, []string) (map[string]string, error) {
			return nil, nil
		}, NegativeTTL(2*time.Hour))
		require.NoError(t, err)
		require.InDelta(t, 7200, c.storedTTL(t, s, c.cfg.prefix+"d").Seconds(), 5)
	})
}

// An invalid call option fails the call before anything happens.
func TestCallOptionsValidated(t *testing.T) {
	c := newTestCache[string](t, NewMemoryStore())
	load := func(context.Context) (string, error) {
		t.Error("loader called")
		return "", nil
	}
	many := func(context.Context, []string) (map[string]string, error) {
		t.Error("loader called")
		return nil, nil
	}
	for _, opt := range []CallOption{TTL(0), TTL(-time.Second), NegativeTTL(-time.Second), nil} {
		_, err := c.GetOrLoad(bg(), "k", load, opt)
		require.ErrorIs(t, err, ErrInvalidOption)
		_, err = c.GetOrLoadMany(bg(), []string{"k"}, many, TTL(time.Second), opt)
		require.ErrorIs(t, err, ErrInvalidOption)
	}
}

// A call's options shape its own load's fill only: a GetOrLoad the loader makes on the context
// it was given (a nested cache read) keeps its cache's TTL.
func TestCallOptionsNotInherited(t *testing.T) {
	s := NewMemoryStore()
	outer := newTestCache[string](t, s, WithTTL(time.Minute), WithTTLJitter(0))
	inner := newTestCache[string](t, s, WithTTL(time.Minute), WithTTLJitter(0))
	_, err := outer.GetOrLoad(bg(), "outer", func(ctx context.Context) (string, error) {
		for _, c := range []*Cache[string]{inner, outer} {
			if _, err := c.GetOrLoad(ctx, "nested", func(context.Context) (string, error) { return "n", nil }); err != nil {
				return "", err
			}
		}
		m, err := outer.GetOrLoadMany(ctx, []string{"nested-many"}, func(context.Context, []string) (map[string]string, error) {
			return map[string]string{"nested-many": "n"}, nil
		})
		if err != nil || len(m) != 1 {
			return "", errors.Join(err, fmt.Errorf("got %v", m))
		}
		return "o", nil
	}, TTL(time.Hour))
	require.NoError(t, err)
	require.InDelta(t, 3600, outer.storedTTL(t, s, outer.cfg.prefix+"outer").Seconds(), 5)
	require.InDelta(t, 60, inner.storedTTL(t, s, inner.cfg.prefix+"nested").Seconds(), 5)
	require.InDelta(t, 60, outer.storedTTL(t, s, outer.cfg.prefix+"nested").Seconds(), 5)
	require.InDelta(t, 60, outer.storedTTL(t, s, outer.cfg.prefix+"nested-many").Seconds(), 5)
}
