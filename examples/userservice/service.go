// Package userservice is an HTTP JSON service over a users table whose repository reads
// through a cacheaside.Cache and invalidates it after each write. It runs on PostgreSQL and
// Redis when given their URLs, else on an embedded SQLite database and an embedded miniredis,
// so that it starts with no setup at all.
//
//	GET    /users/{id}        a user, 404 if missing (the not-found is cached too)
//	PUT    /users/{id}        create or update {"name": ..., "email": ...}
//	DELETE /users/{id}        delete
//	GET    /users?ids=1,2,3   several users at once (one database query for the misses)
//	GET    /metrics           Prometheus metrics
//
// Start it in-process with New, serve Handler, and Close it; cmd/userservice is the program.
package userservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/cacheasideprom"
	"github.com/cacheaside/cacheaside/outbox"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Service is the users service: its database, its cache, and its HTTP handler.
type Service struct {
	cfg     Config
	db      *database
	redis   *redis.Client
	mini    *miniredis.Miniredis    // the embedded Redis, when no RedisURL is set
	memory  *cacheaside.MemoryStore // with Config.MemoryCache
	users   *cacheaside.Cache[User]
	box     *outbox.Outbox // on PostgreSQL with a cache: invalidations in the write's transaction
	repo    *Repository
	stats   *counters
	http    *httpMetrics
	handler http.Handler
	log     *slog.Logger
}

// New connects to (or starts) the database and Redis that cfg names, creates the users table
// if missing, and returns the service. Close releases everything it opened.
func New(ctx context.Context, cfg Config) (*Service, error) {
	cfg = cfg.withDefaults()
	s := &Service{cfg: cfg, stats: &counters{}, log: cfg.Logger}
	var err error
	if s.db, err = openDatabase(ctx, cfg, s.stats); err != nil {
		return nil, err
	}
	reg, hm := newRegistry(s.stats)
	if !cfg.NoCache {
		if err := s.openCache(ctx, reg); err != nil {
			s.Close()
			return nil, err
		}
	}
	if s.users != nil && s.db.kind == "PostgreSQL" && !cfg.NoOutbox {
		// The transactional outbox: a few lines, and no invalidation is lost to a crash after
		// commit or to a Redis outage (the outbox is PostgreSQL-only; SQLite keeps the plain
		// Invalidate after commit).
		s.box, err = outbox.New(s.db.db, outbox.WithTable(s.outboxTable()), outbox.WithCache("users", s.users),
			outbox.WithPrometheus(reg), outbox.WithLogger(s.log))
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	s.repo = &Repository{db: s.db, users: s.users, box: s.box, stats: s.stats, log: s.log}
	s.http = hm
	s.handler = s.routes(reg)
	return s, nil
}

func (s *Service) openCache(ctx context.Context, reg *prometheus.Registry) error {
	cacheOpts := []cacheaside.Option{
		cacheaside.WithPrefix(s.cfg.CachePrefix),
		cacheaside.WithTTL(s.cfg.CacheTTL),
		// The cache's own metrics on /metrics, labelled cache="users": requests by result
		// (hit, negative_hit, miss), loads, store errors and latency, lease waits.
		cacheasideprom.WithPrometheus(reg, "users"),
	}
	if s.cfg.MemoryCache {
		s.memory = cacheaside.NewMemoryStore()
		var err error
		s.users, err = cacheaside.New[User](s.memory, cacheOpts...)
		return err
	}
	var opts *redis.Options
	if s.cfg.RedisURL != "" {
		var err error
		if opts, err = redis.ParseURL(s.cfg.RedisURL); err != nil {
			// Not wrapped: the parse error can quote the URL, which can hold a password.
			return errors.New("userservice: REDIS_URL is not a valid redis:// URL")
		}
	} else {
		s.mini = miniredis.NewMiniRedis()
		if err := s.mini.Start(); err != nil {
			return fmt.Errorf("userservice: embedded miniredis: %w", err)
		}
		opts = &redis.Options{Addr: s.mini.Addr()}
	}
	// Deadlines on the socket, so the cache bounds each Redis call without a goroutine.
	opts.ContextTimeoutEnabled = true
	s.redis = redis.NewClient(opts)
	timeout := s.cfg.StoreTimeout
	if timeout == 0 && s.mini != nil {
		// miniredis runs every Lua script in a fresh interpreter: on a busy laptop it answers
		// in milliseconds, not the tens of microseconds of a real Redis. A longer store
		// timeout keeps the cache from failing open (to the database) on that alone.
		timeout = time.Second
	}
	if timeout > 0 {
		cacheOpts = append(cacheOpts, cacheaside.WithStoreTimeout(timeout), cacheaside.WithConnectTimeout(max(2*timeout, cacheaside.DefaultConnectTimeout)))
	}
	invalTimeout := s.cfg.InvalidateTimeout
	if invalTimeout == 0 {
		invalTimeout = time.Second
	}
	cacheOpts = append(cacheOpts, cacheaside.WithInvalidateTimeout(invalTimeout))
	var err error
	if s.users, err = cacheaside.New[User](cacheaside.NewRedisStore(s.redis), cacheOpts...); err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.redis.Ping(pctx).Err(); err != nil {
		// The cache fails open: the service works without Redis, on the database alone.
		s.log.Warn("Redis is not answering; reads go to the database until it does", "redis", s.cacheWhere(), "err", err)
	}
	return nil
}

func (s *Service) outboxTable() string { return s.cfg.Table + "_cache_outbox" }

// Outbox is the service's transactional outbox, nil unless it runs on PostgreSQL with a cache.
func (s *Service) Outbox() *outbox.Outbox { return s.box }

// Handler serves the service's HTTP API and /metrics.
func (s *Service) Handler() http.Handler { return s.handler }

// Repository is the service's cache-aside repository.
func (s *Service) Repository() *Repository { return s.repo }

// Stats returns the service's counters since it started.
func (s *Service) Stats() Stats { return s.stats.snapshot() }

// Describe says what the service runs on, without credentials.
func (s *Service) Describe() string {
	c := "no cache"
	if s.users != nil {
		c = s.cacheWhere()
	}
	if s.box != nil {
		c += ", invalidations through the transactional outbox"
	}
	return fmt.Sprintf("database %s, cache %s", s.db, c)
}

func (s *Service) cacheWhere() string {
	if s.memory != nil {
		return "process memory (MemoryStore)"
	}
	if s.mini != nil {
		return "miniredis (embedded)"
	}
	return "Redis (" + s.redis.Options().Addr + ")"
}

// Seed writes users 1..n (name "user-i") in one transaction and invalidates their cache
// entries.
func (s *Service) Seed(ctx context.Context, n int) error {
	users := make([]User, n)
	for i := range users {
		id := int64(i + 1)
		users[i] = User{ID: id, Name: "user-" + strconv.FormatInt(id, 10), Email: "user" + strconv.FormatInt(id, 10) + "@example.com"}
	}
	if err := s.db.seed(ctx, users); err != nil {
		return err
	}
	if s.users == nil {
		return nil
	}
	const chunk = 1000
	for i := 0; i < n; i += chunk {
		keys := make([]string, 0, chunk)
		for _, u := range users[i:min(i+chunk, n)] {
			keys = append(keys, userKey(u.ID))
		}
		if err := s.users.Invalidate(ctx, keys...); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the cache, Redis and the database; with Config.Ephemeral it first drops the
// table and deletes the service's cache keys.
func (s *Service) Close() error {
	var errs []error
	if s.box != nil {
		errs = append(errs, s.box.Close()) // before the cache it delivers to
	}
	if s.users != nil {
		if s.cfg.Ephemeral {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := s.users.InvalidatePattern(ctx, "*")
			cancel()
			errs = append(errs, err)
		}
		errs = append(errs, s.users.Close())
	}
	if s.redis != nil {
		errs = append(errs, s.redis.Close())
	}
	if s.memory != nil {
		errs = append(errs, s.memory.Close())
	}
	if s.mini != nil {
		s.mini.Close()
	}
	if s.db != nil {
		errs = append(errs, s.db.close(s.cfg.Ephemeral, s.outboxTable()))
	}
	return errors.Join(errs...)
}
