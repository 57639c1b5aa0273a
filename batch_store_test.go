package cacheaside

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// stShuffle returns ks in a random order: shuffled[j] is ks[perm[j]].
func stShuffle(ks []string) (shuffled []string, perm []int) {
	perm = rand.Perm(len(ks))
	shuffled = make([]string, len(ks))
	for j, i := range perm {
		shuffled[j] = ks[i]
	}
	return shuffled, perm
}

// stLookupShuffled asks many for ks in a random order and returns its answers in the order
// of ks.
func stLookupShuffled(t *testing.T, ks []string, many func(keys []string) ([]Lookup, error)) []Lookup {
	t.Helper()
	shuffled, perm := stShuffle(ks)
	got, err := many(shuffled)
	require.NoError(t, err)
	require.Len(t, got, len(ks))
	out := make([]Lookup, len(ks))
	for j, i := range perm {
		out[i] = got[j]
	}
	return out
}

// A batch larger than one script call, in shuffled order, over every state a key can be in:
// each key answered as its single-key operation would, in order; FillMany and ReleaseMany
// act per key under the one token.
func TestStoreBatchLarge(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)
		const n = 3*maxScriptKeys + 17
		const lease = 10 * time.Minute // the setup is slow on miniredis under -race
		other, me := stNewToken(), stNewToken()
		ks := make([]string, n)
		state := make([]int, n) // 0 value, 1 empty value, 2 held by other, 3 free, 4 refresh lease by other
		for i := range ks {
			ks[i] = k(fmt.Sprintf("big:%d", i))
			state[i] = i % 5
			switch state[i] {
			case 0:
				stPut(t, s, ks[i], []byte(fmt.Sprintf("value-%d", i)))
			case 1:
				stPut(t, s, ks[i], []byte{})
			case 2:
				stRequireGranted(t, stGetOrLease(t, s, ks[i], other, lease))
			case 4:
				stPut(t, s, ks[i], []byte(fmt.Sprintf("old-%d", i)))
				require.True(t, stLease(t, s, ks[i], other, lease).Granted)
			}
		}
		shuffled, perm := stShuffle(ks)
		got, err := s.GetOrLeaseMany(bg(), shuffled, me, lease)
		require.NoError(t, err)
		require.Len(t, got, n)
		for j, i := range perm {
			switch state[i] {
			case 0:
				stRequireValue(t, got[j], []byte(fmt.Sprintf("value-%d", i)))
			case 1:
				stRequireValue(t, got[j], []byte{})
			case 2:
				stRequireHolder(t, got[j], other, lease)
			case 3:
				stRequireGranted(t, got[j], "key %d", i)
			case 4:
				stRequireValue(t, got[j], []byte(fmt.Sprintf("old-%d", i)))
			}
		}

		// Fill every key under me, in another order: only the keys me leased take it.
		perm2 := rand.Perm(n)
		entries := make([]FillEntry, n)
		for j, i := range perm2 {
			entries[j] = FillEntry{Key: ks[i], Value: []byte(fmt.Sprintf("mine-%d", i)), TTL: stValueTTL}
		}
		stored, err := s.FillMany(bg(), me, entries)
		require.NoError(t, err)
		require.Len(t, stored, n)
		for j, i := range perm2 {
			require.Equal(t, state[i] == 3, stored[j], "FillMany of key %d (state %d)", i, state[i])
		}
		for i, key := range ks {
			if state[i] == 3 {
				stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), lease), []byte(fmt.Sprintf("mine-%d", i)))
			}
		}

		// ReleaseMany by the other token ends its leases and only those, keeping values.
		rs, ok := s.(ReleaseManyStore)
		require.True(t, ok, "%T implements ReleaseManyStore", s)
		held, err := rs.ReleaseMany(bg(), other, shuffled)
		require.NoError(t, err)
		require.Len(t, held, n)
		for j, i := range perm {
			require.Equal(t, state[i] == 2 || state[i] == 4, held[j], "ReleaseMany of key %d (state %d)", i, state[i])
		}
		for i, key := range ks {
			switch state[i] {
			case 2:
				stRequireEmpty(t, s, key)
			case 4:
				stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), lease), []byte(fmt.Sprintf("old-%d", i)))
			}
		}
		none, err := rs.ReleaseMany(bg(), me, nil)
		require.NoError(t, err)
		require.Empty(t, none)
	})
}

// LeaseMany answers each key as Lease would, over more keys than one script call, in any
// order: a lease over a value (which stays) or over nothing, or the holder of a live lease.
// The leases it grants are the token's: FillMany under it stores exactly those keys.
func TestStoreLeaseMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		lm, ok := s.(LeaseManyStore)
		require.True(t, ok, "%T implements LeaseManyStore", s)
		_, k := stKeys(t, s)
		const n = 2*maxScriptKeys + 13
		const lease = 10 * time.Minute // the setup is slow on miniredis under -race
		other, me := stNewToken(), stNewToken()
		ks := make([]string, n)
		// 0 value, 1 nothing, 2 lease held by other, 3 value with a refresh lease held by
		// other, 4 value whose refresh lease other released, 5 not a hash (Redis only)
		state := make([]int, n)
		var raw redis.UniversalClient
		if b.client != nil {
			raw = b.client(t)
		}
		for i := range ks {
			ks[i] = k(fmt.Sprintf("lease:%d", i))
			state[i] = i % 6
			if state[i] == 5 && raw == nil {
				state[i] = 1
			}
			switch state[i] {
			case 0:
				stPut(t, s, ks[i], []byte(fmt.Sprintf("value-%d", i)))
			case 2:
				stRequireGranted(t, stGetOrLease(t, s, ks[i], other, lease))
			case 3, 4:
				stPut(t, s, ks[i], []byte(fmt.Sprintf("value-%d", i)))
				require.True(t, stLease(t, s, ks[i], other, lease).Granted)
				if state[i] == 4 {
					require.True(t, stRelease(t, s, ks[i], other))
				}
			case 5:
				require.NoError(t, raw.Set(bg(), ks[i], "not a hash", stValueTTL).Err())
			}
		}
		got := stLookupShuffled(t, ks, func(keys []string) ([]Lookup, error) { return lm.LeaseMany(bg(), keys, me, lease) })
		for i := range ks {
			switch state[i] {
			case 2, 3:
				stRequireHolder(t, got[i], other, lease)
			default:
				stRequireGranted(t, got[i], "key %d (state %d)", i, state[i])
			}
		}
		for i, key := range ks {
			switch state[i] {
			case 0, 3, 4: // the values stay until a fill
				stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), lease), []byte(fmt.Sprintf("value-%d", i)))
			case 1, 5: // a bare lease, held by me
				stRequireHolder(t, stGetOrLease(t, s, key, stNewToken(), lease), me, lease)
			}
		}

		entries := make([]FillEntry, n)
		for i, key := range ks {
			entries[i] = FillEntry{Key: key, Value: []byte(fmt.Sprintf("mine-%d", i)), TTL: stValueTTL}
		}
		stored, err := s.FillMany(bg(), me, entries)
		require.NoError(t, err)
		for i := range ks {
			require.Equal(t, state[i] != 2 && state[i] != 3, stored[i], "FillMany of key %d (state %d)", i, state[i])
		}
		none, err := lm.LeaseMany(bg(), nil, me, lease)
		require.NoError(t, err)
		require.Empty(t, none)
	})
}
