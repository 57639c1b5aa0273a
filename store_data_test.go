package cacheaside

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

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
