package cacheaside

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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
		perm := rand.Perm(n)
		shuffled := make([]string, n)
		for j, i := range perm {
			shuffled[j] = ks[i]
		}
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
