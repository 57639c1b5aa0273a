package main

// The outage phase (-outage d, on PostgreSQL): Redis is cut for d while every user of a small
// set is updated, once with the plain Invalidate after commit and once through the
// transactional outbox (package outbox); after Redis is back, the phase reads every user and
// counts those the cache still serves in their old version.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/cacheaside/cacheaside/examples/userservice"
	"github.com/cacheaside/cacheaside/internal/faultproxy"
	"github.com/redis/go-redis/v9"
)

// outageUsers is how many users the outage phase updates during the cut.
const outageUsers = 20

// outageResult is one run of the outage phase.
type outageResult struct {
	Outbox    bool
	Stale     int           // users served in their old version after the settle time
	Converged time.Duration // after Redis came back, until no user was stale; -1 if never
	Settle    time.Duration // how long the phase waited
}

// runOutage runs the phase without then with the outbox and prints what it found.
func runOutage(ctx context.Context, o options, w io.Writer) error {
	if o.databaseURL == "" {
		fmt.Fprintln(w, "\nOutage phase: skipped, the transactional outbox needs PostgreSQL (DATABASE_URL).")
		return nil
	}
	fmt.Fprintf(w, "\nOutage phase: Redis cut for %v while %d users are updated (PostgreSQL), then every user read:\n", o.outage, outageUsers)
	for _, withOutbox := range []bool{false, true} {
		r, err := outageRun(ctx, o, withOutbox, 8*time.Second)
		if err != nil {
			return err
		}
		how := "Invalidate after commit"
		if withOutbox {
			how = "transactional outbox   "
		}
		switch {
		case r.Converged >= 0:
			fmt.Fprintf(w, "  %s  stale reads after recovery: %d of %d (all fresh %v after Redis returned)\n", how, r.Stale, outageUsers, r.Converged.Round(10*time.Millisecond))
		default:
			fmt.Fprintf(w, "  %s  stale reads after recovery: %d of %d (still after %v: they live until the TTL)\n", how, r.Stale, outageUsers, r.Settle)
		}
	}
	return nil
}

// outageRun runs the phase once, waiting up to settle after Redis returns for every user to
// be read fresh.
func outageRun(ctx context.Context, o options, withOutbox bool, settle time.Duration) (*outageResult, error) {
	upstream := ""
	if o.redisURL != "" {
		ro, err := redis.ParseURL(o.redisURL)
		if err != nil {
			return nil, errors.New("REDIS_URL is not a valid redis:// URL")
		}
		if ro.Password != "" || ro.Username != "" || ro.DB != 0 {
			return nil, errors.New("the outage phase takes a REDIS_URL without credentials or database number")
		}
		upstream = ro.Addr
	} else {
		mini := miniredis.NewMiniRedis()
		if err := mini.Start(); err != nil {
			return nil, err
		}
		defer mini.Close()
		upstream = mini.Addr()
	}
	proxy, err := faultproxy.New(upstream)
	if err != nil {
		return nil, err
	}
	defer proxy.Close()
	redisURL := "redis://" + proxy.Addr()
	id := make([]byte, 4)
	rand.Read(id)
	run := hex.EncodeToString(id)
	svc, err := userservice.New(ctx, userservice.Config{
		DatabaseURL:  o.databaseURL,
		RedisURL:     redisURL,
		Table:        "demo_outage_" + run,
		CachePrefix:  "cacheaside-demo-outage-" + run + ":",
		NoOutbox:     !withOutbox,
		StoreTimeout: 100 * time.Millisecond,
		// Writes during the cut must not each wait the default second for Redis.
		InvalidateTimeout: 100 * time.Millisecond,
		Ephemeral:         true,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, err
	}
	defer svc.Close()
	if err := svc.Seed(ctx, outageUsers); err != nil {
		return nil, err
	}
	// The reads go through a second instance of the service (another process): the writer's
	// own cache instance remembers the keys whose Invalidate failed, another process cannot.
	reader, err := userservice.New(ctx, userservice.Config{
		DatabaseURL:  o.databaseURL,
		RedisURL:     redisURL,
		Table:        "demo_outage_" + run,
		CachePrefix:  "cacheaside-demo-outage-" + run + ":",
		NoOutbox:     true, // the writer's relay delivers
		StoreTimeout: 100 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, err
	}
	defer reader.Close() // before the writer, which drops the table
	repo, reads := svc.Repository(), reader.Repository()
	for i := int64(1); i <= outageUsers; i++ { // cache version 1 of every user
		if _, err := reads.Get(ctx, i); err != nil {
			return nil, err
		}
	}
	proxy.Blackhole(true)
	cut := time.Now()
	for i := int64(1); i <= outageUsers; i++ {
		if _, err := repo.Put(ctx, userservice.User{ID: i, Name: "after-the-cut", Email: "u@example.com"}); err != nil {
			proxy.Blackhole(false)
			return nil, err
		}
	}
	if rest := o.outage - time.Since(cut); rest > 0 {
		time.Sleep(rest)
	}
	proxy.DropAll() // what the cut held is lost, as when a network partition ends
	proxy.Blackhole(false)
	back := time.Now()

	res := &outageResult{Outbox: withOutbox, Converged: -1, Settle: settle}
	for {
		stale := 0
		for i := int64(1); i <= outageUsers; i++ {
			u, err := reads.Get(ctx, i)
			if err != nil {
				return nil, err
			}
			if u.Version < 2 {
				stale++
			}
		}
		res.Stale = stale
		if stale == 0 {
			res.Converged = time.Since(back)
			return res, nil
		}
		if time.Since(back) > res.Settle {
			return res, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}
