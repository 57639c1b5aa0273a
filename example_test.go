package cacheaside_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cacheaside/cacheaside"
)

type User struct {
	ID   int
	Name string
}

// The smallest program: an in-process store, a loader that stands for a database query, and
// an invalidation after a write.
func Example() {
	ctx := context.Background()
	users, err := cacheaside.New[User](cacheaside.NewMemoryStore(), cacheaside.WithTTL(time.Minute))
	if err != nil {
		panic(err)
	}
	defer users.Close()

	db := map[string]User{"1": {ID: 1, Name: "Ada"}}
	queries := 0
	load := func(id string) func(context.Context) (User, error) {
		return func(context.Context) (User, error) {
			queries++
			u, ok := db[id]
			if !ok {
				return User{}, cacheaside.ErrNotFound
			}
			return u, nil
		}
	}

	_, _ = users.GetOrLoad(ctx, "1", load("1"))  // a miss: one query
	u, _ := users.GetOrLoad(ctx, "1", load("1")) // a hit
	fmt.Println(u.Name, "queries:", queries)

	db["1"] = User{ID: 1, Name: "Ada Lovelace"} // write the source of truth,
	_ = users.Invalidate(ctx, "1")              // then invalidate
	u, _ = users.GetOrLoad(ctx, "1", load("1"))
	fmt.Println(u.Name, "queries:", queries)

	_, _ = users.GetOrLoad(ctx, "2", load("2"))
	_, err = users.GetOrLoad(ctx, "2", load("2")) // the not-found is cached too
	fmt.Println(errors.Is(err, cacheaside.ErrNotFound), "queries:", queries)
	// Output:
	// Ada queries: 1
	// Ada Lovelace queries: 2
	// true queries: 3
}

// GetOrLoadMany reads a page of keys at once and calls its loader with only the missing ones.
func ExampleCache_GetOrLoadMany() {
	ctx := context.Background()
	c, _ := cacheaside.New[string](cacheaside.NewMemoryStore())
	defer c.Close()
	_, _ = c.GetOrLoad(ctx, "a", func(context.Context) (string, error) { return "cached A", nil })

	got, _ := c.GetOrLoadMany(ctx, []string{"a", "b", "c"}, func(_ context.Context, missing []string) (map[string]string, error) {
		fmt.Println("loading", missing)
		return map[string]string{"b": "loaded B"}, nil // c does not exist
	})
	fmt.Println(got["a"], "|", got["b"], "|", len(got))
	// Output:
	// loading [b c]
	// cached A | loaded B | 2
}

// NewRedisStore puts the cache on Redis through any go-redis client: standalone as here, a
// redis.NewFailoverClient (Sentinel), a redis.NewClusterClient or a redis.NewRing. The example
// runs on miniredis, an in-process Redis, so that it needs no server.
func ExampleNewRedisStore() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	// ContextTimeoutEnabled: the client bounds each call by its context's deadline itself, so
	// the store needs no goroutine per call to bound it (see NewRedisStore).
	client := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer client.Close()

	users, err := cacheaside.New[User](cacheaside.NewRedisStore(client), cacheaside.WithPrefix("users:"))
	if err != nil {
		panic(err)
	}
	defer users.Close()

	ctx := context.Background()
	load := func(context.Context) (User, error) { return User{ID: 1, Name: "Ada"}, nil }
	u, err := users.GetOrLoad(ctx, "1", load)
	if err != nil {
		panic(err)
	}
	fmt.Println(u.Name, "stored in Redis under", mr.Keys())
	// Output: Ada stored in Redis under [users:1]
}

// WithLocalCache adds an in-process L1 in front of the store: a hit costs no round trip. An
// Invalidate on any instance drops the key from every instance's L1 (by a broadcast, here the
// memory store's own).
func ExampleWithLocalCache() {
	users, err := cacheaside.New[User](cacheaside.NewMemoryStore(), cacheaside.WithLocalCache(10_000, 30*time.Second))
	if err != nil {
		panic(err)
	}
	defer users.Close()

	ctx := context.Background()
	load := func(context.Context) (User, error) { return User{ID: 1, Name: "Ada"}, nil }
	// The L1 serves once its invalidation subscription is up (at once on the memory store, a
	// round trip on Redis); until then reads go to the store.
	for i := 0; i < 1000 && users.Stats().L1Hits == 0; i++ {
		if _, err := users.GetOrLoad(ctx, "1", load); err != nil {
			panic(err)
		}
		if i > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	s := users.Stats()
	fmt.Println("loads:", s.Loads, "served from the L1:", s.L1Hits > 0)
	// Output: loads: 1 served from the L1: true
}

// Warm fills many keys ahead of traffic (after a deploy, say) in batches, with one loader
// call per batch; keys already cached are not loaded again.
func ExampleCache_Warm() {
	users, err := cacheaside.New[User](cacheaside.NewMemoryStore())
	if err != nil {
		panic(err)
	}
	defer users.Close()

	ctx := context.Background()
	db := map[string]User{"1": {ID: 1, Name: "Ada"}, "2": {ID: 2, Name: "Grace"}}
	load := func(_ context.Context, ids []string) (map[string]User, error) {
		found := make(map[string]User, len(ids))
		for _, id := range ids {
			if u, ok := db[id]; ok {
				found[id] = u
			}
		}
		return found, nil // a key left out is not found, and cached as such
	}
	res, err := users.Warm(ctx, []string{"1", "2", "3"}, load)
	if err != nil {
		panic(err)
	}
	fmt.Printf("loaded %d, not found %d, already cached %d\n", res.Loaded, res.NotFound, res.Cached)
	res, err = users.Warm(ctx, []string{"1", "2", "3"}, load)
	if err != nil {
		panic(err)
	}
	fmt.Printf("loaded %d, not found %d, already cached %d\n", res.Loaded, res.NotFound, res.Cached)
	// Output:
	// loaded 2, not found 1, already cached 0
	// loaded 0, not found 0, already cached 3
}

// InvalidatePattern removes every entry of the cache whose key matches a Redis glob pattern,
// within the cache's prefix only, and returns how many it removed.
func ExampleCache_InvalidatePattern() {
	cache, err := cacheaside.New[string](cacheaside.NewMemoryStore(), cacheaside.WithPrefix("shop:"))
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	ctx := context.Background()
	for _, key := range []string{"user:1", "user:2", "order:1"} {
		if _, err := cache.GetOrLoad(ctx, key, func(context.Context) (string, error) { return "v", nil }); err != nil {
			panic(err)
		}
	}
	n, err := cache.InvalidatePattern(ctx, "user:*")
	if err != nil {
		panic(err)
	}
	fmt.Println("removed", n)
	// Output: removed 2
}

// countingStore is a Store of one's own: here it wraps another Store (any Store: RedisStore,
// MemoryStore) and counts the lookups and fills reaching it. A Store written from scratch
// must keep the lease semantics the Store interface documents.
type countingStore struct {
	cacheaside.Store
	lookups, fills atomic.Int64
}

var _ cacheaside.Store = (*countingStore)(nil)

func (s *countingStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (cacheaside.Lookup, error) {
	s.lookups.Add(1)
	return s.Store.GetOrLease(ctx, key, token, leaseTTL)
}

func (s *countingStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	s.fills.Add(1)
	return s.Store.Fill(ctx, key, token, value, ttl)
}

// A custom Store: any type with the Store methods can hold a Cache's values.
func ExampleStore() {
	store := &countingStore{Store: cacheaside.NewMemoryStore()}
	users, err := cacheaside.New[User](store)
	if err != nil {
		panic(err)
	}
	defer users.Close()

	ctx := context.Background()
	load := func(context.Context) (User, error) { return User{ID: 1, Name: "Ada"}, nil }
	for range 3 {
		if _, err := users.GetOrLoad(ctx, "1", load); err != nil {
			panic(err)
		}
	}
	fmt.Println("lookups:", store.lookups.Load(), "fills:", store.fills.Load())
	// Output: lookups: 3 fills: 1
}

// Tags drop related entries together: the product page, the category lists and the search
// pages that show a product, after its price changed.
func ExampleCache_InvalidateTags() {
	ctx := context.Background()
	pages, err := cacheaside.New[string](cacheaside.NewMemoryStore())
	if err != nil {
		panic(err)
	}
	defer pages.Close()

	price := 100
	render := func(page string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return fmt.Sprintf("%s: %d", page, price), nil }
	}
	read := func(page string, tags ...string) string {
		v, err := pages.GetOrLoad(ctx, page, render(page), cacheaside.Tags(tags...))
		if err != nil {
			return err.Error()
		}
		return v
	}
	read("product:42", "product:42")
	read("category:7:page:1", "category:7", "product:42", "product:43")
	read("search:shoes", "product:42", "product:44")
	read("category:8:page:1", "category:8", "product:44")

	price = 90                                                      // the write,
	if err := pages.InvalidateTags(ctx, "product:42"); err != nil { // then one call for every page that shows it
		panic(err)
	}
	fmt.Println(read("product:42", "product:42"))
	fmt.Println(read("category:7:page:1", "category:7", "product:42", "product:43"))
	fmt.Println(read("search:shoes", "product:42", "product:44"))
	fmt.Println(read("category:8:page:1", "category:8", "product:44")) // not tagged product:42: still cached
	// Output:
	// product:42: 90
	// category:7:page:1: 90
	// search:shoes: 90
	// category:8:page:1: 100
}
