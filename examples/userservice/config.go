package userservice

import (
	"log/slog"
	"os"
	"time"
)

// Config says where the service keeps its data and how it caches it. The zero Config runs on
// the embedded defaults: SQLite in a temporary file and an in-process miniredis.
type Config struct {
	// DatabaseURL is a PostgreSQL URL (postgres://user@host:5432/db). Empty: an embedded
	// SQLite database (modernc.org/sqlite, pure Go) in a temporary directory, removed on
	// Close.
	DatabaseURL string
	// RedisURL is a Redis URL (redis://[:password@]host:6379/0), parsed by redis.ParseURL.
	// Empty: an embedded miniredis on a loopback port. It is never logged: it may hold a
	// password.
	RedisURL string

	// MemoryCache keeps the cache in process memory (cacheaside.NewMemoryStore) instead of
	// Redis: for a single process, where it spares a network round trip per read; RedisURL is
	// then ignored. Several processes need Redis to share one cache and its leases.
	MemoryCache bool

	// StoreTimeout bounds each cache store operation; past it the read goes to the database
	// (the cache fails open). Default: the library's (cacheaside.DefaultStoreTimeout) for a
	// real Redis; 1 second for the embedded miniredis, which interprets each Lua script in a
	// fresh interpreter and answers in milliseconds on a busy machine.
	StoreTimeout time.Duration

	// InvalidateTimeout bounds the Invalidate after each committed write, retries included
	// (cacheaside.WithInvalidateTimeout): a busy store is retried within it, a store that is
	// down costs each write at most this. Default: 1 second.
	InvalidateTimeout time.Duration

	// Table is the users table, created if missing. Default: "users".
	Table string
	// CachePrefix namespaces the service's cache keys in Redis. Default: "userservice:user:".
	CachePrefix string
	// CacheTTL is the lifetime of a cached user. Default: 5 minutes.
	CacheTTL time.Duration
	// NoCache makes every read go to the database: the baseline the demo compares with.
	NoCache bool
	// NoOutbox makes writes on PostgreSQL invalidate after commit, as on SQLite, instead of
	// through the transactional outbox: the baseline the demo's outage phase compares with.
	NoOutbox bool
	// DBLatency is added to every database query: it stands for a database across a network
	// and under load, for the demo's embedded SQLite, which answers in microseconds.
	// Default: 0.
	DBLatency time.Duration
	// Ephemeral makes the service drop its table and delete its cache keys on Close (tests
	// and the demo, on real servers).
	Ephemeral bool

	// Logger receives the service's logs. Default: slog.Default().
	Logger *slog.Logger
}

// ConfigFromEnv returns the Config that DATABASE_URL and REDIS_URL describe; unset, the
// embedded defaults.
func ConfigFromEnv() Config {
	return Config{DatabaseURL: os.Getenv("DATABASE_URL"), RedisURL: os.Getenv("REDIS_URL")}
}

func (c Config) withDefaults() Config {
	if c.Table == "" {
		c.Table = "users"
	}
	if c.CachePrefix == "" {
		c.CachePrefix = "userservice:user:"
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
