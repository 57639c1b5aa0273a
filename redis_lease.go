package cacheaside

import "github.com/redis/go-redis/v9"

// The lease protocol in Redis: one Lua definition per operation, on one key, shared by the
// single-key scripts (redis_store.go) and the batch scripts (redis_batch.go). Each script is
// the operation's definition followed by a short prologue that calls it: once, on KEYS[1], or
// for every key of KEYS in turn; a change to the protocol is made once and reaches both.
//
// An entry is one hash at its key: the value in field "v", the lease token in "t", the lease's
// end (server time, ms) in "e" when it guards the refresh of a present value (a bare lease ends
// with its key), and "w" when a caller waits for the lease's fill: the fill or release then
// publishes the key on the channel it is given (WakeChannel: wake.go). A key that is not a hash
// (garbage written by someone else) is deleted and treated as empty. A fill overwrites "v" and
// drops the lease fields rather than deleting the key first: a script may not write a key it
// deleted while its slot migrates (Cluster).
//
// The lookups (getOrLease, lease) return code, a, b: 1, value | 2, holder, holderTTLms | 3
// (granted); fill and release return 1 (stored; the token held the lease) or 0.

// luaNow is the server's time in ms, read at most once per script call.
const luaNow = `
local nowMs
local function now()
  if not nowMs then
    local t = redis.call('TIME')
    nowMs = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return nowMs
end
`

// luaGetOrLease returns the value, or the live lease's holder, or grants the lease to tok for
// ttl ms.
const luaGetOrLease = `
local function op(k, tok, ttl)
  local r = redis.pcall('HMGET', k, 'v', 't', 'w')
  if r.err then
    redis.call('DEL', k)
    r = {false, false, false}
  end
  if r[1] then return 1, r[1] end
  if r[2] then
    if not r[3] then redis.call('HSET', k, 'w', '1') end
    return 2, r[2], redis.call('PTTL', k)
  end
  redis.call('HSET', k, 't', tok)
  redis.call('PEXPIRE', k, ttl)
  return 3
end
`

// luaLease grants the lease to tok for ttl ms whether or not the key holds a value, unless
// another live lease is held (then it returns the holder). The value stays until a fill.
const luaLease = luaNow + `
local function op(k, tok, ttl)
  local r = redis.pcall('HMGET', k, 'v', 't', 'e', 'w')
  if r.err then
    redis.call('DEL', k)
    r = {false, false, false, false}
  end
  if r[2] then
    local left
    if not r[1] then
      left = redis.call('PTTL', k)
    else
      left = (tonumber(r[3]) or 0) - now()
    end
    if left > 0 or not r[1] then
      if not r[4] then redis.call('HSET', k, 'w', '1') end
      return 2, r[2], left
    end
  end
  redis.call('HSET', k, 't', tok, 'e', string.format('%d', now() + tonumber(ttl)))
  if not r[1] then redis.call('PEXPIRE', k, ttl) end
  return 3
end
`

// luaFill stores v for ttl ms if tok holds the key's live lease, ends the lease, and publishes
// the key on ch if someone waits.
const luaFill = luaNow + `
local function op(k, tok, v, ttl, ch)
  local r = redis.pcall('HMGET', k, 't', 'e', 'w')
  if r.err or r[1] ~= tok then return 0 end
  if r[2] and tonumber(r[2]) <= now() then return 0 end
  redis.call('HSET', k, 'v', v)
  redis.call('HDEL', k, 't', 'e', 'w')
  redis.call('PEXPIRE', k, ttl)
  if r[3] then redis.call('PUBLISH', ch, k) end
  return 1
end
`

// luaRelease ends tok's lease on the key if tok holds it (a bare lease goes with its key; a
// value stays), publishes the key on ch if someone waits, and returns 1 if the lease was live.
const luaRelease = luaNow + `
local function op(k, tok, ch)
  local r = redis.pcall('HMGET', k, 't', 'e', 'v', 'w')
  if r.err or r[1] ~= tok then return 0 end
  if r[4] then redis.call('PUBLISH', ch, k) end
  if not r[3] then
    redis.call('DEL', k)
    return 1
  end
  redis.call('HDEL', k, 't', 'e', 'w')
  if (tonumber(r[2]) or 0) <= now() then return 0 end
  return 1
end
`

// Prologues. ARGV of a lookup: token, lease TTL (ms). Its single-key reply is the bare value
// of a hit (a bulk string: no array for the client to build) or the bare 3 of a grant, else
// {2, holder, ttl}; its batch reply is each key's answer in order, flattened: 1, value |
// 2, holder, ttl | 3.
const (
	luaLookupOne = `
local c, a, b = op(KEYS[1], ARGV[1], ARGV[2])
if c == 1 then return a end
if c == 3 then return 3 end
return {c, a, b}
`
	luaLookupMany = `
local out, n = {}, 0
for i = 1, #KEYS do
  local c, a, b = op(KEYS[i], ARGV[1], ARGV[2])
  n = n + 1
  out[n] = c
  if c ~= 3 then
    n = n + 1
    out[n] = a
    if c == 2 then
      n = n + 1
      out[n] = b
    end
  end
end
return out
`
	// ARGV: token, value, TTL (ms), wake channel.
	luaFillOne = `
return op(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
`
	// ARGV: token, wake channel, then value and TTL (ms) of each key. Reply: a flag per key.
	luaFillMany = `
local out = {}
for i = 1, #KEYS do
  out[i] = op(KEYS[i], ARGV[1], ARGV[2 * i + 1], ARGV[2 * i + 2], ARGV[2])
end
return out
`
	// ARGV: token, wake channel.
	luaReleaseOne = `
return op(KEYS[1], ARGV[1], ARGV[2])
`
	// ARGV: token, wake channel. Reply: a flag per key.
	luaReleaseMany = `
local out = {}
for i = 1, #KEYS do
  out[i] = op(KEYS[i], ARGV[1], ARGV[2])
end
return out
`
)

// The scripts, each an operation's definition and one prologue.
var (
	getOrLeaseScript     = redis.NewScript(luaGetOrLease + luaLookupOne)
	getOrLeaseManyScript = redis.NewScript(luaGetOrLease + luaLookupMany)
	leaseScript          = redis.NewScript(luaLease + luaLookupOne)
	leaseManyScript      = redis.NewScript(luaLease + luaLookupMany)
	fillScript           = redis.NewScript(luaFill + luaFillOne)
	fillManyScript       = redis.NewScript(luaFill + luaFillMany)
	releaseScript        = redis.NewScript(luaRelease + luaReleaseOne)
	releaseManyScript    = redis.NewScript(luaRelease + luaReleaseMany)
)
