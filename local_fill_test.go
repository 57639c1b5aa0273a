package cacheaside

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hookStore wraps a broadcasting store and lets a test stop a call right after the store
// answered it.
type hookStore struct {
	Store
	bus          Broadcaster
	afterGet     atomic.Pointer[func(key string, lk Lookup)]
	afterFill    atomic.Pointer[func(key string, stored bool)]
	afterGetMany atomic.Pointer[func(keys []string, lks []Lookup)]
}

func newHookStore(s Store) *hookStore { return &hookStore{Store: s, bus: s.(Broadcaster)} }

func (h *hookStore) Publish(ctx context.Context, channel string, msg []byte) error {
	return h.bus.Publish(ctx, channel, msg)
}
func (h *hookStore) Subscribe(channel string) Subscription { return h.bus.Subscribe(channel) }

func (h *hookStore) GetOrLease(ctx context.Context, key, token string, leaseTTL time.Duration) (Lookup, error) {
	lk, err := h.Store.GetOrLease(ctx, key, token, leaseTTL)
	if f := h.afterGet.Load(); f != nil && err == nil {
		(*f)(key, lk)
	}
	return lk, err
}

func (h *hookStore) GetOrLeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	lks, err := h.Store.GetOrLeaseMany(ctx, keys, token, leaseTTL)
	if f := h.afterGetMany.Load(); f != nil && err == nil {
		(*f)(keys, lks)
	}
	return lks, err
}

func (h *hookStore) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	stored, err := h.Store.Fill(ctx, key, token, value, ttl)
	if f := h.afterFill.Load(); f != nil && err == nil {
		(*f)(key, stored)
	}
	return stored, err
}

// gate stops the first goroutine that passes it until released.
type gate struct {
	once     sync.Once
	reached  chan struct{}
	released chan struct{}
}

func newGate() *gate { return &gate{reached: make(chan struct{}), released: make(chan struct{})} }

func (g *gate) pass() {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.reached)
		<-g.released
	}
}

// messages returns a channel that gets a value each time c applies a message from another
// instance.
func messages[T any](c *Cache[T]) chan struct{} {
	ch := make(chan struct{}, 1000)
	f := func() { ch <- struct{}{} }
	c.l1.onMessage.Store(&f)
	return ch
}

func waitFor(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not happen within 20s", what)
	}
}

// An L1 fill that began before an invalidation is never served, whether the invalidation is
// this instance's own or delivered from another, and whether the value came from a store hit
// or from a load the store accepted.
func TestLocalLateFillIsNeverServed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		_ = b.newStore(t) // a server (miniredis) or store (memory) that outlives the subtests
		for _, tc := range []struct {
			name   string
			viaHit bool // the value comes from a store hit (else from a load and an accepted fill)
			remote bool // the invalidation comes from the other instance
		}{
			{"store hit, remote invalidation", true, true},
			{"store hit, own invalidation", true, false},
			{"accepted fill, remote invalidation", false, true},
			{"accepted fill, own invalidation", false, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				prefix := testPrefix(t)
				opts := append(append(append([]Option{}, b.opts...), slowMachine...), l1Opts(WithPrefix(prefix))...)
				hs := newHookStore(b.newStore(t))
				slow := newTestCache[int64](t, hs, opts...)
				other := newTestCache[int64](t, b.newStore(t), opts...)
				waitLive(t, slow, other)
				got := messages(slow)

				var sot atomic.Int64
				sot.Store(1)
				load := func(context.Context) (int64, error) { return sot.Load(), nil }
				if tc.viaHit {
					if _, err := other.GetOrLoad(bg(), "k", load); err != nil { // the store holds 1
						t.Fatal(err)
					}
				}
				g := newGate()
				if tc.viaHit {
					f := func(key string, lk Lookup) {
						if lk.Value != nil {
							g.pass()
						}
					}
					hs.afterGet.Store(&f)
				} else {
					f := func(key string, stored bool) {
						if stored {
							g.pass()
						}
					}
					hs.afterFill.Store(&f)
				}
				res := make(chan int64, 1)
				go func() {
					v, err := slow.GetOrLoad(bg(), "k", load)
					if err != nil {
						t.Error(err)
					}
					res <- v
				}()
				waitFor(t, g.reached, "the read of the old value")
				sot.Store(2)
				if tc.remote {
					if err := other.Invalidate(bg(), "k"); err != nil {
						t.Fatal(err)
					}
					waitFor(t, got, "the delivery of the invalidation")
				} else if err := slow.Invalidate(bg(), "k"); err != nil {
					t.Fatal(err)
				}
				close(g.released)
				if v := <-res; v != 1 {
					t.Fatalf("the racing read returned %d, want 1 (it began before the write)", v)
				}
				if v, err := slow.GetOrLoad(bg(), "k", load); err != nil || v != 2 {
					t.Fatalf("after the invalidation: %d, %v; want 2 (the late fill must not be served)", v, err)
				}
			})
		}
	})
}

// A load whose fill the store refused (an invalidation voided its lease) is returned to the
// caller that started it, but never kept in L1, even before the invalidation's message
// arrives.
func TestLocalRefusedFillStaysOut(t *testing.T) {
	ms := NewMemoryStore()
	defer ms.Close()
	bus := &manualBus{ready: make(chan struct{})}
	c := newTestCache[int64](t, manualStore{ms, bus}, l1Opts()...)
	<-bus.ready
	bus.emit(SubscriptionLive, nil)

	var sot atomic.Int64
	sot.Store(1)
	started, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	load := func(context.Context) (int64, error) {
		v := sot.Load()
		if first.CompareAndSwap(false, true) {
			close(started)
			<-release
		}
		return v, nil
	}
	res := make(chan int64, 1)
	go func() {
		v, err := c.GetOrLoad(bg(), "k", load)
		if err != nil {
			t.Error(err)
		}
		res <- v
	}()
	waitFor(t, started, "the load")
	sot.Store(2)
	removeBehindBack(t, c, "k") // another instance's Invalidate; its message is not delivered yet
	close(release)
	if v := <-res; v != 1 {
		t.Fatalf("the caller that loaded got %d, want its own load's 1", v)
	}
	if _, ok := c.l1.entries.GetIfPresent("k"); ok {
		t.Fatal("a refused fill was kept in L1")
	}
	if v, err := c.GetOrLoad(bg(), "k", load); err != nil || v != 2 {
		t.Fatalf("next read: %d, %v; want 2", v, err)
	}
}

// A batch that waited for another process's lease keeps the value it then read in L1.
func TestLocalBatchWaitFillsL1(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		prefix := testPrefix(t)
		opts := append(append(append([]Option{}, b.opts...), slowMachine...), l1Opts(WithPrefix(prefix))...)
		hs := newHookStore(b.newStore(t))
		batcher := newTestCache[int64](t, hs, opts...)
		loader := newTestCache[int64](t, b.newStore(t), opts...)
		waitLive(t, batcher, loader)

		started, release := make(chan struct{}), make(chan struct{})
		go func() {
			_, err := loader.GetOrLoad(bg(), "k", func(context.Context) (int64, error) {
				close(started)
				<-release
				return 1, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
		waitFor(t, started, "the other instance's load")
		held := make(chan struct{})
		var once sync.Once
		f := func(keys []string, lks []Lookup) {
			if len(lks) == 1 && lks[0].Holder != "" {
				once.Do(func() { close(held) })
			}
		}
		hs.afterGetMany.Store(&f)
		var batchLoads atomic.Int64
		load := func(_ context.Context, missing []string) (map[string]int64, error) {
			batchLoads.Add(1)
			return map[string]int64{"k": 2}, nil
		}
		res := make(chan map[string]int64, 1)
		go func() {
			m, err := batcher.GetOrLoadMany(bg(), []string{"k"}, load)
			if err != nil {
				t.Error(err)
			}
			res <- m
		}()
		waitFor(t, held, "the batch finding the key leased")
		close(release)
		if m := <-res; m["k"] != 1 {
			t.Fatalf("the batch got %v, want the other instance's 1", m)
		}
		removeBehindBack(t, batcher, "k")
		if m, err := batcher.GetOrLoadMany(bg(), []string{"k"}, load); err != nil || m["k"] != 1 || batchLoads.Load() != 0 {
			t.Fatalf("from L1: %v, %v, %d batch loads; want 1 without a load", m, err, batchLoads.Load())
		}
	})
}
