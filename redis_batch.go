package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cacheaside/cacheaside/internal/slot"
	"github.com/redis/go-redis/v9"
)

// Batches on Redis. A batch read (GetOrLeaseMany) first reads every key's value with a plain
// HGET, pipelined, and runs the read-or-lease script only for the keys without one; the other
// batch operations are scripts. One script call covers many keys: every key of the batch on a standalone
// or Sentinel server (up to maxScriptKeys per call), the keys of one hash slot on Cluster (so
// never a CROSSSLOT error), one key on a Ring or any other client (a Ring picks its shard by key). The
// calls go in one pipeline: a batch of any size costs one round trip per node. Each key is
// handled by the same Lua definition as the single-key scripts (redis_lease.go), and a script
// runs atomically.

// maxScriptKeys bounds the keys of one script call, so that no call holds the server for long
// (a few hundred microseconds at most).
const maxScriptKeys = 256

// slotGroups splits a batch's keys into the groups one script call may cover: group g is
// order[ends[g-1]:ends[g]] (from 0 for g = 0); a nil order is the identity.
type slotGroups struct {
	order []int
	ends  []int
}

func (g slotGroups) len() int { return len(g.ends) }

func (g slotGroups) span(i int) (lo, hi int) {
	if i > 0 {
		lo = g.ends[i-1]
	}
	return lo, g.ends[i]
}

func (g slotGroups) index(j int) int {
	if g.order == nil {
		return j
	}
	return g.order[j]
}

// keys returns the keys of group i; for the identity order it is a subslice of keys.
func (g slotGroups) keys(i int, keys []string) []string {
	lo, hi := g.span(i)
	if g.order == nil {
		return keys[lo:hi]
	}
	out := make([]string, hi-lo)
	for j := range out {
		out[j] = keys[g.order[lo+j]]
	}
	return out
}

// group splits keys for this store's client.
func (s *RedisStore) group(keys []string) slotGroups {
	n := len(keys)
	switch {
	case s.cluster != nil:
		bySlot := make(map[int][]int)
		var slots []int
		for i, k := range keys {
			sl := slot.Of(k)
			if _, seen := bySlot[sl]; !seen {
				slots = append(slots, sl)
			}
			bySlot[sl] = append(bySlot[sl], i)
		}
		g := slotGroups{order: make([]int, 0, n), ends: make([]int, 0, len(slots))}
		for _, sl := range slots {
			for idx := bySlot[sl]; len(idx) > 0; {
				m := min(len(idx), maxScriptKeys)
				g.order = append(g.order, idx[:m]...)
				g.ends = append(g.ends, len(g.order))
				idx = idx[m:]
			}
		}
		return g
	case s.standalone:
		ends := make([]int, 0, (n+maxScriptKeys-1)/maxScriptKeys)
		for hi := maxScriptKeys; hi < n; hi += maxScriptKeys {
			ends = append(ends, hi)
		}
		return slotGroups{ends: append(ends, n)}
	default:
		ends := make([]int, n)
		for i := range ends {
			ends[i] = i + 1
		}
		return slotGroups{ends: ends}
	}
}

// GetOrLeaseMany implements Store. Every key is first read with a plain HGET of its value
// field, all in one pipeline (go-redis sends a Cluster's as one pipeline per node, in
// parallel); only the keys found without a value then go through getOrLeaseManyScript, the
// atomic read-or-lease, in a second pipeline (one script call per hash slot on Cluster). So a
// batch of hits costs one round trip per node and no script call, a batch with misses two.
// A key read as a hit is a hit: the script would have answered the same value. A key read as a
// miss decides nothing: the script reads it again atomically with the lease, and may find a
// value filled meanwhile.
//
// When recent batches of this store were mostly misses (see batchMisses), the read is skipped
// and every key goes through the script at once: one round trip per node, as a miss needs the
// script anyway. The values returned alias the replies' memory, read-only.
func (s *RedisStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	if !s.readFirst() {
		lks, err := s.lookupMany(ctx, getOrLeaseManyScript, keys, token, leaseTTL)
		if err == nil {
			s.batchMisses.observe(lks)
		}
		return lks, err
	}
	return guard(ctx, s.trusted, func(ctx context.Context) ([]Lookup, error) {
		out, misses, err := s.readMany(ctx, keys)
		if err != nil {
			return nil, err
		}
		s.batchMisses.record(len(misses), len(keys))
		if len(misses) == 0 {
			return out, nil
		}
		mkeys := keys
		if len(misses) < len(keys) {
			mkeys = pick(keys, misses)
		}
		lks, err := s.runLookups(ctx, getOrLeaseManyScript, mkeys, token, leaseTTL)
		if err != nil {
			return nil, err
		}
		for j, i := range misses {
			out[i] = lks[j]
		}
		return out, nil
	})
}

// readMany reads the value field of every key in one pipeline: one round trip per node. It
// returns a Lookup with the Value of each key that holds one, and the positions of the others
// (no value, a bare lease, nothing, or not a hash: the script deletes such a key).
func (s *RedisStore) readMany(ctx context.Context, keys []string) ([]Lookup, []int, error) {
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	args := make([]any, 3*len(keys)) // one allocation for every command's arguments
	for i, k := range keys {
		a := args[3*i : 3*i+3 : 3*i+3]
		a[0], a[1], a[2] = "hget", k, "v"
		cmds[i] = redis.NewStringCmd(ctx, a...) // what pipe.HGet builds
		_ = pipe.Process(ctx, cmds[i])          // queued: its error comes with Exec
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	out := make([]Lookup, len(keys))
	var misses []int
	for i, cmd := range cmds {
		v, err := cmd.Result()
		switch {
		case err == nil:
			// The reply is ours alone and the Cache only reads values: no copy.
			out[i].Value = unsafe.Slice(unsafe.StringData(v), len(v))
			if out[i].Value == nil {
				out[i].Value = []byte{} // an empty value is a value
			}
		case errors.Is(err, redis.Nil) || isWrongType(err):
			misses = append(misses, i)
		default:
			return nil, nil, err
		}
	}
	return out, misses, nil
}

func isWrongType(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE")
}

// missRatio is a moving average of the share of a store's batch keys found without a value
// (in 1/missScale units), weighing each batch alike: 1/8 the latest batch, 7/8 the ones
// before. Updates from concurrent batches may be lost: it only picks a path, both correct.
type missRatio struct{ v atomic.Int64 }

const (
	missScale = 1 << 16
	// scriptFirstAbove is the average miss share above which a batch skips the plain read:
	// over half the keys would go on to the script anyway.
	scriptFirstAbove = missScale / 2
)

func (m *missRatio) record(misses, n int) {
	old := m.v.Load()
	m.v.Store(old + (int64(misses)*missScale/int64(n)-old)/8)
}

// observe records the misses of a script's answers.
func (m *missRatio) observe(lks []Lookup) {
	misses := 0
	for i := range lks {
		if lks[i].Value == nil {
			misses++
		}
	}
	m.record(misses, len(lks))
}

// readFirst reports whether the next batch reads its keys before leasing the misses.
func (s *RedisStore) readFirst() bool {
	switch s.batchPath {
	case batchReadFirst:
		return true
	case batchScriptFirst:
		return false
	}
	return s.batchMisses.v.Load() <= scriptFirstAbove
}

// Batch paths of GetOrLeaseMany: adaptive (the default), or forced by tests.
const (
	batchAdaptive = iota
	batchReadFirst
	batchScriptFirst
)

// LeaseMany implements LeaseManyStore: one pipeline of batch scripts, so one round trip per
// node.
func (s *RedisStore) LeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	return s.lookupMany(ctx, leaseManyScript, keys, token, leaseTTL)
}

// lookupMany runs script, one that answers a Lookup per key, over keys in one pipeline.
func (s *RedisStore) lookupMany(ctx context.Context, script *redis.Script, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return guard(ctx, s.trusted, func(ctx context.Context) ([]Lookup, error) {
		return s.runLookups(ctx, script, keys, token, leaseTTL)
	})
}

// runLookups is lookupMany within the caller's guard.
func (s *RedisStore) runLookups(ctx context.Context, script *redis.Script, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	g := s.group(keys)
	lease := ms(leaseTTL)
	cmds, err := s.pipelineScript(ctx, script, g.len(), func(i int) ([]string, []any) {
		return g.keys(i, keys), []any{token, lease}
	})
	if err != nil {
		return nil, err
	}
	out := make([]Lookup, len(keys))
	for i, cmd := range cmds {
		lo, hi := g.span(i)
		if err := parseLookups(cmd, g, lo, hi, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// pollMany is GetOrLeaseMany for keys expected to be held by other callers' leases (a batch
// waiting for them): straight to the script, one round trip per node, and not counted in the
// store's miss average (it would steer ordinary batches away from the plain read).
func (s *RedisStore) pollMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	return s.lookupMany(ctx, getOrLeaseManyScript, keys, token, leaseTTL)
}

// parseLookups reads the reply of one getOrLeaseManyScript call over group positions [lo, hi).
func parseLookups(cmd *redis.Cmd, g slotGroups, lo, hi int, out []Lookup) error {
	reply, err := cmd.Slice()
	if err != nil {
		return err
	}
	p := 0
	for j := lo; j < hi; j++ {
		if p >= len(reply) {
			return fmt.Errorf("cacheaside: short batch script reply (%d values for %d keys)", len(reply), hi-lo)
		}
		code, _ := reply[p].(int64)
		lk := &out[g.index(j)]
		switch {
		case code == replyValue && p+1 < len(reply):
			v, ok := reply[p+1].(string)
			if !ok {
				return fmt.Errorf("cacheaside: unexpected value type %T", reply[p+1])
			}
			// The reply is ours alone and the Cache only reads values: no copy.
			lk.Value = unsafe.Slice(unsafe.StringData(v), len(v))
			if lk.Value == nil {
				lk.Value = []byte{} // an empty value is a value
			}
			p += 2
		case code == replyHeld && p+2 < len(reply):
			lk.Holder, _ = reply[p+1].(string)
			ttl, _ := reply[p+2].(int64)
			lk.HolderTTL = time.Duration(max(ttl, 0)) * time.Millisecond
			p += 3
		case code == replyGranted:
			lk.Granted = true
			p++
		default:
			return fmt.Errorf("cacheaside: unexpected batch script reply %v", reply[p:])
		}
	}
	return nil
}

// FillMany implements Store: one pipeline of batch scripts, so one round trip per node.
func (s *RedisStore) FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	return guard(ctx, s.trusted, func(ctx context.Context) ([]bool, error) {
		keys := make([]string, len(entries))
		for i, e := range entries {
			keys[i] = e.Key
		}
		g := s.group(keys)
		cmds, err := s.pipelineScript(ctx, fillManyScript, g.len(), func(i int) ([]string, []any) {
			lo, hi := g.span(i)
			args := make([]any, 2, 2+2*(hi-lo))
			args[0], args[1] = token, WakeChannel
			for j := lo; j < hi; j++ {
				e := entries[g.index(j)]
				args = append(args, e.Value, ms(e.TTL))
			}
			return g.keys(i, keys), args
		})
		if err != nil {
			return nil, err
		}
		return parseFlags(cmds, g, len(entries))
	})
}

// ReleaseMany is Release for several keys under one token, in one pipeline of batch scripts:
// one round trip per node. It reports, per key, whether token held the lease.
func (s *RedisStore) ReleaseMany(ctx context.Context, token string, keys []string) ([]bool, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return guard(ctx, s.trusted, func(ctx context.Context) ([]bool, error) {
		g := s.group(keys)
		cmds, err := s.pipelineScript(ctx, releaseManyScript, g.len(), func(i int) ([]string, []any) {
			return g.keys(i, keys), []any{token, WakeChannel}
		})
		if err != nil {
			return nil, err
		}
		return parseFlags(cmds, g, len(keys))
	})
}

// parseFlags reads the 0/1 replies of batch scripts into one flag per key.
func parseFlags(cmds []*redis.Cmd, g slotGroups, n int) ([]bool, error) {
	out := make([]bool, n)
	for i, cmd := range cmds {
		reply, err := cmd.Int64Slice()
		if err != nil {
			return nil, err
		}
		lo, hi := g.span(i)
		if len(reply) != hi-lo {
			return nil, fmt.Errorf("cacheaside: batch script replied %d flags for %d keys", len(reply), hi-lo)
		}
		for j, v := range reply {
			out[g.index(lo+j)] = v == 1
		}
	}
	return out, nil
}
