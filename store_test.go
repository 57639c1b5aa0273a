package cacheaside

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/glob"
	"github.com/cacheaside/cacheaside/internal/slot"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// The Store conformance suite: every test runs on every backend (memory, miniredis, the real
// Redis and the real Cluster) and checks the semantics documented on the Store interface.

const (
	// stLongLease is a lease that does not run out during a test.
	stLongLease = 5 * time.Second
	// stValueTTL is the life of the values tests store; they expire on their own if a test
	// dies before its cleanup.
	stValueTTL = time.Minute
)

// stNewToken returns a lease token no other caller uses.
func stNewToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "tok-" + hex.EncodeToString(b[:])
}

// stKeys returns a function naming keys under a fresh prefix; the keys it names are deleted
// from s when the test ends.
func stKeys(t *testing.T, s Store) (prefix string, key func(name string) string) {
	t.Helper()
	prefix = testPrefix(t)
	var mu sync.Mutex
	var used []string
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		ctx, cancel := context.WithTimeout(bg(), 5*time.Second)
		defer cancel()
		_ = s.Delete(ctx, used...)
	})
	return prefix, func(name string) string {
		k := prefix + name
		mu.Lock()
		used = append(used, k)
		mu.Unlock()
		return k
	}
}

func stGetOrLease(t *testing.T, s Store, key, token string, leaseTTL time.Duration) Lookup {
	t.Helper()
	l, err := s.GetOrLease(bg(), key, token, leaseTTL)
	require.NoError(t, err, "GetOrLease %s", key)
	return l
}

func stLease(t *testing.T, s Store, key, token string, leaseTTL time.Duration) Lookup {
	t.Helper()
	l, err := s.Lease(bg(), key, token, leaseTTL)
	require.NoError(t, err, "Lease %s", key)
	return l
}

func stFill(t *testing.T, s Store, key, token string, value []byte, ttl time.Duration) bool {
	t.Helper()
	ok, err := s.Fill(bg(), key, token, value, ttl)
	require.NoError(t, err, "Fill %s", key)
	return ok
}

func stRelease(t *testing.T, s Store, key, token string) bool {
	t.Helper()
	ok, err := s.Release(bg(), key, token)
	require.NoError(t, err, "Release %s", key)
	return ok
}

func stRequireGranted(t *testing.T, l Lookup, msgAndArgs ...any) {
	t.Helper()
	require.True(t, l.Granted, append([]any{"want a granted lease, got %+v"}, l)...)
	require.Nil(t, l.Value, msgAndArgs...)
	require.Empty(t, l.Holder, msgAndArgs...)
}

func stRequireHolder(t *testing.T, l Lookup, holder string, leaseTTL time.Duration) {
	t.Helper()
	require.False(t, l.Granted, "want holder %s, got %+v", holder, l)
	require.Nil(t, l.Value, "want holder %s, got %+v", holder, l)
	require.Equal(t, holder, l.Holder, "lookup %+v", l)
	require.Greater(t, l.HolderTTL, time.Duration(0), "HolderTTL of %+v", l)
	require.LessOrEqual(t, l.HolderTTL, leaseTTL, "HolderTTL of %+v", l)
}

func stRequireValue(t *testing.T, l Lookup, want []byte) {
	t.Helper()
	require.False(t, l.Granted, "want a value, got %+v", l)
	require.Empty(t, l.Holder, "want a value, got holder in %+v", l)
	require.Zero(t, l.HolderTTL, "want a value, got %+v", l)
	require.NotNil(t, l.Value, "want a value, got %+v", l)
	require.True(t, bytes.Equal(want, l.Value), "value: want %d bytes %.40q, got %d bytes %.40q",
		len(want), want, len(l.Value), l.Value)
}

// stRequireEmpty checks that key holds neither value nor lease: a new token is granted a lease,
// which is then released.
func stRequireEmpty(t *testing.T, s Store, key string) {
	t.Helper()
	tok := stNewToken()
	l := stGetOrLease(t, s, key, tok, stLongLease)
	require.True(t, l.Granted, "key %s should be empty, got %+v", key, l)
	require.True(t, stRelease(t, s, key, tok), "release of the probe lease on %s", key)
}

// stPut stores value at key through a lease of its own.
func stPut(t *testing.T, s Store, key string, value []byte) {
	t.Helper()
	tok := stNewToken()
	stRequireGranted(t, stGetOrLease(t, s, key, tok, stLongLease), "put %s", key)
	require.True(t, stFill(t, s, key, tok, value, stValueTTL), "put %s", key)
}

// stPoll calls cond every interval until it returns true, failing the test after limit.
func stPoll(t *testing.T, limit, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(interval)
	}
}

func TestStoreGetOrLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)
		key := k("a")

		tok1, tok2 := stNewToken(), stNewToken()
		stRequireGranted(t, stGetOrLease(t, s, key, tok1, stLongLease))

		stRequireHolder(t, stGetOrLease(t, s, key, tok2, stLongLease), tok1, stLongLease)
		// The holder asking again is not granted a second time either.
		stRequireHolder(t, stGetOrLease(t, s, key, tok1, stLongLease), tok1, stLongLease)

		val := []byte("hello, store")
		require.True(t, stFill(t, s, key, tok1, val, stValueTTL))

		stRequireValue(t, stGetOrLease(t, s, key, tok2, stLongLease), val)
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), val)

		// Another client of the same server sees the same value.
		stRequireValue(t, stGetOrLease(t, b.newStore(t), key, stNewToken(), stLongLease), val)
	})
}

func TestStoreFillNeedsTheLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)

		t.Run("no lease at all", func(t *testing.T) {
			key := k("none")
			require.False(t, stFill(t, s, key, stNewToken(), []byte("x"), stValueTTL))
			stRequireEmpty(t, s, key)
		})

		t.Run("wrong token", func(t *testing.T) {
			key := k("wrong")
			tok1 := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok1, stLongLease))
			require.False(t, stFill(t, s, key, stNewToken(), []byte("intruder"), stValueTTL))
			// Nothing stored, and the lease still stands.
			stRequireHolder(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), tok1, stLongLease)

			require.True(t, stFill(t, s, key, tok1, []byte("mine"), stValueTTL))
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("mine"))

			// The fill ended the lease: the same token cannot fill again.
			require.False(t, stFill(t, s, key, tok1, []byte("again"), stValueTTL))
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("mine"))
		})

		t.Run("token of a value without lease", func(t *testing.T) {
			key := k("valued")
			stPut(t, s, key, []byte("v1"))
			require.False(t, stFill(t, s, key, stNewToken(), []byte("v2"), stValueTTL))
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("v1"))
		})
	})
}

func TestStoreDeleteVoidsLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)

		t.Run("bare lease", func(t *testing.T) {
			key := k("bare")
			tok1 := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok1, stLongLease))
			require.NoError(t, s.Delete(bg(), key))
			require.False(t, stFill(t, s, key, tok1, []byte("stale"), stValueTTL), "a fill after Delete must not land")

			tok2 := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok2, stLongLease))
			require.False(t, stFill(t, s, key, tok1, []byte("stale"), stValueTTL))
			require.True(t, stFill(t, s, key, tok2, []byte("fresh"), stValueTTL))
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("fresh"))
		})

		t.Run("refresh lease on a value", func(t *testing.T) {
			key := k("refresh")
			stPut(t, s, key, []byte("old"))
			tok1 := stNewToken()
			require.True(t, stLease(t, s, key, tok1, stLongLease).Granted)
			require.NoError(t, s.Delete(bg(), key))
			require.False(t, stFill(t, s, key, tok1, []byte("stale"), stValueTTL))
			stRequireEmpty(t, s, key)
		})
	})
}

func TestStoreDeleteMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)

		const n = 50
		all := make([]string, n)
		leaseTok := stNewToken()
		slots := make(map[int]bool)
		for i := range all {
			all[i] = k(fmt.Sprintf("many:%d", i))
			slots[slot.Of(all[i])] = true
			if i%2 == 0 {
				stPut(t, s, all[i], []byte(fmt.Sprintf("v%d", i)))
			} else {
				stRequireGranted(t, stGetOrLease(t, s, all[i], leaseTok, stLongLease))
			}
		}
		require.Greater(t, len(slots), 10, "the keys should spread over many cluster slots")
		survivor := k("survivor")
		stPut(t, s, survivor, []byte("stays"))

		// Deleting nothing is a no-op.
		require.NoError(t, s.Delete(bg()))
		stRequireValue(t, stGetOrLease(t, s, all[0], stNewToken(), stLongLease), []byte("v0"))
		stRequireHolder(t, stGetOrLease(t, s, all[1], stNewToken(), stLongLease), leaseTok, stLongLease)

		// Keys that hold nothing may be in the batch.
		require.NoError(t, s.Delete(bg(), append(all, k("never-written"))...))

		for i, key := range all {
			if i%2 == 1 {
				require.False(t, stFill(t, s, key, leaseTok, []byte("stale"), stValueTTL), "key %s", key)
			}
			stRequireEmpty(t, s, key)
		}
		stRequireValue(t, stGetOrLease(t, s, survivor, stNewToken(), stLongLease), []byte("stays"))
	})
}

func TestStoreLeaseExpires(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if b.name == "miniredis" {
			// miniredis does not let TTLs run down with the wall clock (only FastForward, or
			// ClockTTL, neither of which this backend uses), so a PEXPIREd lease never
			// expires there. The real Redis and Cluster check it.
			t.Skip("miniredis TTLs do not decrease with time")
		}
		s := b.newStore(t)
		_, k := stKeys(t, s)
		key := k("expiring")

		const leaseTTL = 100 * time.Millisecond
		tok1, tok2 := stNewToken(), stNewToken()
		start := time.Now()
		stRequireGranted(t, stGetOrLease(t, s, key, tok1, leaseTTL))
		if l := stGetOrLease(t, s, key, tok2, stLongLease); !l.Granted {
			// Normally the lease still stands here; only a very slow machine gets past it.
			stRequireHolder(t, l, tok1, leaseTTL)
		} else {
			t.Logf("lease ran out before the second lookup (%v)", time.Since(start))
			require.True(t, stRelease(t, s, key, tok2))
		}

		time.Sleep(3 * leaseTTL)
		stPoll(t, 3*time.Second, 20*time.Millisecond, "another token granted after the lease expired", func() bool {
			return stGetOrLease(t, s, key, tok2, stLongLease).Granted
		})
		require.GreaterOrEqual(t, time.Since(start), leaseTTL)

		require.False(t, stFill(t, s, key, tok1, []byte("late"), stValueTTL), "the expired holder must not fill")
		require.True(t, stFill(t, s, key, tok2, []byte("new"), stValueTTL))
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("new"))
	})
}

// A refresh lease (Lease on a key that holds a value) is a lease like any other: once it has
// expired its token no longer holds the key and must not fill it, even if nobody else took a
// lease since.
func TestStoreExpiredRefreshLeaseCannotFill(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)
		key := k("refresh-expiring")

		stPut(t, s, key, []byte("old"))
		const leaseTTL = 100 * time.Millisecond
		tok1 := stNewToken()
		require.True(t, stLease(t, s, key, tok1, leaseTTL).Granted)
		time.Sleep(4 * leaseTTL) // well past the lease; no other lease is taken meanwhile
		if b.client != nil {
			c := b.client(t)
			h, err := c.HGetAll(bg(), key).Result()
			require.NoError(t, err)
			now, err := c.Time(bg()).Result()
			require.NoError(t, err)
			t.Logf("before the late Fill: hash %q, server time %d ms", h, now.UnixMilli())
		}

		stored := stFill(t, s, key, tok1, []byte("late"), stValueTTL)
		require.False(t, stored, "Fill by the holder of an expired refresh lease stored its value "+
			"(Store: only the holder of a key's live lease may fill the key)")
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("old"))
	})
}

func TestStoreLeaseOnValue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)
		key := k("forced")

		v1, v2 := []byte("value-1"), []byte("value-2")
		stPut(t, s, key, v1)

		tok1, tok2 := stNewToken(), stNewToken()
		l := stLease(t, s, key, tok1, stLongLease)
		require.True(t, l.Granted, "Lease on a value: %+v", l)
		require.Empty(t, l.Holder)

		// While the refresh lease is held, readers still get the value: a hit, not a holder.
		stRequireValue(t, stGetOrLease(t, s, key, tok2, stLongLease), v1)
		stRequireValue(t, stGetOrLease(t, b.newStore(t), key, stNewToken(), stLongLease), v1)

		// A second Lease reports the holder.
		stRequireHolder(t, stLease(t, s, key, tok2, stLongLease), tok1, stLongLease)
		// Nobody but the holder fills.
		require.False(t, stFill(t, s, key, tok2, []byte("intruder"), stValueTTL))
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), v1)

		// The holder's fill replaces the value and ends the lease.
		require.True(t, stFill(t, s, key, tok1, v2, stValueTTL))
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), v2)
		require.False(t, stFill(t, s, key, tok1, []byte("again"), stValueTTL))

		// Release by the holder keeps the value and ends the lease.
		tok3, tok4 := stNewToken(), stNewToken()
		require.True(t, stLease(t, s, key, tok3, stLongLease).Granted)
		require.True(t, stRelease(t, s, key, tok3))
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), v2)
		require.False(t, stFill(t, s, key, tok3, []byte("released"), stValueTTL))
		require.True(t, stLease(t, s, key, tok4, stLongLease).Granted, "Lease after Release")
		require.True(t, stRelease(t, s, key, tok4))
		stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), v2)

		// Lease on an empty key is granted too, and blocks GetOrLease like a bare lease.
		empty := k("forced-empty")
		tok5 := stNewToken()
		require.True(t, stLease(t, s, empty, tok5, stLongLease).Granted)
		stRequireHolder(t, stGetOrLease(t, s, empty, stNewToken(), stLongLease), tok5, stLongLease)
		stRequireHolder(t, stLease(t, s, empty, stNewToken(), stLongLease), tok5, stLongLease)
		require.True(t, stFill(t, s, empty, tok5, v1, stValueTTL))
		stRequireValue(t, stGetOrLease(t, s, empty, stNewToken(), stLongLease), v1)
	})
}

func TestStoreRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)

		t.Run("non-holder", func(t *testing.T) {
			key := k("held")
			tok1 := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok1, stLongLease))
			require.False(t, stRelease(t, s, key, stNewToken()))
			stRequireHolder(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), tok1, stLongLease)
			require.True(t, stFill(t, s, key, tok1, []byte("v"), stValueTTL))

			// A value without a lease: nobody holds anything to release.
			require.False(t, stRelease(t, s, key, tok1))
			require.False(t, stRelease(t, s, key, stNewToken()))
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("v"))

			// A refresh lease is not released by another token either.
			tok2 := stNewToken()
			require.True(t, stLease(t, s, key, tok2, stLongLease).Granted)
			require.False(t, stRelease(t, s, key, tok1))
			stRequireHolder(t, stLease(t, s, key, stNewToken(), stLongLease), tok2, stLongLease)
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("v"))
		})

		t.Run("holder of a bare lease", func(t *testing.T) {
			key := k("bare")
			tok1 := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok1, stLongLease))
			require.True(t, stRelease(t, s, key, tok1))
			require.False(t, stRelease(t, s, key, tok1), "the lease is already released")
			require.False(t, stFill(t, s, key, tok1, []byte("late"), stValueTTL))
			tok2 := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok2, stLongLease))
			require.True(t, stRelease(t, s, key, tok2))
		})

		t.Run("empty key", func(t *testing.T) {
			key := k("empty")
			require.False(t, stRelease(t, s, key, stNewToken()))
			stRequireEmpty(t, s, key)
		})
	})
}

func TestStoreValueTTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if b.name == "miniredis" {
			// miniredis does not let TTLs run down with the wall clock (only FastForward, or
			// ClockTTL, neither of which this backend uses), so a PEXPIREd value never
			// expires there. The real Redis and Cluster check it.
			t.Skip("miniredis TTLs do not decrease with time")
		}
		s := b.newStore(t)
		_, k := stKeys(t, s)
		key := k("short")

		const ttl = 200 * time.Millisecond
		tok := stNewToken()
		start := time.Now()
		stRequireGranted(t, stGetOrLease(t, s, key, tok, stLongLease))
		require.True(t, stFill(t, s, key, tok, []byte("short-lived"), ttl))
		if l := stGetOrLease(t, s, key, stNewToken(), stLongLease); !l.Granted {
			stRequireValue(t, l, []byte("short-lived"))
		} else {
			t.Logf("value expired before the first lookup (%v)", time.Since(start))
		}

		time.Sleep(3 * ttl)
		var got Lookup
		stPoll(t, 3*time.Second, 20*time.Millisecond, "the value expires", func() bool {
			got = stGetOrLease(t, s, key, stNewToken(), stLongLease)
			return got.Value == nil
		})
		require.True(t, got.Granted, "after expiry the key is empty: %+v", got)
		require.GreaterOrEqual(t, time.Since(start), ttl)
	})
}

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

func TestStoreBinarySafety(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		_, k := stKeys(t, s)

		t.Run("every byte", func(t *testing.T) {
			v := make([]byte, 0, 512)
			for i := range 256 {
				v = append(v, byte(i))
			}
			for i := 255; i >= 0; i-- {
				v = append(v, byte(i))
			}
			key := k("bytes")
			stPut(t, s, key, v)
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), v)
			stRequireValue(t, stGetOrLease(t, b.newStore(t), key, stNewToken(), stLongLease), v)
		})

		t.Run("empty value", func(t *testing.T) {
			// The Cache never stores an empty value, so the contract says nothing of it: only
			// check that it neither errors nor panics, and log what the store does.
			key := k("empty")
			tok := stNewToken()
			stRequireGranted(t, stGetOrLease(t, s, key, tok, stLongLease))
			ok := stFill(t, s, key, tok, []byte{}, stValueTTL)
			l := stGetOrLease(t, s, key, stNewToken(), stLongLease)
			t.Logf("Fill([]byte{}) = %v; then GetOrLease = {Value: %#v (nil: %v), Granted: %v, Holder: %q}",
				ok, l.Value, l.Value == nil, l.Granted, l.Holder)
		})

		t.Run("1 MiB", func(t *testing.T) {
			v := make([]byte, 1<<20)
			_, _ = rand.Read(v)
			key := k("big")
			stPut(t, s, key, v)
			stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), v)

			// And through the batch calls.
			key2 := k("big-many")
			tok := stNewToken()
			ls, err := s.GetOrLeaseMany(bg(), []string{key2}, tok, stLongLease)
			require.NoError(t, err)
			stRequireGranted(t, ls[0])
			stored, err := s.FillMany(bg(), tok, []FillEntry{{Key: key2, Value: v, TTL: stValueTTL}})
			require.NoError(t, err)
			require.Equal(t, []bool{true}, stored)
			ls, err = s.GetOrLeaseMany(bg(), []string{key2}, stNewToken(), stLongLease)
			require.NoError(t, err)
			stRequireValue(t, ls[0], v)
		})
	})
}

func TestStoreGarbageAtKey(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		c := b.client(t)
		_, k := stKeys(t, s)

		kinds := []struct {
			name  string
			write func(key string) error
		}{
			{"string", func(key string) error { return c.Set(bg(), key, "garbage", stValueTTL).Err() }},
			{"list", func(key string) error { return c.RPush(bg(), key, "a", "b").Err() }},
			{"set", func(key string) error { return c.SAdd(bg(), key, "a", "b").Err() }},
			{"zset", func(key string) error { return c.ZAdd(bg(), key, redis.Z{Score: 1, Member: "a"}).Err() }},
		}
		for _, kind := range kinds {
			t.Run(kind.name, func(t *testing.T) {
				t.Run("GetOrLease", func(t *testing.T) {
					key := k(kind.name + ":get")
					require.NoError(t, kind.write(key))
					tok := stNewToken()
					stRequireGranted(t, stGetOrLease(t, s, key, tok, stLongLease))
					require.True(t, stFill(t, s, key, tok, []byte("clean"), stValueTTL))
					stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("clean"))
				})
				t.Run("GetOrLeaseMany", func(t *testing.T) {
					key := k(kind.name + ":many")
					require.NoError(t, kind.write(key))
					tok := stNewToken()
					ls, err := s.GetOrLeaseMany(bg(), []string{key}, tok, stLongLease)
					require.NoError(t, err)
					stRequireGranted(t, ls[0])
					stored, err := s.FillMany(bg(), tok, []FillEntry{{Key: key, Value: []byte("clean"), TTL: stValueTTL}})
					require.NoError(t, err)
					require.Equal(t, []bool{true}, stored)
				})
				t.Run("Lease", func(t *testing.T) {
					key := k(kind.name + ":lease")
					require.NoError(t, kind.write(key))
					tok := stNewToken()
					require.True(t, stLease(t, s, key, tok, stLongLease).Granted)
					require.True(t, stFill(t, s, key, tok, []byte("clean"), stValueTTL))
					stRequireValue(t, stGetOrLease(t, s, key, stNewToken(), stLongLease), []byte("clean"))
				})
				t.Run("Release", func(t *testing.T) {
					key := k(kind.name + ":release")
					require.NoError(t, kind.write(key))
					require.False(t, stRelease(t, s, key, stNewToken()))
				})
				t.Run("Fill", func(t *testing.T) {
					key := k(kind.name + ":fill")
					require.NoError(t, kind.write(key))
					require.False(t, stFill(t, s, key, stNewToken(), []byte("x"), stValueTTL))
				})
			})
		}
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

func TestStorePing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		require.NoError(t, b.newStore(t).Ping(bg()))
	})
}

// A MemoryStore hit costs no lease token, no timeout context and no lookup sharing: with the
// raw codec it allocates the store key and the copy of the value handed to the caller, and
// nothing else. (A Redis hit allocates in go-redis; the L1 allocates nothing.)
func TestMemoryHitAllocs(t *testing.T) {
	c := newTestCache[[]byte](t, NewMemoryStore(), WithCodec(RawCodec{}))
	load := func(context.Context) ([]byte, error) { return []byte("hello"), nil }
	_, err := c.GetOrLoad(bg(), "k", load)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(1000, func() {
		if v, err := c.GetOrLoad(bg(), "k", load); err != nil || string(v) != "hello" {
			t.Fatalf("hit = %q, %v", v, err)
		}
	})
	require.LessOrEqual(t, allocs, 2.0, "allocations of a MemoryStore hit")
}
