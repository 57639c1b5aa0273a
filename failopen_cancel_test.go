package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// slowStore is a healthy store that takes a while to answer a read, honouring ctx like a
// client with ContextTimeoutEnabled: a caller can leave in the middle of it.
type slowStore struct {
	Store
	delay time.Duration
}

func (s slowStore) wait(ctx context.Context) error {
	tm := time.NewTimer(s.delay)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slowStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	if err := s.wait(ctx); err != nil {
		return Lookup{}, err
	}
	return s.Store.GetOrLease(ctx, key, token, leaseTTL)
}

func (s slowStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Store.GetOrLeaseMany(ctx, keys, token, leaseTTL)
}

func TestFailOpenCallerCancelIsNotAStoreFailure(t *testing.T) {
	noStrays(t)
	srv := miniredis.RunT(t)
	client := failOpenClient(t, &redis.Options{Addr: srv.Addr()})
	isCancel := func(err error) bool { return errors.Is(err, context.Canceled) }
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return valueOf(key), nil }
	}

	t.Run("already cancelled", func(t *testing.T) {
		// A cold cache: before the store's first answer, one failure would trip the breaker.
		c := newTestCache[string](t, NewRedisStore(client))
		ctx, cancel := context.WithCancel(bg())
		cancel()
		for i := range 200 {
			key := fmt.Sprintf("k%d", i%10)
			if _, err := c.GetOrLoad(ctx, key, load(key)); !isCancel(err) {
				t.Fatalf("GetOrLoad with a cancelled context = %v, want context.Canceled", err)
			}
		}
		if _, err := c.GetOrLoadMany(ctx, []string{"a", "b"}, func(context.Context, []string) (map[string]string, error) {
			return nil, nil
		}); !isCancel(err) {
			t.Fatalf("GetOrLoadMany with a cancelled context = %v, want context.Canceled", err)
		}
		if c.gw.breaker.Open() {
			t.Fatalf("breaker opened by callers whose context was cancelled")
		}
	})

	t.Run("cancelled during the store call of a cold cache", func(t *testing.T) {
		// The read takes 30 ms (under the store timeout) and every caller leaves after 5 ms,
		// in the middle of it, before the store has ever answered this cache.
		store := slowStore{Store: NewRedisStore(client), delay: 30 * time.Millisecond}
		for i := range 10 {
			c := newTestCache[string](t, store)
			ctx, cancel := context.WithCancel(bg())
			time.AfterFunc(5*time.Millisecond, cancel)
			var err error
			within(t, 5*time.Second, "GetOrLoad cancelled mid-call", func() {
				_, err = c.GetOrLoad(ctx, "k", load("k"))
			})
			if !isCancel(err) {
				t.Fatalf("cache %d: GetOrLoad cancelled during the store call = %v, want context.Canceled", i, err)
			}
			ctx, cancel = context.WithCancel(bg())
			time.AfterFunc(5*time.Millisecond, cancel)
			within(t, 5*time.Second, "GetOrLoadMany cancelled mid-call", func() {
				_, err = c.GetOrLoadMany(ctx, []string{"a", "b"}, func(_ context.Context, missing []string) (map[string]string, error) {
					return map[string]string{}, nil
				})
			})
			if !isCancel(err) {
				t.Fatalf("cache %d: GetOrLoadMany cancelled during the store call = %v, want context.Canceled", i, err)
			}
			if c.gw.breaker.Open() {
				t.Fatalf("cache %d: breaker opened by a caller that left during the store call", i)
			}
			// The store is fine: the cache still uses it.
			if v, err := c.GetOrLoad(bg(), "k2", load("k2")); err != nil || v != valueOf("k2") {
				t.Fatalf("cache %d: GetOrLoad after the cancellations = %q, %v", i, v, err)
			}
			if c.gw.breaker.Open() {
				t.Fatalf("cache %d: breaker open after a successful call", i)
			}
		}
	})

	t.Run("cancelled at random points", func(t *testing.T) {
		// The store timeout is raised from 50 ms so that only a misattributed cancellation can
		// open the breaker: miniredis runs each script on a fresh Lua state under one lock, and
		// with -race on a small machine, plus the operations that cancelled callers leave
		// running on the client's pool, it can genuinely take longer than 50 ms to answer.
		c := newTestCache[string](t, NewRedisStore(client), WithStoreTimeout(time.Second))
		const workers, perWorker = 8, 100
		var ok, cancelled atomic.Int64
		var sawOpen atomic.Bool
		var wg sync.WaitGroup
		slowLoad := func(key string) func(context.Context) (string, error) {
			return func(ctx context.Context) (string, error) {
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
				return valueOf(key), nil
			}
		}
		within(t, 30*time.Second, "randomly cancelled calls", func() {
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range perWorker {
						// Mostly fresh keys, some shared: a key whose lookup a cancelled
						// caller left behind stays leased (see
						// TestFailOpenCancelledLookupLeavesNoOrphanLease), and its later
						// callers can only wait for their own cancellation.
						key := fmt.Sprintf("r%d-%d", w, i)
						if i%4 == 0 {
							key = fmt.Sprintf("shared%d", i%3)
						}
						ctx, cancel := context.WithCancel(bg())
						tm := time.AfterFunc(time.Duration(rand.IntN(20000))*time.Microsecond, cancel)
						v, err := c.GetOrLoad(ctx, key, slowLoad(key))
						tm.Stop()
						cancel()
						switch {
						case err == nil && v == valueOf(key):
							ok.Add(1)
						case isCancel(err):
							cancelled.Add(1)
						default:
							t.Errorf("GetOrLoad(%q) = %q, %v; want the value or context.Canceled", key, v, err)
						}
						if c.gw.breaker.Open() {
							sawOpen.Store(true)
						}
						if i%10 == 0 {
							_ = c.Invalidate(bg(), key) // keep some misses coming
						}
					}
				}()
			}
			wg.Wait()
		})
		t.Logf("%d calls: %d returned the value, %d were cancelled", workers*perWorker, ok.Load(), cancelled.Load())
		if sawOpen.Load() || c.gw.breaker.Open() {
			t.Fatalf("breaker opened on a healthy store by callers cancelling their contexts")
		}
	})
}

// startDelayProxy forwards TCP connections to target, delaying every chunk of the server's
// replies by delay: a store that executes commands at once but whose answers arrive late. It
// is closed, with its connections, at cleanup.
func startDelayProxy(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, cs...)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			track(client, server)
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(server, client)
				server.Close()
			}()
			go func() {
				defer wg.Done()
				defer client.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						time.Sleep(delay)
						if _, werr := client.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// A caller that leaves while its read-or-lease is on the wire must not leave the key leased
// to nobody. The store executes the command (granting this call's token the lease) and the
// reply arrives after the caller left; RedisStore's guard returns at the caller's
// cancellation while the command goes on. Cache.GetOrLoad then returns ctx.Err() and drops
// the token, unlike a lookup that failed on the store's side, whose token it fills under
// (loadWithoutStore). Nothing loads under the lease and nothing releases it: every later
// caller of the key, in every process, waits for it to expire (the lease TTL: the load
// timeout, 10 s by default).
func TestFailOpenCancelledLookupLeavesNoOrphanLease(t *testing.T) {
	noStrays(t)
	srv := miniredis.RunT(t)
	client := failOpenClient(t, &redis.Options{Addr: startDelayProxy(t, srv.Addr(), 30*time.Millisecond)})
	prefix := testPrefix(t)
	// A store timeout well above the proxy's delay: every store operation succeeds.
	c := newTestCache[string](t, NewRedisStore(client), WithPrefix(prefix), WithStoreTimeout(time.Second))
	load := func(key string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return valueOf(key), nil }
	}
	if v, err := c.GetOrLoad(bg(), "warm", load("warm")); err != nil || v != valueOf("warm") {
		t.Fatalf("warm-up GetOrLoad = %q, %v", v, err)
	}

	// leaveMidLookup runs call(ctx, n) on a context cancelled 5 ms in, while the store's reply
	// is still delayed, until the store holds a lease for key(n) that a call was granted
	// (under load, a call may be cancelled before its command is sent), and returns that n.
	leaveMidLookup := func(t *testing.T, key func(n int) string, call func(ctx context.Context, n int) error) int {
		t.Helper()
		for n := range 5 {
			ctx, cancel := context.WithCancel(bg())
			time.AfterFunc(5*time.Millisecond, cancel)
			if err := call(ctx, n); !errors.Is(err, context.Canceled) {
				t.Fatalf("call cancelled mid-lookup = %v, want context.Canceled", err)
			}
			deadline := time.Now().Add(500 * time.Millisecond)
			for time.Now().Before(deadline) {
				if srv.Exists(prefix + key(n)) {
					return n
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		t.Fatalf("the store never saw a cancelled lookup: scenario not reproduced")
		return 0
	}

	t.Run("GetOrLoad", func(t *testing.T) {
		key := func(n int) string { return fmt.Sprintf("k%d", n) }
		n := leaveMidLookup(t, key, func(ctx context.Context, n int) error {
			_, err := c.GetOrLoad(ctx, key(n), load(key(n)))
			return err
		})
		ctx, cancel := context.WithTimeout(bg(), time.Second)
		defer cancel()
		t0 := time.Now()
		v, err := c.GetOrLoad(ctx, key(n), load(key(n)))
		t.Logf("next GetOrLoad of the key: %q, %v after %v", v, err, time.Since(t0))
		if err != nil || v != valueOf(key(n)) {
			t.Errorf("GetOrLoad after a caller left mid-lookup = %q, %v within 1s; want %q, nil: "+
				"the lease granted to the caller that left is held by nobody until its TTL", v, err, valueOf(key(n)))
		}
	})

	t.Run("GetOrLoadMany", func(t *testing.T) {
		loadMany := func(_ context.Context, missing []string) (map[string]string, error) {
			out := make(map[string]string, len(missing))
			for _, k := range missing {
				out[k] = valueOf(k)
			}
			return out, nil
		}
		keys := func(n int) []string { return []string{fmt.Sprintf("m%d-a", n), fmt.Sprintf("m%d-b", n)} }
		n := leaveMidLookup(t, func(n int) string { return keys(n)[0] }, func(ctx context.Context, n int) error {
			_, err := c.GetOrLoadMany(ctx, keys(n), loadMany)
			return err
		})
		ctx, cancel := context.WithTimeout(bg(), time.Second)
		defer cancel()
		t0 := time.Now()
		m, err := c.GetOrLoadMany(ctx, keys(n), loadMany)
		t.Logf("next GetOrLoadMany of the keys: %v, %v after %v", m, err, time.Since(t0))
		if err != nil || len(m) != 2 {
			t.Errorf("GetOrLoadMany after a caller left mid-lookup = %v, %v within 1s; want both values, nil: "+
				"the leases granted to the caller that left are held by nobody until their TTL", m, err)
		}
	})
}
