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

	"github.com/cacheaside/cacheaside/internal/slot"
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

func TestStorePing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		require.NoError(t, b.newStore(t).Ping(bg()))
	})
}
