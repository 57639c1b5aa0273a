package cacheaside

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// lateStore delays the execution of GetOrLease and Fill behind the caller's back, as a slow
// network delays a request: the caller gives up at its deadline, and the operation still
// happens at the store later. Everything else goes straight through.
type lateStore struct {
	Store
	delay time.Duration
	wg    sync.WaitGroup
	late  atomic.Bool  // delay only while set
	ran   atomic.Int32 // delayed operations that have reached the store
}

func (s *lateStore) later(ctx context.Context, op func()) error {
	if !s.late.Load() {
		op()
		return nil
	}
	done := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		time.Sleep(s.delay)
		op()
		s.ran.Add(1)
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *lateStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	var lk Lookup
	var err error
	if e := s.later(ctx, func() { lk, err = s.Store.GetOrLease(context.Background(), key, token, leaseTTL) }); e != nil {
		return Lookup{}, e
	}
	return lk, err
}

func (s *lateStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	var ok bool
	var err error
	if e := s.later(ctx, func() { ok, err = s.Store.Fill(context.Background(), key, token, value, ttl) }); e != nil {
		return false, e
	}
	return ok, err
}

func (s *lateStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	var lks []Lookup
	var err error
	if e := s.later(ctx, func() { lks, err = s.Store.GetOrLeaseMany(context.Background(), keys, token, leaseTTL) }); e != nil {
		return nil, e
	}
	return lks, err
}

func (s *lateStore) FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error) {
	var ok []bool
	var err error
	if e := s.later(ctx, func() { ok, err = s.Store.FillMany(context.Background(), token, entries) }); e != nil {
		return nil, e
	}
	return ok, err
}

// A lookup that timed out on the caller's side may still reach the store, and be granted the
// lease, after the caller failed open and its loader had already read the source. An
// Invalidate in between voids nothing (the lease did not exist yet), so the value the caller
// loaded must never be filled under that token: it began loading before the lease, and maybe
// before the Invalidate. Found by the linearizability suite's reasoning about fail-open paths.
func TestFailOpenLateLeaseGrantDoesNotFill(t *testing.T) {
	t.Run("GetOrLoad", func(t *testing.T) {
		testLateLease(t, func(c *Cache[int], load func(context.Context) (int, error)) (int, error) {
			return c.GetOrLoad(bg(), "k", load)
		})
	})
	t.Run("GetOrLoadMany", func(t *testing.T) {
		testLateLease(t, func(c *Cache[int], load func(context.Context) (int, error)) (int, error) {
			m, err := c.GetOrLoadMany(bg(), []string{"k"}, func(ctx context.Context, missing []string) (map[string]int, error) {
				v, err := load(ctx)
				return map[string]int{"k": v}, err
			})
			return m["k"], err
		})
	})
}

func testLateLease(t *testing.T, get func(c *Cache[int], load func(context.Context) (int, error)) (int, error)) {
	mem := NewMemoryStore()
	defer mem.Close()
	late := &lateStore{Store: mem, delay: 150 * time.Millisecond}
	defer late.wg.Wait()
	prefix := testPrefix(t)
	// Short leases: the late lease is an orphan that other callers wait out.
	lease := []Option{WithPrefix(prefix), WithLeaseTTL(300 * time.Millisecond), WithLoadTimeout(time.Second)}
	a := newTestCache[int](t, late, append(lease, WithStoreTimeout(20*time.Millisecond), WithCircuitBreaker(100, time.Second))...)
	b := newTestCache[int](t, mem, lease...)

	var truth atomic.Int64
	load := func(context.Context) (int, error) { return int(truth.Load()), nil }

	if _, err := a.GetOrLoad(bg(), "warm", load); err != nil { // the store has answered: short timeouts apply
		t.Fatal(err)
	}
	late.late.Store(true)
	v, err := get(a, load) // times out at the store, fails open, loads 0
	if err != nil || v != 0 {
		t.Fatalf("fail-open read: %v, %v", v, err)
	}
	truth.Store(1)
	if err := b.Invalidate(bg(), "k"); err != nil { // returns before the late lease is granted
		t.Fatal(err)
	}
	// Let the late lookup reach the store, and whatever the cache sent after it (a fill would
	// be held up as long).
	within(t, 10*time.Second, "the late lookup", func() {
		for late.ran.Load() < 1 {
			time.Sleep(5 * time.Millisecond)
		}
	})
	time.Sleep(3 * late.delay)
	late.late.Store(false)

	v, err = get(b, load)
	if err != nil {
		t.Fatal(err)
	}
	if v != 1 {
		t.Fatalf("a read that began after Invalidate returned got version %d, loaded before it (want 1)", v)
	}
}

// downStore is a store that never answers.
type downStore struct{ Store }

var errDown = errors.New("store down")

func (downStore) GetOrLease(context.Context, string, string, time.Duration) (Lookup, error) {
	return Lookup{}, errDown
}
func (downStore) GetOrLeaseMany(context.Context, []string, string, time.Duration) ([]Lookup, error) {
	return nil, errDown
}
func (downStore) Lease(context.Context, string, string, time.Duration) (Lookup, error) {
	return Lookup{}, errDown
}
func (downStore) Fill(context.Context, string, string, []byte, time.Duration) (bool, error) {
	return false, errDown
}
func (downStore) FillMany(context.Context, string, []FillEntry) ([]bool, error) { return nil, errDown }
func (downStore) Release(context.Context, string, string) (bool, error)         { return false, errDown }
func (downStore) Delete(context.Context, ...string) error                       { return errDown }
func (downStore) DeletePattern(context.Context, string) (int, error)            { return 0, errDown }
func (downStore) Ping(context.Context) error                                    { return errDown }

// A process that cannot reach the store coalesces its loads, but it cannot see another
// process's Invalidate: a call that begins after one returned must not join a load that
// began before it, which may have read the source before the write. Found by the soak.
func TestFailOpenNoJoinAcrossRemoteInvalidate(t *testing.T) {
	mem := NewMemoryStore()
	defer mem.Close()
	prefix := testPrefix(t)
	a := newTestCache[int](t, downStore{mem}, WithPrefix(prefix), WithCircuitBreaker(1, time.Hour))
	b := newTestCache[int](t, mem, WithPrefix(prefix))

	var truth atomic.Int64
	read := make(chan struct{})
	hold := make(chan struct{})
	var first atomic.Bool
	load := func(ctx context.Context) (int, error) {
		v := int(truth.Load())
		if first.CompareAndSwap(false, true) {
			close(read)
			<-hold // the first load has read the source and is slow to return
		}
		return v, nil
	}
	done1 := make(chan int, 1)
	go func() {
		v, _ := a.GetOrLoad(bg(), "k", load)
		done1 <- v
	}()
	<-read
	truth.Store(1)
	if err := b.Invalidate(bg(), "k"); err != nil {
		t.Fatal(err)
	}
	done2 := make(chan int, 1)
	go func() {
		v, _ := a.GetOrLoad(bg(), "k", load) // begins after the Invalidate returned
		done2 <- v
	}()
	time.Sleep(50 * time.Millisecond) // let it join the first load, if it would
	close(hold)
	if v := <-done1; v != 0 {
		t.Errorf("first call: %d, want 0", v)
	}
	if v := <-done2; v != 1 {
		t.Fatalf("a call that began after Invalidate returned got version %d, loaded before it (want 1)", v)
	}
}

// Calls that wait for a store-less load that began before them (loadWithoutStore) share one
// next load when it ends: they wake at once, and checking for a registered flight and starting
// one is one step, so no two of them start one each.
func TestFailOpenWaitersShareOneNextLoad(t *testing.T) {
	c := newTestCache[int](t, downStore{NewMemoryStore()})
	const waiters, rounds = 10, 20
	for round := range rounds {
		key := "k" + strconv.Itoa(round)
		release := make(chan struct{})
		var loads atomic.Int64
		load := func(context.Context) (int, error) {
			if loads.Add(1) == 1 {
				<-release // the first load holds until every waiter waits for it
				return 1, nil
			}
			// The next holds until no waiter is between the two loads any more (a load takes a
			// while; one that ended at once would leave latecomers nothing to join).
			for deadline := time.Now().Add(5 * time.Second); parkedStoreless(t.Name()) > 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			return 1, nil
		}
		first := make(chan error, 1)
		go func() { _, err := c.GetOrLoad(bg(), key, load); first <- err }()
		eventually(t, 5*time.Second, "the first load", func() (bool, string) { return loads.Load() == 1, "" })
		var wg sync.WaitGroup
		for range waiters {
			wg.Go(func() {
				if _, err := c.GetOrLoad(bg(), key, load); err != nil {
					t.Error(err)
				}
			})
		}
		eventually(t, 5*time.Second, "waiters parked on the first load", func() (bool, string) {
			n := parkedStoreless(t.Name())
			return n == waiters, strconv.Itoa(n) + " parked"
		})
		close(release)
		within(t, 5*time.Second, "the callers", wg.Wait)
		require.NoError(t, <-first)
		require.EqualValues(t, 2, loads.Load(), "round %d: the first load, then one for all the waiters", round)
	}
}

// parkedStoreless counts the goroutines of the test named test that are inside
// loadWithoutStore: waiting for a load that began before them, or about to start or join one.
func parkedStoreless(test string) int {
	n := 0
	for _, g := range goroutineStacks() {
		if bytes.Contains(g, []byte(").loadWithoutStore(")) && bytes.Contains(g, []byte("cacheaside."+test+".")) {
			n++
		}
	}
	return n
}
