package main

import (
	"context"
	"net"
	"os"
	"testing"
	"time"
)

// The outage phase on the real PostgreSQL and Redis: after Redis was cut while users were
// updated, the plain Invalidate after commit leaves them stale, the outbox leaves none.
func TestOutagePhase(t *testing.T) {
	if testing.Short() {
		t.Skip("cuts Redis for a second, twice")
	}
	dsn := os.Getenv("CACHEASIDE_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	redisAddr := os.Getenv("CACHEASIDE_REDIS_ADDR")
	if redisAddr == "" {
		redisAddr = "127.0.0.1:6379"
	}
	for _, addr := range []string{"127.0.0.1:5432", redisAddr} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not answering: %v", addr, err)
			}
			t.Skipf("%s is not answering: %v", addr, err)
		}
		c.Close()
	}
	o := defaultOptions()
	o.databaseURL, o.redisURL, o.outage = dsn, "redis://"+redisAddr, time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	plain, err := outageRun(ctx, o, false, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	box, err := outageRun(ctx, o, true, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stale after recovery: plain Invalidate %d of %d, outbox %d (fresh %v after Redis returned)", plain.Stale, outageUsers, box.Stale, box.Converged)
	if plain.Stale == 0 {
		t.Errorf("the plain Invalidate left no stale user: did the cut happen?")
	}
	if box.Stale != 0 {
		t.Errorf("the outbox left %d stale users %v after Redis returned", box.Stale, box.Settle)
	}
}
