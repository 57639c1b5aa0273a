package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
)

// product is a typical cached row: a few scalar fields and a short list.
type product struct {
	ID    int      `json:"id"`
	Name  string   `json:"name"`
	Price float64  `json:"price"`
	Tags  []string `json:"tags"`
}

// realRedis returns a client to the real Redis, or skips the benchmark when none answers.
func realRedis(b *testing.B) *redis.Client {
	b.Helper()
	conn, err := net.DialTimeout("tcp", redisAddr(), time.Second)
	if err != nil {
		b.Skipf("Redis at %s is not answering: %v", redisAddr(), err)
	}
	conn.Close()
	c := redis.NewClient(&redis.Options{Addr: redisAddr(), ContextTimeoutEnabled: true})
	b.Cleanup(func() { c.Close() })
	return c
}

const batchSize = 100

// BenchmarkBatch compares reading 100 cached keys with one GetOrLoadMany, with 100 sequential
// GetOrLoad calls, and with the floor: one raw pipeline of HGET (the field the store keeps the
// value envelope in) plus the same decoding. The client is built with ContextTimeoutEnabled, as
// RedisStore recommends; GetOrLoadManyDefaultClient shows the batch on a default client.
// GetOrLoadManyL1 (every key in the local cache) and sturdyc read the batch from process memory.
func BenchmarkBatch(b *testing.B) {
	client := realRedis(b)
	ctx := context.Background()
	prefix := "cacheaside-bench:batch:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	// A generous store timeout: on a loaded machine a hit must not fail open to the loader.
	open := func(client *redis.Client, opts ...cacheaside.Option) *cacheaside.Cache[product] {
		c, err := cacheaside.New[product](cacheaside.NewRedisStore(client), append([]cacheaside.Option{cacheaside.WithPrefix(prefix),
			cacheaside.WithTTL(10 * time.Minute), cacheaside.WithStoreTimeout(time.Second)}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	c := open(client)
	b.Cleanup(func() { _, _ = c.InvalidatePattern(context.Background(), "*") }) // runs before c.Close
	keys := make([]string, batchSize)
	for i := range keys {
		keys[i] = "product:" + strconv.Itoa(i)
	}
	load := func(_ context.Context, missing []string) (map[string]product, error) {
		out := make(map[string]product, len(missing))
		for _, k := range missing {
			out[k] = product{ID: len(k), Name: "product " + k, Price: 9.99, Tags: []string{"a", "bb", "ccc"}}
		}
		return out, nil
	}
	if _, err := c.GetOrLoadMany(ctx, keys, load); err != nil {
		b.Fatal(err)
	}
	noLoad := func(context.Context, []string) (map[string]product, error) {
		return nil, fmt.Errorf("bench: unexpected load")
	}
	noLoadOne := func(context.Context) (product, error) { return product{}, fmt.Errorf("bench: unexpected load") }

	// batch returns a read of the whole batch by read, which must find every key.
	batch := func(read func() (map[string]product, error)) func() error {
		return func() error {
			m, err := read()
			if err == nil && len(m) != batchSize {
				err = fmt.Errorf("got %d values", len(m))
			}
			return err
		}
	}
	many := batch(func() (map[string]product, error) { return c.GetOrLoadMany(ctx, keys, noLoad) })
	// The same batch through a client built with the go-redis defaults (no
	// ContextTimeoutEnabled): the store then bounds each call on a goroutine of its own.
	plain := redis.NewClient(&redis.Options{Addr: redisAddr()})
	b.Cleanup(func() { plain.Close() })
	cPlain := open(plain)
	manyPlain := batch(func() (map[string]product, error) { return cPlain.GetOrLoadMany(ctx, keys, noLoad) })
	sequential := func() error {
		for _, k := range keys {
			if _, err := c.GetOrLoad(ctx, k, noLoadOne); err != nil {
				return err
			}
		}
		return nil
	}
	// The same batch through a cache with an L1 (WithLocalCache): every key an L1 hit, no round
	// trip; the in-process counterpart of sturdyc's batch below.
	cL1 := open(client, cacheaside.WithLocalCache(10_000, time.Minute))
	manyL1 := batch(func() (map[string]product, error) { return cL1.GetOrLoadMany(ctx, keys, noLoad) })
	warmL1(b, manyL1, func() uint64 { return cL1.Stats().L1Hits })
	// sturdyc's batch read (GetOrFetchBatch), all hits in its process memory (its distributed
	// storage is an interface the user implements, left out): compare it with the L1 row. The
	// key function is the identity (the ids are the keys already), cheaper than its BatchKeyFn's
	// Sprintf.
	sc := sturdyc.New[product](10_000, 16, 10*time.Minute, 10)
	identity := func(id string) string { return id }
	if _, err := sc.GetOrFetchBatch(ctx, keys, identity, load); err != nil {
		b.Fatal(err)
	}
	sturdycBatch := batch(func() (map[string]product, error) { return sc.GetOrFetchBatch(ctx, keys, identity, noLoad) })
	// go-redis/cache has no batch read (Get, Once and Set take one key each), so it has no row.
	schema := envelope.Schema(cacheaside.JSONCodec{}.Name(), envelope.DescribeType(reflect.TypeFor[product]())) // as New computes it
	storeKeys := make([]string, batchSize)
	for i, k := range keys {
		storeKeys[i] = prefix + k
	}
	floor := func() error {
		pipe := client.Pipeline()
		cmds := make([]*redis.StringCmd, len(storeKeys))
		for i, k := range storeKeys {
			cmds[i] = pipe.HGet(ctx, k, "v")
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		out := make(map[string]product, len(keys))
		for i, cmd := range cmds {
			raw, err := cmd.Bytes()
			if err != nil {
				return err
			}
			_, payload, ok := envelope.Decode(raw, schema)
			if !ok {
				return fmt.Errorf("bad envelope at %s", storeKeys[i])
			}
			var p product
			if err := json.Unmarshal(payload, &p); err != nil {
				return err
			}
			out[keys[i]] = p
		}
		return nil
	}

	// The floor of a plain string per key: the same envelopes copied to string keys, read with
	// one MGET and decoded the same way.
	strKeys := copyToStrings(b, client, storeKeys)
	floorMGET := func() error {
		vals, err := client.MGet(ctx, strKeys...).Result()
		if err != nil {
			return err
		}
		return decodeAll(vals, keys, schema)
	}

	// Interleaved: each iteration runs the batch and the other read once each, so a load that
	// drifts on a shared machine weighs on both alike; it reports the ratio of their times.
	for _, other := range []struct {
		name string
		fn   func() error
	}{{"FloorPipelinedHGET", floor}, {"FloorMGET", floorMGET}, {"SequentialGetOrLoad", sequential}} {
		b.Run("GetOrLoadManyVs"+other.name, func(b *testing.B) { interleaved(b, many, other.fn) })
	}
	// Batches with misses: every key (AllMiss) or every other key (HalfMiss) deleted before each
	// read (outside the timer), so the batch leases, loads and fills them.
	missCases(b, prefix, c, keys, load, func(ks []string) error { return client.Unlink(ctx, ks...).Err() })

	for _, bc := range []struct {
		name string
		fn   func() error
	}{
		{"GetOrLoadMany", many},
		{"GetOrLoadManyDefaultClient", manyPlain},
		{"SequentialGetOrLoad", sequential},
		{"FloorPipelinedHGET", floor},
		{"FloorMGET", floorMGET},
		{"GetOrLoadManyL1", manyL1},
		{"sturdyc", sturdycBatch},
	} {
		if err := bc.fn(); err != nil {
			b.Fatalf("%s: %v", bc.name, err)
		}
		b.Run(bc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := bc.fn(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	b.Run("Cluster", func(b *testing.B) { batchCluster(b, load, keys, noLoad) })
}

// interleaved runs many and other once each per iteration and reports their times and ratio.
func interleaved(b *testing.B, many, other func() error) {
	interleavedAs(b, "many", "other", many, other)
}

// interleavedAs runs ours and other in turn each iteration, so load drifts weigh on both
// alike, and reports each one's time per op (ours-ns/op, other-ns/op under the names given)
// and their ratio.
func interleavedAs(b *testing.B, oursName, otherName string, ours, other func() error) {
	var tOurs, tOther time.Duration
	for b.Loop() {
		start := time.Now()
		if err := ours(); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := other(); err != nil {
			b.Fatal(err)
		}
		tOurs += mid.Sub(start)
		tOther += time.Since(mid)
	}
	b.ReportMetric(float64(tOurs.Nanoseconds())/float64(b.N), oursName+"-ns/op")
	b.ReportMetric(float64(tOther.Nanoseconds())/float64(b.N), otherName+"-ns/op")
	b.ReportMetric(float64(tOurs)/float64(tOther), oursName+"/"+otherName)
}

// missCases benchmarks batches of keys with misses on c (whose store keys are storePrefix+key): AllMiss deletes every key before each
// read, HalfMiss every other key (with unlink, outside the timer); the batch then leases, loads
// and fills them.
func missCases(b *testing.B, storePrefix string, c *cacheaside.Cache[product], keys []string, load func(context.Context, []string) (map[string]product, error), unlink func([]string) error) {
	ctx := context.Background()
	storeKeys := func(step int) []string {
		var ks []string
		for i := 0; i < len(keys); i += step {
			ks = append(ks, storePrefix+keys[i])
		}
		return ks
	}
	for _, mc := range []struct {
		name string
		gone []string
	}{{"AllMiss", storeKeys(1)}, {"HalfMiss", storeKeys(2)}} {
		b.Run("GetOrLoadMany"+mc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				b.StopTimer()
				if err := unlink(mc.gone); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				m, err := c.GetOrLoadMany(ctx, keys, load)
				if err == nil && len(m) != len(keys) {
					err = fmt.Errorf("got %d values", len(m))
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBatch's Cluster cases: the same batch of 100 keys on the 3-master Cluster
// (CACHEASIDE_CLUSTER_ADDRS), against the floor of a pipelined HGET per key (one pipeline per
// node, as go-redis sends it), and with misses.
func batchCluster(b *testing.B, load func(context.Context, []string) (map[string]product, error), keys []string, noLoad func(context.Context, []string) (map[string]product, error)) {
	addrs := []string{"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}
	if a := os.Getenv("CACHEASIDE_CLUSTER_ADDRS"); a != "" {
		addrs = strings.Split(a, ",")
	}
	conn, err := net.DialTimeout("tcp", addrs[0], time.Second)
	if err != nil {
		b.Skipf("Redis Cluster at %s is not answering: %v", addrs[0], err)
	}
	conn.Close()
	ctx := context.Background()
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true})
	b.Cleanup(func() { client.Close() })
	prefix := "cacheaside-bench:batchc:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	c, err := cacheaside.New[product](cacheaside.NewRedisStore(client), cacheaside.WithPrefix(prefix),
		cacheaside.WithTTL(10*time.Minute), cacheaside.WithStoreTimeout(time.Second))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = c.InvalidatePattern(context.Background(), "*")
		c.Close()
	})
	if _, err := c.GetOrLoadMany(ctx, keys, load); err != nil {
		b.Fatal(err)
	}
	many := func() error {
		m, err := c.GetOrLoadMany(ctx, keys, noLoad)
		if err == nil && len(m) != len(keys) {
			err = fmt.Errorf("got %d values", len(m))
		}
		return err
	}
	schema := envelope.Schema(cacheaside.JSONCodec{}.Name(), envelope.DescribeType(reflect.TypeFor[product]()))
	floor := func() error {
		pipe := client.Pipeline()
		cmds := make([]*redis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.HGet(ctx, prefix+k, "v")
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		out := make(map[string]product, len(keys))
		for i, cmd := range cmds {
			raw, err := cmd.Bytes()
			if err != nil {
				return err
			}
			_, payload, ok := envelope.Decode(raw, schema)
			if !ok {
				return fmt.Errorf("bad envelope at %s", keys[i])
			}
			var p product
			if err := json.Unmarshal(payload, &p); err != nil {
				return err
			}
			out[keys[i]] = p
		}
		return nil
	}
	// The floor of a plain string per key: the same envelopes copied to string keys, one GET
	// each, pipelined.
	sks := make([]string, len(keys))
	for i, k := range keys {
		sks[i] = prefix + k
	}
	strKeys := copyToStrings(b, client, sks)
	floorGET := func() error {
		pipe := client.Pipeline()
		cmds := make([]*redis.StringCmd, len(strKeys))
		for i, k := range strKeys {
			cmds[i] = pipe.Get(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		vals := make([]any, len(cmds))
		for i, cmd := range cmds {
			vals[i] = cmd.Val()
		}
		return decodeAll(vals, keys, schema)
	}
	b.Run("GetOrLoadManyVsFloorPipelinedHGET", func(b *testing.B) { interleaved(b, many, floor) })
	b.Run("GetOrLoadManyVsFloorPipelinedGET", func(b *testing.B) { interleaved(b, many, floorGET) })
	for _, bc := range []struct {
		name string
		fn   func() error
	}{{"GetOrLoadMany", many}, {"FloorPipelinedHGET", floor}, {"FloorPipelinedGET", floorGET}} {
		b.Run(bc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	missCases(b, prefix, c, keys, load, func(ks []string) error {
		pipe := client.Pipeline()
		for _, k := range ks {
			pipe.Unlink(ctx, k)
		}
		_, err := pipe.Exec(ctx)
		return err
	})
}

// copyToStrings copies the value field of each hash in keys to a plain string key (its name
// with a ":str" suffix), for the GET and MGET floors (MGET only on a standalone server: on
// Cluster the keys span every slot).
func copyToStrings(b *testing.B, client redis.UniversalClient, keys []string) []string {
	ctx := context.Background()
	out := make([]string, len(keys))
	for i, k := range keys {
		v, err := client.HGet(ctx, k, "v").Result()
		if err != nil {
			b.Fatal(err)
		}
		out[i] = k + ":str"
		if err := client.Set(ctx, out[i], v, 10*time.Minute).Err(); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		for _, k := range out {
			client.Unlink(context.Background(), k)
		}
	})
	return out
}

// decodeAll decodes the envelopes of a batch's floor read (strings, in keys' order).
func decodeAll(vals []any, keys []string, schema uint32) error {
	out := make(map[string]product, len(keys))
	for i, v := range vals {
		raw, ok := v.(string)
		if !ok {
			return fmt.Errorf("no value at %s", keys[i])
		}
		_, payload, ok := envelope.Decode([]byte(raw), schema)
		if !ok {
			return fmt.Errorf("bad envelope at %s", keys[i])
		}
		var p product
		if err := json.Unmarshal(payload, &p); err != nil {
			return err
		}
		out[keys[i]] = p
	}
	return nil
}

// warmL1 reads the batch until read reports it was served from the L1: the first reads fill it
// from the store, and on Redis the L1 serves only once its invalidation subscription is live.
func warmL1(b *testing.B, read func() error, l1Hits func() uint64) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		before := l1Hits()
		if err := read(); err != nil {
			b.Fatal(err)
		}
		if l1Hits()-before == batchSize {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("the L1 did not serve the batch within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
