package main

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// localRedisAddr is where make test finds its Redis; the demo uses it too when it answers.
const localRedisAddr = "127.0.0.1:6379"

// chooseRedis puts the cache on the Redis at localRedisAddr when one answers PING and neither
// REDIS_URL, -memory-cache nor -embedded-redis says otherwise, and notes which store the
// cache runs on, for the report.
func chooseRedis(o *options) {
	switch {
	case o.memoryCache:
		o.redisNote = "process memory (MemoryStore, -memory-cache)"
	case o.redisURL != "":
		o.redisNote = "the Redis of REDIS_URL"
	case !o.embeddedRedis && pings(localRedisAddr):
		o.redisURL = "redis://" + localRedisAddr
		o.redisNote = "the real Redis on " + localRedisAddr + " (it answered PING; -embedded-redis for miniredis)"
	default:
		o.redisNote = "the embedded miniredis (no Redis answered on " + localRedisAddr + "): it runs each " +
			"Lua script in a fresh interpreter, so latencies with the cache are mostly the emulator's, not the library's"
	}
}

// pings reports whether a Redis answers PING at addr within half a second.
func pings(addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	defer c.Close()
	return c.Ping(ctx).Err() == nil
}
