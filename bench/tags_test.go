package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/redis/go-redis/v9"
)

// tagsDB is the Redis database of BenchmarkInvalidateTags: its million keys would slow every
// SCAN of database 0 (the tests' and the other benchmarks'), so they live apart, under a
// prefix of their own, and are deleted at the end.
const tagsDB = 3

// tagged is how many entries one tag (or one pattern) covers in BenchmarkInvalidateTags.
const tagged = 100

// BenchmarkInvalidateTags removes 100 related entries from a Redis holding 10^4, 10^5 and 10^6
// keys: with InvalidateTags (the entries tagged "category:7") and with InvalidatePattern
// ("cat:7:*", a SCAN of the whole keyspace). Each iteration first puts the 100 entries back
// (untimed), then times the invalidation. One invalidation per op.
func BenchmarkInvalidateTags(b *testing.B) {
	needRedis(b)
	client := redis.NewClient(&redis.Options{Addr: redisAddr(), DB: tagsDB, ContextTimeoutEnabled: true})
	b.Cleanup(func() { client.Close() })
	p := prefix(b, client)
	ctx := context.Background()
	c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), append(patient,
		cacheaside.WithPrefix(p), cacheaside.WithTTL(time.Hour), cacheaside.WithInvalidateTimeout(time.Minute))...)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	filled := 0 // filler keys in the database so far, besides the tagged entries
	fill := func(n int) {
		for filled < n {
			pipe := client.Pipeline()
			for end := min(filled+10000, n); filled < end; filled++ {
				pipe.Set(ctx, p+"other:"+strconv.Itoa(filled), "x", time.Hour)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	var loads atomic.Int64
	put := func(b *testing.B) {
		for i := range tagged {
			key := "cat:7:page:" + strconv.Itoa(i)
			if _, err := c.GetOrLoad(ctx, key, func(context.Context) (User, error) {
				loads.Add(1)
				return newUser(i), nil
			}, cacheaside.Tags("category:7")); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, keys := range []int{10_000, 100_000, 1_000_000} {
		fill(keys - tagged)
		for _, how := range []string{"tag", "pattern"} {
			b.Run(fmt.Sprintf("%s/keys=%d", how, keys), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					b.StopTimer()
					loads.Store(0)
					put(b)
					if loads.Load() != tagged {
						b.Fatalf("%d of the %d entries were loaded: they were not all invalidated", loads.Load(), tagged)
					}
					b.StartTimer()
					switch how {
					case "tag":
						err = c.InvalidateTags(ctx, "category:7")
					default:
						var n int
						n, err = c.InvalidatePattern(ctx, "cat:7:*")
						if err == nil && n != tagged {
							err = fmt.Errorf("removed %d entries, want %d", n, tagged)
						}
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// tagClusterClient is a client of the 3-master Cluster (CACHEASIDE_CLUSTER_ADDRS), or a skip
// (a failure in CI) when it does not answer.
func tagClusterClient(b *testing.B) *redis.ClusterClient {
	addrs := []string{"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}
	if a := os.Getenv("CACHEASIDE_CLUSTER_ADDRS"); a != "" {
		addrs = strings.Split(a, ",")
	}
	conn, err := net.DialTimeout("tcp", addrs[0], time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatalf("Redis Cluster at %s is not answering: %v", addrs[0], err)
		}
		b.Skipf("Redis Cluster at %s is not answering: %v", addrs[0], err)
	}
	conn.Close()
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true})
	b.Cleanup(func() { client.Close() })
	return client
}

// BenchmarkTagHit reads a cached entry with two tags and without (Tags), on the standalone
// Redis and on the Cluster (where the tags' sets live in other hash slots than the entries):
// a hit records nothing, so the difference is the call option itself. The miss cases time a
// read of a new key (lease, tag records, instant load, fill): a load with tags costs one more
// round trip, before the loader runs.
func BenchmarkTagHit(b *testing.B) {
	for _, where := range []string{"redis", "cluster"} {
		b.Run(where, func(b *testing.B) {
			var client redis.UniversalClient
			var p string
			if where == "redis" {
				rc := newClient(b)
				client, p = rc, prefix(b, rc)
			} else {
				client, p = tagClusterClient(b), "bench-tags-"+strconv.FormatInt(time.Now().UnixNano(), 36)+":"
			}
			c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), append(patient, cacheaside.WithPrefix(p), cacheaside.WithTTL(time.Hour))...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if where == "cluster" {
					_, _ = c.InvalidatePattern(context.Background(), "*")
				}
				c.Close()
			})
			ctx := context.Background()
			tagsOf := func(i int) []string { return []string{"product:" + strconv.Itoa(i), "category:" + strconv.Itoa(i%10)} }
			for i := range hitKeys {
				if _, err := c.GetOrLoad(ctx, keyOf(i), func(context.Context) (User, error) { return newUser(i), nil }, cacheaside.Tags(tagsOf(i)...)); err != nil {
					b.Fatal(err)
				}
			}
			var calls atomic.Int64
			loaders := fallbackLoaders(&calls)
			opts := make([][]cacheaside.CallOption, hitKeys)
			for i := range opts {
				opts[i] = []cacheaside.CallOption{cacheaside.Tags(tagsOf(i)...)}
			}
			b.Run("untagged", func(b *testing.B) {
				runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
					return c.GetOrLoad(ctx, keyOf(i), loaders[i])
				}, &calls)
			})
			b.Run("tagged", func(b *testing.B) {
				runHit(b, redisParallelism, func(ctx context.Context, i int) (User, error) {
					return c.GetOrLoad(ctx, keyOf(i), loaders[i], opts[i]...)
				}, &calls)
			})
			var seq atomic.Int64 // miss keys are new across every run of the cases
			for _, tagged := range []bool{false, true} {
				name := "miss-untagged"
				if tagged {
					name = "miss-tagged"
				}
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						n := int(seq.Add(1))
						var o []cacheaside.CallOption
						if tagged {
							o = opts[n%hitKeys]
						}
						key := "miss:" + strconv.Itoa(n)
						if _, err := c.GetOrLoad(ctx, key, func(context.Context) (User, error) { return newUser(n), nil }, o...); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}
