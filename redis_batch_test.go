package cacheaside

import (
	"context"
	"crypto/sha1" //nolint:gosec // Redis names scripts by their SHA-1
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// batchPaths are GetOrLeaseMany's paths on Redis, each forced, then the adaptive default.
var batchPaths = []struct {
	name string
	path int
}{{"read first", batchReadFirst}, {"script first", batchScriptFirst}, {"adaptive", batchAdaptive}}

// Every path of a batch read answers each key as GetOrLease would: a value (empty or being
// refreshed under another's lease) as a value, a bare lease as its holder, an empty key or one
// that is not a hash as a lease granted.
func TestRedisBatchPathsAnswerAlike(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b backend) {
		raw := b.client(t) // here: miniredis lives as long as the t that starts it
		for _, p := range batchPaths {
			t.Run(p.name, func(t *testing.T) {
				s := NewRedisStore(raw)
				s.batchPath = p.path
				_, k := stKeys(t, s)
				other, me := stNewToken(), stNewToken()
				const n = 60 // 10 keys of each state, spread over the Cluster's masters
				ks := make([]string, n)
				for i := range ks {
					ks[i] = k("key:" + strconv.Itoa(i))
					switch i % 6 {
					case 0:
						stPut(t, s, ks[i], []byte("value-"+strconv.Itoa(i)))
					case 1:
						stPut(t, s, ks[i], []byte{})
					case 2:
						stRequireGranted(t, stGetOrLease(t, s, ks[i], other, stLongLease))
					case 4:
						stPut(t, s, ks[i], []byte("refreshing-"+strconv.Itoa(i)))
						require.True(t, stLease(t, s, ks[i], other, stLongLease).Granted)
					case 5:
						require.NoError(t, raw.Set(bg(), ks[i], "not a hash", stValueTTL).Err())
					}
				}
				got := stLookupShuffled(t, ks, func(keys []string) ([]Lookup, error) {
					return s.GetOrLeaseMany(bg(), keys, me, stLongLease)
				})
				for i, lk := range got {
					switch i % 6 {
					case 0:
						stRequireValue(t, lk, []byte("value-"+strconv.Itoa(i)))
					case 1:
						stRequireValue(t, lk, []byte{})
					case 2:
						stRequireHolder(t, lk, other, stLongLease)
					case 3, 5:
						stRequireGranted(t, lk, "key %d", i)
					case 4:
						stRequireValue(t, lk, []byte("refreshing-"+strconv.Itoa(i)))
					}
				}
			})
		}
	})
}

// pipelineAfter is a hook that calls fn once, after the first pipeline whose first command is
// name has been answered.
type pipelineAfter struct {
	name string
	once *sync.Once
	fn   func()
}

func (h pipelineAfter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h pipelineAfter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h pipelineAfter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if len(cmds) > 0 && cmds[0].Name() == h.name {
			h.once.Do(h.fn)
		}
		return err
	}
}

// The plain read decides only hits. A key read without a value goes through the atomic
// read-or-lease, which sees what happened in between: a value filled is answered as a value
// (no lease taken over it), a lease taken by another caller as its holder. A key read as a hit
// stays a hit even if it is deleted right after: the read came after the call began.
func TestRedisBatchMissesLeaseAtomically(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		s := NewRedisStore(raw)
		s.batchPath = batchReadFirst
		writer := b.newStore(t) // another process
		_, k := stKeys(t, writer)
		other, me := stNewToken(), stNewToken()
		var filled, leased, deleted []string
		for i := range 30 {
			filled = append(filled, k("filled:"+strconv.Itoa(i)))
			leased = append(leased, k("leased:"+strconv.Itoa(i)))
			deleted = append(deleted, k("deleted:"+strconv.Itoa(i)))
			stPut(t, writer, deleted[i], []byte("old"))
		}
		var fired atomic.Bool
		raw.AddHook(pipelineAfter{name: "hget", once: new(sync.Once), fn: func() {
			fired.Store(true)
			for i := range filled {
				stPut(t, writer, filled[i], []byte("new"))
				stRequireGranted(t, stGetOrLease(t, writer, leased[i], other, stLongLease))
			}
			require.NoError(t, writer.Delete(bg(), deleted...))
		}})
		keys := append(append(append([]string{}, filled...), leased...), deleted...)
		got, err := s.GetOrLeaseMany(bg(), keys, me, stLongLease)
		require.NoError(t, err)
		require.True(t, fired.Load(), "the batch read its keys with a pipeline of HGET")
		require.Len(t, got, len(keys))
		for i := range filled {
			stRequireValue(t, got[i], []byte("new"))
			stRequireHolder(t, got[len(filled)+i], other, stLongLease)
			stRequireValue(t, got[2*len(filled)+i], []byte("old"))
		}
		for _, key := range filled { // no lease of ours was left over a value
			stRequireValue(t, stGetOrLease(t, writer, key, stNewToken(), stLongLease), []byte("new"))
		}
	})
}

// scriptKeys counts the keys that calls of the batch read-or-lease script (getOrLeaseManyScript,
// by EVALSHA or EVAL) cover, at the client.
type scriptKeys struct{ n atomic.Int64 }

func (h *scriptKeys) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptKeys) count(cmd redis.Cmder) {
	args := cmd.Args()
	if len(args) < 3 || isNoScript(cmd.Err()) { // go-redis retries a NOSCRIPT as EVAL
		return
	}
	switch sha := toString(args[1]); cmd.Name() {
	case "evalsha":
		if sha != getOrLeaseManyScript.Hash() {
			return
		}
	case "eval":
		if fmt.Sprintf("%x", sha1.Sum([]byte(sha))) != getOrLeaseManyScript.Hash() {
			return
		}
	default:
		return
	}
	n, _ := strconv.Atoi(toString(args[2]))
	h.n.Add(int64(n))
}

func toString(a any) string {
	switch v := a.(type) {
	case string:
		return v
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return ""
}

func (h *scriptKeys) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.count(cmd)
		return err
	}
}

func (h *scriptKeys) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			h.count(cmd)
		}
		return err
	}
}

// A batch of hits runs no script and costs one round trip per node; a batch with misses runs
// the read-or-lease script for the misses only (two round trips per node, then the fill). A
// store whose batches have been mostly misses skips the plain read (one round trip per node,
// as before), and reads first again once its batches hit.
func TestGetOrLoadManyHitsRunNoScript(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		raw := b.client(t)
		trips := countRoundTrips(raw)
		scripts := &scriptKeys{}
		raw.AddHook(scripts)
		s := NewRedisStore(raw)
		c := newTestCache[int](t, s, slowMachine...)
		del := NewRedisStore(b.client(t))
		keys := itemKeys(100)
		load := func(_ context.Context, missing []string) (map[string]int, error) {
			out := map[string]int{}
			for _, k := range missing {
				out[k] = itemIndex(k)
			}
			return out, nil
		}
		noLoad := func(context.Context, []string) (map[string]int, error) {
			return nil, errors.New("all cached: no load")
		}
		nodes := 1
		if b.cluster {
			nodes = 3
		}
		batch := func(load func(context.Context, []string) (map[string]int, error)) (perNode, scriptKeys int) {
			t.Helper()
			trips.reset()
			scripts.n.Store(0)
			got, err := c.GetOrLoadMany(bg(), keys, load)
			require.NoError(t, err)
			require.Len(t, got, len(keys))
			require.Len(t, trips.perNode(), nodes, "100 keys reach every master: %v", trips.perNode())
			return trips.maxPerNode(), int(scripts.n.Load())
		}
		drop := func(step int) {
			t.Helper()
			var sks []string
			for i := 0; i < len(keys); i += step {
				sks = append(sks, c.cfg.prefix+keys[i])
			}
			require.NoError(t, del.Delete(bg(), sks...))
		}
		batch(load) // fills every key, dials every master, loads the scripts

		rt, n := batch(noLoad)
		require.Equal(t, 0, n, "keys under the lease script in a batch of hits")
		require.Equal(t, 1, rt, "round trips per node of a batch of hits")

		drop(2)
		rt, n = batch(load)
		require.Equal(t, 50, n, "keys under the lease script in a batch of 50 hits and 50 misses")
		require.Equal(t, 3, rt, "round trips per node of a batch with misses: read, lease, fill")

		// Batches of misses only: the store soon leases them at once.
		scriptFirst := false
		for range 20 {
			drop(1)
			rt, n = batch(load)
			require.Equal(t, 100, n, "keys under the lease script in a batch of misses")
			if rt == 2 { // lease, fill
				scriptFirst = true
				break
			}
			require.Equal(t, 3, rt, "round trips per node of a batch of misses read first")
		}
		require.True(t, scriptFirst, "20 batches of misses, and still read first")
		readFirst := false
		for range 20 {
			rt, n = batch(noLoad)
			require.Equal(t, 1, rt, "round trips per node of a batch of hits")
			if n == 0 {
				readFirst = true
				break
			}
			require.Equal(t, 100, n, "keys under the lease script in a batch of hits")
		}
		require.True(t, readFirst, "20 batches of hits, and still leasing first")
	})
}

// missRatio moves from reading first to leasing first after a run of batches mostly missing,
// and back after a run mostly hitting.
func TestMissRatio(t *testing.T) {
	s := &RedisStore{}
	require.True(t, s.readFirst(), "a new store reads first")
	n := 0
	for ; s.readFirst(); n++ {
		s.batchMisses.record(100, 100)
		require.Less(t, n, 20)
	}
	require.Greater(t, n, 1, "one batch of misses does not switch")
	n = 0
	for ; !s.readFirst(); n++ {
		s.batchMisses.observe([]Lookup{{Value: []byte{}}, {Value: []byte("v")}}) // hits
		require.Less(t, n, 20)
	}
	require.Greater(t, n, 0)
	s.batchMisses.record(40, 100)
	require.True(t, s.readFirst(), "40% misses keeps reading first")
	s.batchPath = batchScriptFirst
	require.False(t, s.readFirst())
	s.batchPath = batchReadFirst
	s.batchMisses.record(100, 100)
	require.True(t, s.readFirst())
}

// BenchmarkBatchPaths compares GetOrLeaseMany's two paths, each forced, on batches of 100 keys
// with a share of misses (deleted before each batch, outside the timer) on the real Redis and
// Cluster: where reading first stops paying is where the adaptive choice should switch.
func BenchmarkBatchPaths(b *testing.B) {
	for _, mk := range []func() backend{redisBackend, clusterBackend} {
		be := mk()
		b.Run(be.name, func(b *testing.B) {
			raw := be.client(b)
			prefix := testPrefix(b)
			keys := make([]string, 100)
			value := []byte(strings.Repeat("v", 100))
			for i := range keys {
				keys[i] = prefix + strconv.Itoa(i)
			}
			b.Cleanup(func() { raw.Del(bg(), keys...) })
			b.Run("hits-interleaved", func(b *testing.B) {
				read, script := NewRedisStore(raw), NewRedisStore(raw)
				read.batchPath, script.batchPath = batchReadFirst, batchScriptFirst
				for _, k := range keys {
					raw.HSet(bg(), k, "v", value)
				}
				var tRead, tScript time.Duration
				for b.Loop() {
					t0 := time.Now()
					if _, err := read.GetOrLeaseMany(bg(), keys, "t", time.Minute); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if _, err := script.GetOrLeaseMany(bg(), keys, "t", time.Minute); err != nil {
						b.Fatal(err)
					}
					tRead += t1.Sub(t0)
					tScript += time.Since(t1)
				}
				b.ReportMetric(float64(tRead.Nanoseconds())/float64(b.N), "read-ns/op")
				b.ReportMetric(float64(tScript.Nanoseconds())/float64(b.N), "script-ns/op")
				b.ReportMetric(float64(tRead)/float64(tScript), "read/script")
			})
			for _, missing := range []int{0, 25, 50, 75, 100} {
				for _, p := range batchPaths[:2] {
					b.Run(fmt.Sprintf("miss%d/%s", missing, strings.ReplaceAll(p.name, " ", "-")), func(b *testing.B) {
						s := NewRedisStore(raw)
						s.batchPath = p.path
						for range b.N {
							b.StopTimer()
							tok := stNewToken()
							pipe := raw.Pipeline()
							for i, k := range keys {
								if i < missing {
									pipe.Del(bg(), k)
								} else {
									pipe.HSet(bg(), k, "v", value)
								}
							}
							if _, err := pipe.Exec(bg()); err != nil {
								b.Fatal(err)
							}
							b.StartTimer()
							if _, err := s.GetOrLeaseMany(bg(), keys, tok, time.Minute); err != nil {
								b.Fatal(err)
							}
						}
					})
				}
			}
		})
	}
}

// BenchmarkBatchPathsCache is BenchmarkBatchPaths's hits through a Cache: the same 100 cached
// keys read by GetOrLoadMany over a store forced to each path, interleaved in one loop.
func BenchmarkBatchPathsCache(b *testing.B) {
	for _, mk := range []func() backend{redisBackend, clusterBackend} {
		be := mk()
		b.Run(be.name, func(b *testing.B) {
			raw := be.client(b)
			prefix := testPrefix(b)
			read, script := NewRedisStore(raw), NewRedisStore(raw)
			read.batchPath, script.batchPath = batchReadFirst, batchScriptFirst
			cr := newTestCache[string](b, read, WithPrefix(prefix), WithStoreTimeout(time.Second))
			cs := newTestCache[string](b, script, WithPrefix(prefix), WithStoreTimeout(time.Second))
			keys := make([]string, 100)
			for i := range keys {
				keys[i] = strconv.Itoa(i)
			}
			value := strings.Repeat("v", 100)
			load := func(_ context.Context, missing []string) (map[string]string, error) {
				out := map[string]string{}
				for _, k := range missing {
					out[k] = value
				}
				return out, nil
			}
			if _, err := cr.GetOrLoadMany(bg(), keys, load); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _, _ = cr.InvalidatePattern(bg(), "*") })
			var tRead, tScript time.Duration
			for b.Loop() {
				t0 := time.Now()
				if m, err := cr.GetOrLoadMany(bg(), keys, load); err != nil || len(m) != 100 {
					b.Fatal(err)
				}
				t1 := time.Now()
				if m, err := cs.GetOrLoadMany(bg(), keys, load); err != nil || len(m) != 100 {
					b.Fatal(err)
				}
				tRead += t1.Sub(t0)
				tScript += time.Since(t1)
			}
			b.ReportMetric(float64(tRead.Nanoseconds())/float64(b.N), "read-ns/op")
			b.ReportMetric(float64(tScript.Nanoseconds())/float64(b.N), "script-ns/op")
			b.ReportMetric(float64(tRead)/float64(tScript), "read/script")
		})
	}
}

// A batch's leases follow the single-key protocol (one Lua definition per operation,
// redis_lease.go): a single-key caller that finds a key leased by a batch records that it
// waits ("w"), and the batch's fill or release publishes the key on WakeChannel and drops the
// mark, as a single-key fill or release does.
func TestRedisBatchFillAndReleaseWakeWaiters(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b backend) {
		ctx := bg()
		raw := b.client(t)
		store := b.newStore(t).(*RedisStore)
		prefix := testPrefix(t)
		sub := raw.Subscribe(ctx, WakeChannel)
		t.Cleanup(func() { sub.Close() })
		_, err := sub.Receive(ctx) // subscribed
		require.NoError(t, err)
		msgs := sub.Channel()
		for _, end := range []string{"fill", "release"} {
			t.Run(end, func(t *testing.T) {
				key := prefix + end
				lks, err := store.LeaseMany(ctx, []string{key}, "holder", time.Minute)
				require.NoError(t, err)
				require.True(t, lks[0].Granted)
				lk, err := store.GetOrLease(ctx, key, "waiter", time.Minute)
				require.NoError(t, err)
				require.Equal(t, "holder", lk.Holder)
				if end == "fill" {
					ok, err := store.FillMany(ctx, "holder", []FillEntry{{Key: key, Value: []byte("v"), TTL: time.Minute}})
					require.NoError(t, err)
					require.Equal(t, []bool{true}, ok)
					fields, err := raw.HGetAll(ctx, key).Result()
					require.NoError(t, err)
					require.Equal(t, map[string]string{"v": "v"}, fields, "the fill leaves the value alone")
				} else {
					ok, err := store.ReleaseMany(ctx, "holder", []string{key})
					require.NoError(t, err)
					require.Equal(t, []bool{true}, ok)
				}
				deadline := time.After(5 * time.Second)
				for {
					select {
					case m := <-msgs:
						if m.Payload != key {
							continue // another test's
						}
					case <-deadline:
						t.Fatalf("the batch %s published nothing for the waiter", end)
					}
					break
				}
			})
		}
	})
}
