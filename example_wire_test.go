package cacheaside_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/codec/msgpack"
)

// Values with personal data are sealed with AES-256-GCM before they reach the store. Keys come
// from your secret manager; each has an id stored with the values it seals.
func ExampleWithEncryption() {
	key := make([]byte, cacheaside.KeySize) // from a secret manager, in real life
	_, _ = rand.Read(key)
	ring, err := cacheaside.NewKeyRing(1, key)
	if err != nil {
		panic(err)
	}
	users, err := cacheaside.New[User](cacheaside.NewMemoryStore(),
		cacheaside.WithEncryption(ring), cacheaside.WithCodec(msgpack.Codec{}))
	if err != nil {
		panic(err)
	}
	defer users.Close()

	u, _ := users.GetOrLoad(context.Background(), "1", func(context.Context) (User, error) {
		return User{ID: 1, Name: "Ada"}, nil
	})
	fmt.Println(u.Name, ring)

	// Rotation: add the new key everywhere, then make it the primary everywhere, then, once
	// the values sealed with the old one have expired, remove it.
	newKey := make([]byte, cacheaside.KeySize)
	_, _ = rand.Read(newKey)
	_ = ring.Add(2, newKey)
	_ = ring.Use(2)
	fmt.Println(ring)
	// Output:
	// Ada cacheaside.KeyRing{primary: 1, ids: [1]}
	// cacheaside.KeyRing{primary: 2, ids: [1 2]}
}

// A call can choose how long what it loads stays cached.
func ExampleTTL() {
	ctx := context.Background()
	pages, _ := cacheaside.New[[]byte](cacheaside.NewMemoryStore(), cacheaside.WithCodec(cacheaside.RawCodec{}))
	defer pages.Close()
	home, err := pages.GetOrLoad(ctx, "/", func(context.Context) ([]byte, error) {
		return []byte("<h1>home</h1>"), nil
	}, cacheaside.TTL(time.Hour))
	fmt.Println(string(home), err)
	// Output: <h1>home</h1> <nil>
}
