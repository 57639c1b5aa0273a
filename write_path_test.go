package cacheaside

// Tests of the write path (issue 13): Invalidate has its own budget and succeeds on a busy
// store, and no lease outlives its load (failed fills, Close).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// busyHook makes a share of a client's commands wait before they are sent, as a store does
// when it is busy for a moment: longer than the read path's store timeout (50 ms), far shorter
// than the invalidation budget.
type busyHook struct {
	share float64
	delay time.Duration
}

func (h busyHook) pause() {
	if rand.Float64() < h.share {
		time.Sleep(h.delay + rand.N(h.delay))
	}
}

func (h busyHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h busyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.pause()
		return next(ctx, cmd)
	}
}
func (h busyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pause()
		return next(ctx, cmds)
	}
}

// failScriptHook fails every command running one of the scripts (EVALSHA or EVAL) while on is
// set, as a dropped connection would, without sending it.
type failScriptHook struct {
	on      *atomic.Bool
	scripts []*redis.Script
	failed  *atomic.Int64
}

func (h failScriptHook) hit(cmd redis.Cmder) bool {
	if !h.on.Load() {
		return false
	}
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	name, _ := args[0].(string)
	arg, _ := args[1].(string)
	for _, s := range h.scripts {
		if strings.EqualFold(name, "evalsha") && arg == s.Hash() {
			return true
		}
	}
	return false
}

var errDropped = errors.New("injected: connection dropped")

func (h failScriptHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failScriptHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.hit(cmd) {
			h.failed.Add(1)
			cmd.SetErr(errDropped)
			return errDropped
		}
		return next(ctx, cmd)
	}
}
func (h failScriptHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if h.hit(cmd) {
				h.failed.Add(1)
				for _, c := range cmds {
					c.SetErr(errDropped)
				}
				return errDropped
			}
		}
		return next(ctx, cmds)
	}
}

// hookedStore is a RedisStore on a new client of b's server with hook on it (on every node's
// client for the Cluster, or only on the node at nodeAddr if it is not "").
func hookedStore(t testing.TB, b backend, hook redis.Hook, nodeAddr string) *RedisStore {
	t.Helper()
	if b.cluster {
		addrs := clusterAddrs()
		needServer(t, "Redis Cluster", addrs[0])
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, NewClient: func(opt *redis.Options) *redis.Client {
			nc := redis.NewClient(opt)
			if nodeAddr == "" || opt.Addr == nodeAddr {
				nc.AddHook(hook)
			}
			return nc
		}})
		t.Cleanup(func() { c.Close() })
		return NewRedisStore(c)
	}
	needServer(t, "Redis", redisAddr())
	c := redis.NewClient(&redis.Options{Addr: redisAddr()})
	c.AddHook(hook)
	t.Cleanup(func() { c.Close() })
	return NewRedisStore(c)
}

// TestInvalidateBusyStore: with readers on three instances (separate clients) and one writer
// per key that bumps a version and then invalidates, on a store where 5% of commands wait 60 to
// 120 ms (past the read path's 50 ms store timeout), every Invalidate(context.Background())
// returns nil, no read that starts after an Invalidate returned sees an older version, and at
// rest every instance reads the latest. With the read path's budget, a few invalidations of
// every run failed with "context deadline exceeded".
func TestInvalidateBusyStore(t *testing.T) {
	for _, tc := range []struct {
		name  string
		b     func() backend
		local bool
	}{
		{"redis", redisBackend, false},
		{"cluster", clusterBackend, false},
		{"redis+L1", redisBackend, true},
		{"cluster+L1", clusterBackend, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && (tc.name == "cluster" || tc.name == "redis+L1") {
				t.Skip("make test (-short) runs redis and cluster+L1; make verify all four")
			}
			b := tc.b()
			prefix := testPrefix(t)
			opts := []Option{WithPrefix(prefix), WithTTL(time.Minute)}
			if tc.local {
				opts = append(opts, WithLocalCache(1000, time.Minute))
			}
			hook := busyHook{share: 0.05, delay: 60 * time.Millisecond}
			cs := make([]*Cache[int64], 3)
			for i := range cs {
				cs[i] = newTestCache[int64](t, hookedStore(t, b, hook, ""), opts...)
			}
			if tc.local {
				waitLive(t, cs...)
			}
			var bound time.Duration
			if tc.local {
				// Another instance's L1 drops a key within the broadcast delay. The linz l1
				// scenarios hold it to 100 ms; here 240 readers on two loaded cores can keep the
				// subscriber's goroutine from running for longer (seen once: 223 reads within a
				// burst), and what this test checks is the store, so allow a second.
				bound = time.Second
			}
			d := 1500 * time.Millisecond
			if testing.Short() {
				d = 800 * time.Millisecond
			}
			runWriteRace(t, cs, 40, d, bound)
		})
	}
}

// runWriteRace runs readers (two per key per instance) and one writer per key for d: the
// writer bumps the key's version in the "database", then calls Invalidate on a random
// instance with context.Background(). It fails the test on any Invalidate error, on a read
// that started more than bound after an Invalidate of version v returned and got a version
// below v, and on a key whose latest version some instance does not read at rest.
func runWriteRace(t *testing.T, cs []*Cache[int64], nkeys int, d, bound time.Duration) {
	t.Helper()
	db := make([]atomic.Int64, nkeys)   // the source of truth
	done := make([]atomic.Int64, nkeys) // the latest version whose Invalidate returned bound ago
	var invalErrs, stale, reads, writes atomic.Int64
	var invalNanos, invalMax atomic.Int64
	var lag sync.WaitGroup
	defer lag.Wait()
	var firstErr atomic.Value
	load := func(i int) func(context.Context) (int64, error) {
		return func(context.Context) (int64, error) {
			v := db[i].Load()
			time.Sleep(rand.N(3 * time.Millisecond))
			return v, nil
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nkeys {
		key := fmt.Sprint("k", i)
		for _, c := range cs {
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						floor := done[i].Load()
						v, err := c.GetOrLoad(bg(), key, load(i))
						reads.Add(1)
						if err == nil && v < floor {
							if stale.Add(1) <= 3 {
								t.Logf("stale: %s read %d, floor %d (db %d), %+v", key, v, floor, db[i].Load(), c.Stats())
							}
						}
						time.Sleep(rand.N(2 * time.Millisecond))
					}
				}()
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				v := db[i].Add(1)
				start := time.Now()
				err := cs[rand.N(len(cs))].Invalidate(context.Background(), key)
				took := int64(time.Since(start))
				invalNanos.Add(took)
				if took > invalMax.Load() {
					invalMax.Store(took) // a rough maximum: enough for the log line
				}
				switch {
				case err != nil:
					invalErrs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				case bound == 0:
					done[i].Store(v)
				default:
					lag.Add(1)
					time.AfterFunc(bound, func() {
						defer lag.Done()
						for cur := done[i].Load(); cur < v && !done[i].CompareAndSwap(cur, v); cur = done[i].Load() {
						}
					})
				}
				writes.Add(1)
				time.Sleep(5*time.Millisecond + rand.N(10*time.Millisecond))
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	t.Logf("%d reads, %d writes (Invalidate mean %v, max %v), %d invalidate errors, %d stale reads",
		reads.Load(), writes.Load(), time.Duration(invalNanos.Load()/max(writes.Load(), 1)), time.Duration(invalMax.Load()), invalErrs.Load(), stale.Load())
	if invalErrs.Load() > 0 {
		t.Errorf("%d Invalidate calls failed on a healthy store; first: %v", invalErrs.Load(), firstErr.Load())
	}
	require.Zero(t, stale.Load(), "stale reads")
	// At rest: every instance reads the latest version of every key (an L1 may take the
	// broadcast delay to drop an entry).
	for i := range nkeys {
		key := fmt.Sprint("k", i)
		for _, c := range cs {
			want := db[i].Load()
			deadline := time.Now().Add(5 * time.Second)
			for {
				v, err := c.GetOrLoad(bg(), key, load(i))
				if err == nil && v == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("at rest, %s reads %d (err %v), want %d", key, v, err, want)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}

// TestInvalidateFailure: on a store that does not answer, Invalidate gives up after its
// budget with an *InvalidationError naming the keys, recognisable with errors.Is; a caller's
// context ends it sooner, and its error says so too. An open breaker does not make it skip
// the store.
func TestInvalidateFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers: a hung Redis
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
		}
	}()
	client := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), MaxRetries: -1})
	t.Cleanup(func() { client.Close() })
	c := newTestCache[int](t, NewRedisStore(client), WithInvalidateTimeout(300*time.Millisecond))

	start := time.Now()
	err = c.Invalidate(bg(), "a", "b")
	took := time.Since(start)
	require.ErrorIs(t, err, ErrInvalidationFailed)
	var ie *InvalidationError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, []string{"a", "b"}, ie.Keys)
	require.False(t, ie.Removed)
	require.Contains(t, err.Error(), `"a", "b"`)
	require.True(t, strings.HasPrefix(err.Error(), "cacheaside: "))
	require.GreaterOrEqual(t, took, 250*time.Millisecond, "it retried within its budget")
	require.Less(t, took, 5*time.Second, "bounded by its budget")
	require.EqualValues(t, 1, c.Stats().InvalidationFailures)

	ctx, cancel := context.WithTimeout(bg(), 50*time.Millisecond)
	defer cancel()
	_, err = c.InvalidatePattern(ctx, "x*")
	require.ErrorIs(t, err, ErrInvalidationFailed)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorAs(t, err, &ie)
	require.Equal(t, "x*", ie.Pattern)
}

// TestInvalidateIgnoresBreaker: with the breaker open (the store failed reads), Invalidate
// still goes to the store, and succeeds once it answers.
func TestInvalidateIgnoresBreaker(t *testing.T) {
	b := redisBackend()
	c := backendCache[string](t, b)
	c.gw.breaker.Trip()
	require.False(t, c.gw.breaker.Allow())
	raw := b.client(t)
	sk := c.cfg.prefix + "k"
	require.NoError(t, raw.HSet(bg(), sk, "v", "old").Err())
	require.NoError(t, c.Invalidate(bg(), "k"))
	n, err := raw.Exists(bg(), sk).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the key was deleted with the breaker open")
}

// TestFailedFillReleasesLease: when the fill fails (the connection dropped), the lease is
// released in the background, so the next reader on another instance loads at once instead
// of waiting out the lease (10 s by default; its deadline here is 2 s).
func TestFailedFillReleasesLease(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		var on atomic.Bool
		var failed atomic.Int64
		on.Store(true)
		hook := failScriptHook{on: &on, scripts: []*redis.Script{fillScript}, failed: &failed}
		a := newTestCache[string](t, hookedStore(t, b, hook, ""), WithPrefix(prefix))
		other := backendCache[string](t, b, WithPrefix(prefix))
		for i := range 5 {
			key := fmt.Sprint("k", i)
			v, err := a.GetOrLoad(bg(), key, func(context.Context) (string, error) { return "a", nil })
			require.NoError(t, err, "the loader's value is returned though the fill failed")
			require.Equal(t, "a", v)
			ctx, cancel := context.WithTimeout(bg(), 2*time.Second)
			v, err = other.GetOrLoad(ctx, key, func(context.Context) (string, error) { return "b", nil })
			cancel()
			require.NoError(t, err, "the failed fill's lease must not make another instance wait")
			require.Equal(t, "b", v)
		}
		require.GreaterOrEqual(t, failed.Load(), int64(5))
	})
}

// TestFailedFillManyReleasesLeases: a batch whose fill fails on one node of the Cluster (or on
// the standalone Redis) releases every lease of the batch.
func TestFailedFillManyReleasesLeases(t *testing.T) {
	forEachReal(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		var on atomic.Bool
		var failed atomic.Int64
		on.Store(true)
		hook := failScriptHook{on: &on, scripts: []*redis.Script{fillManyScript}, failed: &failed}
		node := ""
		if b.cluster {
			node = clusterAddrs()[1] // the fills of the keys on the second master fail
		}
		a := newTestCache[string](t, hookedStore(t, b, hook, node), WithPrefix(prefix))
		other := backendCache[string](t, b, WithPrefix(prefix))
		keys := make([]string, 60)
		for i := range keys {
			keys[i] = fmt.Sprint("k", i)
		}
		loadAs := func(who string) func(context.Context, []string) (map[string]string, error) {
			return func(_ context.Context, missing []string) (map[string]string, error) {
				m := make(map[string]string, len(missing))
				for _, k := range missing {
					m[k] = who
				}
				return m, nil
			}
		}
		got, err := a.GetOrLoadMany(bg(), keys, loadAs("a"))
		require.NoError(t, err)
		require.Len(t, got, len(keys))
		require.Positive(t, failed.Load(), "the fill failed")
		ctx, cancel := context.WithTimeout(bg(), 2*time.Second)
		defer cancel()
		got, err = other.GetOrLoadMany(ctx, keys, loadAs("b"))
		require.NoError(t, err, "the failed fill's leases must not make another instance wait")
		require.Len(t, got, len(keys))
	})
}
