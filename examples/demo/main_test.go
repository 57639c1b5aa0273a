package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: the service closes its cache,
// database pool and servers when it stops.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-redis's connection reaper, kept for the process once a client has been made.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
	)
}
