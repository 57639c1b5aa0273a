package cacheaside

import (
	"context"
	"fmt"
	"strconv"

	"time"

	"github.com/redis/go-redis/v9"
)

var _ TagStore = (*RedisStore)(nil)

// A tag's index is a sorted set at the tag's name (which the Cache prefixes like its keys:
// prefix + "\x00tag:" + tag), one member per key, scored by the record's expiry in the
// server's milliseconds. The score is also the record's version: a new record of a key scores
// at least one more than its last, so RemoveTags can tell a record made since TaggedKeys read
// it. Expired members are dropped by every AddTags and TaggedKeys of the tag, and the set
// itself expires with its last member. Each script touches one tag's set: on Cluster a
// batch's tags are pipelined, one round trip per node. DeletePattern leaves the sets alone.

// KEYS[1] the tag's set; ARGV[1] the life in ms; ARGV[2..] the keys.
var addTagsScript = redis.NewScript(`
local ty = redis.call('TYPE', KEYS[1]).ok
if ty ~= 'zset' and ty ~= 'none' then redis.call('DEL', KEYS[1]) end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local exp = now + tonumber(ARGV[1])
local top = exp
for i = 2, #ARGV do
  local s = exp
  local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if old and old >= s then s = old + 1 end
  redis.call('ZADD', KEYS[1], string.format('%d', s), ARGV[i])
  if s > top then top = s end
end
if redis.call('PTTL', KEYS[1]) < top - now then
  redis.call('PEXPIRE', KEYS[1], string.format('%d', top - now))
end
return 1
`)

// KEYS[1] the tag's set: its live members, with their scores.
var taggedKeysScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then return {} end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
`)

// KEYS[1] the tag's set; ARGV pairs of key, version: each removed if still at that version.
var removeTagsScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then return 0 end
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
`)

// tagScriptKeys is the most keys one AddTags or RemoveTags script call carries; larger sets
// are split into several calls in the same pipeline.
const tagScriptKeys = 512

// tagCall is one script call on one tag's set.
type tagCall struct {
	tag  string
	args []any
}

// AddTags implements TagStore: one script per tag (per 512 keys), all in one pipeline.
func (s *RedisStore) AddTags(ctx context.Context, tagged map[string][]string, life time.Duration) error {
	var calls []tagCall
	for tag, keys := range tagged {
		for lo := 0; lo < len(keys); lo += tagScriptKeys {
			chunk := keys[lo:min(lo+tagScriptKeys, len(keys))]
			args := make([]any, 0, len(chunk)+1)
			args = append(args, ms(life))
			for _, k := range chunk {
				args = append(args, k)
			}
			calls = append(calls, tagCall{tag, args})
		}
	}
	_, err := s.runTagCalls(ctx, addTagsScript, calls)
	return err
}

// TaggedKeys implements TagStore: one script per tag, all in one pipeline.
func (s *RedisStore) TaggedKeys(ctx context.Context, tags []string) ([][]TaggedKey, error) {
	calls := make([]tagCall, len(tags))
	for i, t := range tags {
		calls[i] = tagCall{tag: t}
	}
	cmds, err := s.runTagCalls(ctx, taggedKeysScript, calls)
	if err != nil {
		return nil, err
	}
	out := make([][]TaggedKey, len(tags))
	for i, cmd := range cmds {
		reply, err := cmd.StringSlice()
		if err != nil {
			return nil, err
		}
		if len(reply)%2 != 0 {
			return nil, fmt.Errorf("cacheaside: tagged keys: odd reply of %d elements", len(reply))
		}
		tks := make([]TaggedKey, 0, len(reply)/2)
		for j := 0; j < len(reply); j += 2 {
			v, err := strconv.ParseFloat(reply[j+1], 64)
			if err != nil {
				return nil, fmt.Errorf("cacheaside: tagged keys: bad score: %w", err)
			}
			tks = append(tks, TaggedKey{Key: reply[j], Version: int64(v)})
		}
		out[i] = tks
	}
	return out, nil
}

// RemoveTags implements TagStore: one script per tag (per 512 keys), all in one pipeline.
func (s *RedisStore) RemoveTags(ctx context.Context, tagged map[string][]TaggedKey) error {
	var calls []tagCall
	for tag, tks := range tagged {
		for lo := 0; lo < len(tks); lo += tagScriptKeys {
			chunk := tks[lo:min(lo+tagScriptKeys, len(tks))]
			args := make([]any, 0, 2*len(chunk))
			for _, tk := range chunk {
				args = append(args, tk.Key, tk.Version)
			}
			calls = append(calls, tagCall{tag, args})
		}
	}
	_, err := s.runTagCalls(ctx, removeTagsScript, calls)
	return err
}

// runTagCalls runs script once per call, in one pipeline, and fails if any call failed.
func (s *RedisStore) runTagCalls(ctx context.Context, script *redis.Script, calls []tagCall) ([]*redis.Cmd, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	return guard(ctx, s.trusted, func(ctx context.Context) ([]*redis.Cmd, error) {
		cmds, err := s.pipelineScript(ctx, script, len(calls), func(i int) ([]string, []any) {
			return []string{calls[i].tag}, calls[i].args
		})
		if err != nil {
			return nil, err
		}
		for _, c := range cmds {
			if err := c.Err(); err != nil {
				return nil, err
			}
		}
		return cmds, nil
	})
}
