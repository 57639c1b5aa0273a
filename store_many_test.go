package cacheaside

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/glob"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestStoreGetOrLeaseMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)

		const n = 10
		other, me := stNewToken(), stNewToken()
		ks := make([]string, 3*n)
		for i := range ks {
			ks[i] = k(fmt.Sprintf("many:%d", i))
			switch {
			case i < n:
				stPut(t, s, ks[i], []byte(fmt.Sprintf("value-%d", i)))
			case i < 2*n:
				stRequireGranted(t, stGetOrLease(t, s, ks[i], other, stLongLease))
			}
		}

		got, err := s.GetOrLeaseMany(bg(), ks, me, stLongLease)
		require.NoError(t, err)
		require.Len(t, got, len(ks))
		for i, l := range got {
			switch {
			case i < n:
				stRequireValue(t, l, []byte(fmt.Sprintf("value-%d", i)))
			case i < 2*n:
				stRequireHolder(t, l, other, stLongLease)
			default:
				stRequireGranted(t, l, "key %d", i)
			}
		}

		// The granted leases are real: another token now sees me as the holder.
		stRequireHolder(t, stGetOrLease(t, s, ks[2*n], stNewToken(), stLongLease), me, stLongLease)

		entries := make([]FillEntry, len(ks))
		for i, key := range ks {
			entries[i] = FillEntry{Key: key, Value: []byte(fmt.Sprintf("mine-%d", i)), TTL: stValueTTL}
		}
		stored, err := s.FillMany(bg(), me, entries)
		require.NoError(t, err)
		require.Len(t, stored, len(ks))
		for i, ok := range stored {
			require.Equal(t, i >= 2*n, ok, "FillMany stored key %d", i)
		}
		for i, key := range ks {
			l := stGetOrLease(t, s, key, stNewToken(), stLongLease)
			switch {
			case i < n:
				stRequireValue(t, l, []byte(fmt.Sprintf("value-%d", i)))
			case i < 2*n:
				stRequireHolder(t, l, other, stLongLease)
			default:
				stRequireValue(t, l, []byte(fmt.Sprintf("mine-%d", i)))
			}
		}

		// Empty batches.
		none, err := s.GetOrLeaseMany(bg(), nil, me, stLongLease)
		require.NoError(t, err)
		require.Empty(t, none)
		noFill, err := s.FillMany(bg(), me, nil)
		require.NoError(t, err)
		require.Empty(t, noFill)
	})
}

func TestStoreDeletePattern(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		p, kp := stKeys(t, s)
		_, kq := stKeys(t, s)

		n := 20
		if b.cluster {
			n = 60 // enough that every master holds some
		}
		for i := 1; i <= n; i++ {
			stPut(t, s, kp(fmt.Sprintf("user:%d", i)), []byte(fmt.Sprintf("u%d", i)))
		}
		leaseTok := stNewToken()
		stRequireGranted(t, stGetOrLease(t, s, kp("user:lease"), leaseTok, stLongLease))
		stPut(t, s, kp("order:1"), []byte("o1"))

		const qn = 5
		for i := 1; i <= qn; i++ {
			stPut(t, s, kq(fmt.Sprintf("user:%d", i)), []byte(fmt.Sprintf("q%d", i)))
		}
		qLeaseTok := stNewToken()
		stRequireGranted(t, stGetOrLease(t, s, kq("user:lease"), qLeaseTok, stLongLease))

		if b.cluster {
			cc, ok := b.client(t).(*redis.ClusterClient)
			require.True(t, ok)
			var mu sync.Mutex
			perMaster := make(map[string]int)
			require.NoError(t, cc.ForEachMaster(bg(), func(ctx context.Context, c *redis.Client) error {
				var cursor uint64
				count := 0
				for {
					ks, next, err := c.Scan(ctx, cursor, glob.Escape(p)+"user:*", 512).Result()
					if err != nil {
						return err
					}
					count += len(ks)
					if next == 0 {
						break
					}
					cursor = next
				}
				mu.Lock()
				perMaster[c.Options().Addr] = count
				mu.Unlock()
				return nil
			}))
			require.GreaterOrEqual(t, len(perMaster), 3, "masters: %v", perMaster)
			for addr, c := range perMaster {
				require.Positive(t, c, "master %s holds none of the keys: %v", addr, perMaster)
			}
		}

		deleted, err := s.DeletePattern(bg(), glob.Escape(p)+"user:*")
		require.NoError(t, err)
		require.Equal(t, n, deleted, "DeletePattern counts the keys that held a value, not bare leases")

		for i := 1; i <= n; i++ {
			stRequireEmpty(t, s, kp(fmt.Sprintf("user:%d", i)))
		}
		require.False(t, stFill(t, s, kp("user:lease"), leaseTok, []byte("stale"), stValueTTL),
			"DeletePattern voids the leases it removes")
		stRequireEmpty(t, s, kp("user:lease"))
		stRequireValue(t, stGetOrLease(t, s, kp("order:1"), stNewToken(), stLongLease), []byte("o1"))
		for i := 1; i <= qn; i++ {
			stRequireValue(t, stGetOrLease(t, s, kq(fmt.Sprintf("user:%d", i)), stNewToken(), stLongLease),
				[]byte(fmt.Sprintf("q%d", i)))
		}
		stRequireHolder(t, stGetOrLease(t, s, kq("user:lease"), stNewToken(), stLongLease), qLeaseTok, stLongLease)

		// Nothing left to match.
		again, err := s.DeletePattern(bg(), glob.Escape(p)+"user:*")
		require.NoError(t, err)
		require.Zero(t, again)
	})
}

func TestStoreConcurrentGetOrLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		const stores, perStore = 5, 10
		ss := make([]Store, stores)
		for i := range ss {
			ss[i] = b.newStore(t)
		}
		_, k := stKeys(t, ss[0])
		key := k("contended")

		type result struct {
			token string
			l     Lookup
			err   error
		}
		results := make([]result, stores*perStore)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range results {
			results[i].token = fmt.Sprintf("g%02d-%s", i, stNewToken())
			wg.Go(func() {
				<-start
				l, err := ss[i%stores].GetOrLease(bg(), key, results[i].token, stLongLease)
				results[i].l, results[i].err = l, err
			})
		}
		within(t, 10*time.Second, "50 concurrent GetOrLease", func() {
			close(start)
			wg.Wait()
		})

		var winner string
		for _, r := range results {
			require.NoError(t, r.err)
			if r.l.Granted {
				require.Empty(t, winner, "two tokens were granted the lease: %s and %s", winner, r.token)
				winner = r.token
			}
		}
		require.NotEmpty(t, winner, "no token was granted the lease")
		for _, r := range results {
			if r.token != winner {
				stRequireHolder(t, r.l, winner, stLongLease)
			}
		}
	})
}
