package cacheaside_test

import (
	"context"
	"errors"
	"fmt"
	"time"

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

	u, _ := users.GetOrLoad(ctx, "1", load("1")) // a miss: one query
	u, _ = users.GetOrLoad(ctx, "1", load("1"))  // a hit
	fmt.Println(u.Name, "queries:", queries)

	db["1"] = User{ID: 1, Name: "Ada Lovelace"} // write the source of truth,
	_ = users.Invalidate(ctx, "1")              // then invalidate
	u, _ = users.GetOrLoad(ctx, "1", load("1"))
	fmt.Println(u.Name, "queries:", queries)

	_, err = users.GetOrLoad(ctx, "2", load("2"))
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
