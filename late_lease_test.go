package cacheaside

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
