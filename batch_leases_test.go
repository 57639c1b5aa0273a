package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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
