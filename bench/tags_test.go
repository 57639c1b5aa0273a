package bench

import (
	"context"
	"fmt"
	"strconv"
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

// BenchmarkTagHit reads a cached entry with and without tags (Tags): a hit records nothing,
// so the difference is the call option itself.
func BenchmarkTagHit(b *testing.B) {
	client := newClient(b)
	c, err := cacheaside.New[User](cacheaside.NewRedisStore(client), append(patient, cacheaside.WithPrefix(prefix(b, client)), cacheaside.WithTTL(time.Hour))...)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
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
}
