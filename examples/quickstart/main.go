// Quickstart is the smallest cache-aside program: a cache over process memory in front of a
// "database" (a map), read through GetOrLoad and invalidated after each write.
//
//	cd examples && go run ./quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/cacheaside/cacheaside"
)

type User struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

func main() {
	ctx := context.Background()

	// The store: process memory here; cacheaside.NewRedisStore(redisClient) shares one cache
	// between processes.
	users, err := cacheaside.New[User](cacheaside.NewMemoryStore(),
		cacheaside.WithPrefix("user:"), cacheaside.WithTTL(10*time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	defer users.Close()

	db := map[string]User{"1": {ID: 1, Name: "Ada"}} // the source of truth
	queries := 0
	getUser := func(id string) (User, error) {
		return users.GetOrLoad(ctx, id, func(ctx context.Context) (User, error) {
			queries++ // only on a miss
			u, ok := db[id]
			if !ok {
				return User{}, cacheaside.ErrNotFound // cached as "not found" for the negative TTL
			}
			return u, nil
		})
	}

	u, _ := getUser("1")
	fmt.Printf("read %q: a miss, loaded from the database (queries: %d)\n", u.Name, queries)
	u, _ = getUser("1")
	fmt.Printf("read %q: a hit (queries: %d)\n", u.Name, queries)

	// A write: the source of truth first, then Invalidate. No read that starts after
	// Invalidate returns sees the old value.
	db["1"] = User{ID: 1, Name: "Ada Lovelace"}
	if err := users.Invalidate(ctx, "1"); err != nil {
		log.Printf("invalidate: %v (the old value lives until its TTL)", err)
	}
	u, _ = getUser("1")
	fmt.Printf("read %q after the write (queries: %d)\n", u.Name, queries)

	_, _ = getUser("42")   // not found: one query, and the answer is cached
	_, err = getUser("42") // answered from the cache
	fmt.Printf("user 42: not found=%v, twice, one query (queries: %d)\n", errors.Is(err, cacheaside.ErrNotFound), queries)
}
