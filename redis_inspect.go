package cacheaside

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

var _ InspectStore = (*RedisStore)(nil)

// inspectScript reads a key's entry and writes nothing: {kind, value|false, pttl, leaseLeftMs}
// where kind is 0 (no key), 1 (an entry hash) or 2 (a key of another type: foreign). A lease
// on a present value ends at "e" (server time); a bare lease ends with its key (see
// redis_store.go).
var inspectScript = redis.NewScript(`
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then return {0, false, pttl, 0} end
local r = redis.pcall('HMGET', KEYS[1], 'v', 't', 'e')
if r.err then return {2, false, pttl, 0} end
local left = 0
if r[2] then
  if not r[1] then
    left = pttl
  else
    local now = redis.call('TIME')
    local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    left = math.max((tonumber(r[3]) or 0) - ms, 0)
  end
end
return {1, r[1], pttl, left}
`)

// Inspect implements InspectStore with one read-only script on the key (one round trip; a
// single hash slot, so it works on Cluster).
func (s *RedisStore) Inspect(ctx context.Context, key string) (StoreEntry, error) {
	return guard(ctx, s.trusted, func(ctx context.Context) (StoreEntry, error) {
		reply, err := inspectScript.Run(ctx, s.client, []string{key}).Slice()
		if err != nil {
			return StoreEntry{}, err
		}
		if len(reply) != 4 {
			return StoreEntry{}, fmt.Errorf("cacheaside: unexpected inspect reply: %d elements", len(reply))
		}
		kind, _ := reply[0].(int64)
		pttl, _ := reply[2].(int64)
		left, _ := reply[3].(int64)
		var e StoreEntry
		switch kind {
		case 0:
			return e, nil
		case 2:
			e.Foreign = true
		}
		switch {
		case pttl >= 0:
			e.TTL = time.Duration(pttl) * time.Millisecond
			if e.TTL == 0 {
				e.TTL = time.Nanosecond // present, expiring now: not "nothing there"
			}
		default:
			e.TTL = -1 // no expiry
		}
		if v, ok := reply[1].(string); ok {
			e.Value = []byte(v)
		}
		if left > 0 {
			e.Lease, e.LeaseTTL = true, time.Duration(left)*time.Millisecond
		}
		return e, nil
	})
}
