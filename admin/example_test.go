package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/admin"
)

// Mount the operator page beside the application's handlers, with the caches to show.
func Example() {
	store := cacheaside.NewMemoryStore()
	defer store.Close()
	users, err := cacheaside.New[string](store, cacheaside.WithPrefix("user:"))
	if err != nil {
		panic(err)
	}
	defer users.Close()
	_, _ = users.GetOrLoad(context.Background(), "42", func(context.Context) (string, error) { return "Ada", nil })

	ops := admin.New() // admin.WithValues(true) to show values to operators
	if err := ops.Register("users", users); err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle(ops.Path(), ops) // in production, behind your operators' authentication

	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/debug/cacheaside/key?cache=users&key=42")
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	// Output: 200 OK
}
