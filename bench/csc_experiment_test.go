package bench

// An experiment, not part of the library: go-redis v9's client-side caching (RESP3 CLIENT
// TRACKING, experimental in v9.23) on the HGET of a cacheaside entry's value: what a tracked
// hit costs, and how long after a write returns a tracked read still answers the old value.
// Run it with CACHEASIDE_CSC_EXPERIMENT=1 go test -run TestCSCExperiment -v . (and
// CACHEASIDE_CSC_DRAIN=1ms for another invalidation sweep period).

import (
	"context"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCSCExperiment(t *testing.T) {
	if os.Getenv("CACHEASIDE_CSC_EXPERIMENT") == "" {
		t.Skip("an experiment: set CACHEASIDE_CSC_EXPERIMENT=1 to run it")
	}
	needRedis(t)
	ctx := context.Background()
	addr := redisAddr()
	plain := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, Protocol: 3})
	defer plain.Close()
	drain := 5 * time.Millisecond // go-redis's default: how often idle connections are swept for invalidations
	if d, err := time.ParseDuration(os.Getenv("CACHEASIDE_CSC_DRAIN")); err == nil {
		drain = d
	}
	t.Logf("DrainInterval %v", drain)
	csc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, Protocol: 3,
		ClientSideCacheConfig: &redis.ClientSideCacheConfig{MaxEntries: 100000, MaxStaleness: 10 * time.Second, DrainInterval: drain}})
	defer csc.Close()
	writer := redis.NewClient(&redis.Options{Addr: addr})
	defer writer.Close()
	key := fmt.Sprintf("cscexp:%d", time.Now().UnixNano())
	defer writer.Del(ctx, key)
	val := `{"id":1,"name":"user-1","email":"user1@example.com","age":21,"active":false}`
	if err := writer.HSet(ctx, key, "v", val).Err(); err != nil {
		t.Fatal(err)
	}
	measure := func(name string, c *redis.Client, n int) {
		// warm
		for range 100 {
			if err := c.HGet(ctx, key, "v").Err(); err != nil {
				t.Fatal(err)
			}
		}
		allocs := testing.AllocsPerRun(1000, func() { _ = c.HGet(ctx, key, "v").Val() })
		start := time.Now()
		for range n {
			if v := c.HGet(ctx, key, "v").Val(); v != val {
				t.Fatalf("%s: got %q", name, v)
			}
		}
		el := time.Since(start)
		t.Logf("%s: HGET %v/op, %.0f allocs/op", name, el/time.Duration(n), allocs)
	}
	for range 3 {
		measure("plain RESP3", plain, 20000)
		measure("client-side cache (tracked)", csc, 200000)
	}
	// Staleness: after the writer's HSET (or DEL) returns, how long until the tracked client's
	// HGET stops answering the old value.
	var lags []time.Duration
	stale := 0
	for i := range 200 {
		nv := fmt.Sprintf("%s-%d", val, i)
		_ = csc.HGet(ctx, key, "v").Val() // cached
		_ = csc.HGet(ctx, key, "v").Val()
		if err := writer.HSet(ctx, key, "v", nv).Err(); err != nil {
			t.Fatal(err)
		}
		done := time.Now()
		first := true
		for {
			v := csc.HGet(ctx, key, "v").Val()
			if v == nv {
				break
			}
			if first {
				stale++
				first = false
			}
			if time.Since(done) > 5*time.Second {
				t.Fatal("never invalidated")
			}
		}
		lags = append(lags, time.Since(done))
		time.Sleep(2 * time.Millisecond)
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	t.Logf("after a write returned: %d of 200 first reads served the old value; time to fresh p50 %v p99 %v max %v",
		stale, lags[100], lags[197], lags[199])
	// Lua writes: a key changed by a script (the fill) invalidates too?
	if err := writer.Eval(ctx, "redis.call('HSET', KEYS[1], 'v', ARGV[1]) return 1", []string{key}, "from-lua").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	t.Logf("after a Lua HSET and 50 ms: tracked HGET = %q", csc.HGet(ctx, key, "v").Val())
}
