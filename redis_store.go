package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cacheaside/cacheaside/internal/slot"
	"github.com/redis/go-redis/v9"
)

var (
	_ Store            = (*RedisStore)(nil)
	_ ReleaseManyStore = (*RedisStore)(nil)
	_ LeaseManyStore   = (*RedisStore)(nil)
	_ ValueBytesStore  = (*RedisStore)(nil)
	_ ValueReader      = (*RedisStore)(nil)
	_ WakingStore      = (*RedisStore)(nil)
)

// RedisStore keeps entries in Redis: standalone, Sentinel (a failover client), Cluster or
// Ring, through any redis.UniversalClient.
//
// Each entry is one hash at the cache key, with the encoded value in field "v" and the lease
// token in field "t" (and its expiry, server time, in "e" when it guards a refresh of a
// present value; "w" when another caller waits for the lease's fill, see wake.go). A hit is
// a plain HGET of "v" (a Cache sends the read-or-lease script first only after recent misses:
// lookup.go). Every read-or-lease, fill and release is one Lua script on one key, so
// every script touches a single hash slot and works on Cluster; a batch runs the same Lua
// definition of each operation (redis_lease.go) for many keys in one script call per hash slot (per up to 256 keys on a standalone or
// Sentinel server), all calls in one pipeline: one round trip per node. A batch read first
// reads the values with plain pipelined HGETs and runs the script for the misses only: one
// round trip per node when every key is a hit, two with misses (see redis_batch.go).
// Expiry of values and of
// leases is Redis's (PEXPIRE and the server's TIME); client clocks never decide who holds a
// lease.
//
// Bounding time: go-redis honours a context's deadline only on clients built with
// ContextTimeoutEnabled. For any other client (the default), each operation runs on its own
// goroutine and the caller leaves at the deadline Cache gives it (WithStoreTimeout), so a
// hung Redis costs callers at most that timeout. Build the client with
// ContextTimeoutEnabled: true to skip the goroutine (a hit then runs on the caller's
// goroutine, with no timer of its own: storebound.go); the hand-over to it and back made a
// loopback hit 1.32x a GET + decode on the same client, against 1.06x without (README:
// Benchmarks).
type RedisStore struct {
	client     redis.UniversalClient
	trusted    bool // the client enforces context deadlines itself
	standalone bool // one server (or a Sentinel failover client): a script may take any keys
	cluster    *redis.ClusterClient
	ring       *redis.Ring
	pubsub     pubsubTiming // invalidation subscriber's liveness (broadcast_redis.go); zero: defaults

	// Batch reads (redis_batch.go): the recent share of misses, which picks the path, unless
	// tests force one with batchPath.
	batchMisses missRatio
	batchPath   int
}

// RedisOption configures a RedisStore.
type RedisOption func(*RedisStore)

// WithContextDeadlines says whether the client enforces context deadlines on its network I/O
// (redis.Options.ContextTimeoutEnabled). When it does, operations run on the caller's
// goroutine. Default: read from the client's options for *redis.Client and
// *redis.ClusterClient, false for any other client.
func WithContextDeadlines(enforced bool) RedisOption {
	return func(s *RedisStore) { s.trusted = enforced }
}

// NewRedisStore returns a Store over client. The store does not own the client: closing the
// Cache leaves it open.
func NewRedisStore(client redis.UniversalClient, opts ...RedisOption) *RedisStore {
	s := &RedisStore{client: client}
	switch c := client.(type) {
	case *redis.Client:
		s.trusted = c.Options().ContextTimeoutEnabled
		s.standalone = true
	case *redis.ClusterClient:
		s.trusted = c.Options().ContextTimeoutEnabled
		s.cluster = c
	case *redis.Ring:
		s.ring = c
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Replies of the lookup scripts (redis_lease.go): 1, value | 2, holder, holderTTLms | 3
// granted. The single-key scripts answer a hit with the bare value (a bulk string, no array
// for the client to build and copy) and a grant with the bare integer 3.
const (
	replyValue   = 1
	replyHeld    = 2
	replyGranted = 3
)

// Deletes a key and returns 1 if it held a value (or was not a hash at all), 0 for a bare lease.
// A tag's set (redis_tags.go) is not an entry: it stays, and counts 0.
var deleteCountScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok == 'zset' then return 0 end
local r = redis.pcall('HEXISTS', KEYS[1], 'v')
local n = 0
if type(r) == 'table' then
  n = redis.call('EXISTS', KEYS[1])
elseif r == 1 then
  n = 1
end
redis.call('UNLINK', KEYS[1])
return n
`)

// guard runs f within ctx's deadline even when the client ignores deadlines (see RedisStore).
func guard[R any](ctx context.Context, trusted bool, f func(context.Context) (R, error)) (R, error) {
	if _, ok := ctx.Deadline(); trusted || !ok {
		return f(ctx)
	}
	type result struct {
		r   R
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := f(ctx)
		ch <- result{r, err}
	}()
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		var zero R
		return zero, context.Cause(ctx)
	}
}

func ms(d time.Duration) int64 {
	m := d.Milliseconds()
	if m < 1 {
		m = 1
	}
	return m
}

// ImmutableReads implements ValueBytesStore: every reply is built for its read.
func (s *RedisStore) ImmutableReads() bool { return true }

// KeepsWrites implements ValueBytesStore: values are sent to Redis, not kept.
func (s *RedisStore) KeepsWrites() bool { return false }

// GetOrLease implements Store.
func (s *RedisStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	if !s.guarded(ctx) {
		return parseLookup(s.evalKey(ctx, getOrLeaseScript, key, token, ms(leaseTTL)))
	}
	return guard(ctx, false, func(ctx context.Context) (Lookup, error) {
		return parseLookup(s.evalKey(ctx, getOrLeaseScript, key, token, ms(leaseTTL)))
	})
}

// guarded reports whether a call with ctx must run under guard: its deadline is not enforced
// by the client. A call that need not goes straight to the client, with no closure.
func (s *RedisStore) guarded(ctx context.Context) bool {
	_, ok := ctx.Deadline()
	return ok && !s.trusted
}

// ReadValue implements ValueReader (lookup.go) with HGET: no script, no lease.
func (s *RedisStore) ReadValue(ctx context.Context, key string) ([]byte, error) {
	if _, ok := ctx.Deadline(); s.trusted || !ok {
		return s.hget(ctx, key)
	}
	return guard(ctx, false, func(ctx context.Context) ([]byte, error) { return s.hget(ctx, key) })
}

func (s *RedisStore) hget(ctx context.Context, key string) ([]byte, error) {
	cmd := redis.NewStringCmd(ctx, "hget", key, "v") // HGet would box the field too
	_ = s.client.Process(ctx, cmd)
	v, err := cmd.Result()
	switch {
	case err == nil:
		return stringBytes(v), nil
	case errors.Is(err, redis.Nil), isWrongType(err):
		return nil, nil // no value; not a hash: the read-or-lease deletes it
	}
	return nil, err
}

// stringBytes returns the bytes of a reply string without copying them: go-redis builds each
// reply string from its own read (it is never shared or modified), and the Cache never
// modifies the bytes of a read (ImmutableReads).
func stringBytes(s string) []byte {
	if s == "" {
		return []byte{} // an empty value is a value (bad data, replaced), not "none"
	}
	return unsafe.Slice(unsafe.StringData(s), len(s)) //nolint:gosec // read-only, see above
}

// Lease implements Store.
func (s *RedisStore) Lease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	return guard(ctx, s.trusted, func(ctx context.Context) (Lookup, error) {
		return parseLookup(s.evalKey(ctx, leaseScript, key, token, ms(leaseTTL)))
	})
}

// parseLookup reads a reply of getOrLeaseScript or leaseScript: a bare value, a bare 3, or an
// array.
func parseLookup(cmd *redis.Cmd) (Lookup, error) {
	r, err := cmd.Result()
	if err != nil {
		return Lookup{}, err
	}
	switch r := r.(type) {
	case string:
		return Lookup{Value: stringBytes(r)}, nil
	case int64:
		if r == replyGranted {
			return Lookup{Granted: true}, nil
		}
		return Lookup{}, fmt.Errorf("cacheaside: unexpected script reply: %d", r)
	case []any:
		return parseLookupArray(r)
	}
	return Lookup{}, fmt.Errorf("cacheaside: unexpected script reply type %T", r)
}

func parseLookupArray(reply []any) (Lookup, error) {
	if len(reply) == 0 {
		return Lookup{}, errors.New("cacheaside: empty script reply")
	}
	code, _ := reply[0].(int64)
	switch {
	case code == replyValue && len(reply) == 2:
		v, ok := reply[1].(string)
		if !ok {
			return Lookup{}, fmt.Errorf("cacheaside: unexpected value type %T in a script reply", reply[1])
		}
		return Lookup{Value: stringBytes(v)}, nil
	case code == replyHeld && len(reply) == 3:
		h, _ := reply[1].(string)
		ttl, _ := reply[2].(int64)
		return Lookup{Holder: h, HolderTTL: time.Duration(max(ttl, 0)) * time.Millisecond}, nil
	case code == replyGranted:
		return Lookup{Granted: true}, nil
	}
	// Never the reply itself: it may hold a value, and store errors are logged.
	return Lookup{}, fmt.Errorf("cacheaside: unexpected script reply: code %d, %d elements", code, len(reply))
}

// evalKey runs script on key with args, as Script.Run does (EVALSHA, then EVAL if the server
// lacks the script), but builds the command's arguments in one slice of its own: no key
// slice and no second argument slice.
func (s *RedisStore) evalKey(ctx context.Context, script *redis.Script, key string, args ...any) *redis.Cmd {
	a := make([]any, 4+len(args))
	a[0], a[1], a[2], a[3] = "evalsha", script.Hash(), 1, key
	copy(a[4:], args)
	cmd := redis.NewCmd(ctx, a...)
	cmd.SetFirstKeyPos(3) // Cluster routes it by the key
	_ = s.client.Process(ctx, cmd)
	if isNoScript(cmd.Err()) {
		return script.Eval(ctx, s.client, []string{key}, a[4:]...)
	}
	return cmd
}

// pipelineScript runs script n times in one pipeline, and reloads it and retries the commands
// that found it missing (NOSCRIPT after a restart or on a node that never saw it).
func (s *RedisStore) pipelineScript(ctx context.Context, script *redis.Script, n int, args func(i int) ([]string, []any)) ([]*redis.Cmd, error) {
	run := func(idx []int) ([]*redis.Cmd, error) {
		pipe := s.client.Pipeline()
		cmds := make([]*redis.Cmd, len(idx))
		for j, i := range idx {
			k, a := args(i)
			cmds[j] = script.EvalSha(ctx, pipe, k, a...)
		}
		_, err := pipe.Exec(ctx)
		if err != nil && !errors.Is(err, redis.Nil) && !isNoScript(err) {
			return nil, err
		}
		return cmds, nil
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	cmds, err := run(all)
	if err != nil {
		return nil, err
	}
	var missing []int
	for i, c := range cmds {
		if isNoScript(c.Err()) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		if err := script.Load(ctx, s.client).Err(); err != nil {
			return nil, err
		}
		again, err := run(missing)
		if err != nil {
			return nil, err
		}
		for j, i := range missing {
			cmds[i] = again[j]
		}
	}
	return cmds, nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// Fill implements Store.
func (s *RedisStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	if !s.guarded(ctx) {
		return s.fill(ctx, key, token, value, ttl)
	}
	return guard(ctx, false, func(ctx context.Context) (bool, error) { return s.fill(ctx, key, token, value, ttl) })
}

func (s *RedisStore) fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	n, err := s.evalKey(ctx, fillScript, key, token, value, ms(ttl), WakeChannel).Int()
	return n == 1, err
}

// Release implements Store.
func (s *RedisStore) Release(ctx context.Context, key, token string) (bool, error) {
	return guard(ctx, s.trusted, func(ctx context.Context) (bool, error) {
		n, err := s.evalKey(ctx, releaseScript, key, token, WakeChannel).Int()
		return n == 1, err
	})
}

// Delete implements Store. On a standalone or Sentinel client it is one UNLINK; on Cluster,
// one UNLINK per hash slot, pipelined, so one round trip per node.
func (s *RedisStore) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := guard(ctx, s.trusted, func(ctx context.Context) (struct{}, error) {
		switch {
		case s.cluster != nil:
			bySlot := make(map[int][]string)
			for _, k := range keys {
				sl := slot.Of(k)
				bySlot[sl] = append(bySlot[sl], k)
			}
			pipe := s.client.Pipeline()
			for _, ks := range bySlot {
				pipe.Unlink(ctx, ks...)
			}
			_, err := pipe.Exec(ctx)
			return struct{}{}, err
		case s.ring != nil:
			pipe := s.client.Pipeline()
			for _, k := range keys {
				pipe.Unlink(ctx, k)
			}
			_, err := pipe.Exec(ctx)
			return struct{}{}, err
		default:
			return struct{}{}, s.client.Unlink(ctx, keys...).Err()
		}
	})
	return err
}

// DeletePattern implements Store with SCAN (never KEYS) on every master (every shard of a
// Ring), deleting each page of matches in one pipeline.
func (s *RedisStore) DeletePattern(ctx context.Context, pattern string) (int, error) {
	return guard(ctx, s.trusted, func(ctx context.Context) (int, error) {
		var total int
		var mu sync.Mutex
		scan := func(ctx context.Context, c *redis.Client) error {
			var cursor uint64
			for {
				keys, next, err := c.Scan(ctx, cursor, pattern, 512).Result()
				if err != nil {
					return err
				}
				if len(keys) > 0 {
					n, err := deleteCounting(ctx, c, keys)
					if err != nil {
						return err
					}
					mu.Lock()
					total += n
					mu.Unlock()
				}
				if next == 0 {
					return nil
				}
				cursor = next
			}
		}
		var err error
		switch {
		case s.cluster != nil:
			err = s.cluster.ForEachMaster(ctx, scan)
		case s.ring != nil:
			err = s.ring.ForEachShard(ctx, scan)
		default:
			c, ok := s.client.(*redis.Client)
			if !ok {
				return 0, fmt.Errorf("unsupported client type %T", s.client)
			}
			err = scan(ctx, c)
		}
		return total, err
	})
}

func deleteCounting(ctx context.Context, c *redis.Client, keys []string) (int, error) {
	s := &RedisStore{client: c, trusted: true}
	cmds, err := s.pipelineScript(ctx, deleteCountScript, len(keys), func(i int) ([]string, []any) {
		return []string{keys[i]}, nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range cmds {
		v, err := c.Int()
		if err != nil {
			return n, err
		}
		n += v
	}
	return n, nil
}

// Ping implements Store. On Cluster it pings every master.
func (s *RedisStore) Ping(ctx context.Context) error {
	_, err := guard(ctx, s.trusted, func(ctx context.Context) (struct{}, error) {
		if s.cluster != nil {
			return struct{}{}, s.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
				return c.Ping(ctx).Err()
			})
		}
		return struct{}{}, s.client.Ping(ctx).Err()
	})
	return err
}
