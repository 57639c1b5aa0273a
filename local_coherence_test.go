package cacheaside

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// While the subscription is down the L1 is neither read nor filled, and nothing stored before
// a loss or a resubscription is served after it; a message it cannot parse flushes it.
func TestLocalSubscriptionLossFlushesAndBypasses(t *testing.T) {
	ms := NewMemoryStore()
	defer ms.Close()
	bus := &manualBus{ready: make(chan struct{})}
	c := newTestCache[int64](t, manualStore{ms, bus}, l1Opts()...)
	<-bus.ready
	var n counter
	read := func(want int64, what string) {
		t.Helper()
		if v, err := c.GetOrLoad(bg(), "k", n.load); err != nil || v != want {
			t.Fatalf("%s: %d, %v; want %d", what, v, err, want)
		}
	}
	if c.l1.isLive() {
		t.Fatal("live before the subscription was confirmed")
	}
	read(1, "before subscription")
	removeBehindBack(t, c, "k")
	read(2, "before subscription, no L1")

	bus.emit(SubscriptionLive, nil)
	read(2, "store hit") // fills L1
	removeBehindBack(t, c, "k")
	read(2, "L1 hit")

	bus.emit(SubscriptionLost, nil)
	read(3, "subscription lost: L1 not read")
	removeBehindBack(t, c, "k")
	read(4, "subscription lost: L1 not filled")

	bus.emit(SubscriptionLive, nil)
	read(4, "store hit after resubscription")
	removeBehindBack(t, c, "k")
	read(4, "L1 hit after resubscription")

	bus.emit(SubscriptionLost, nil)
	bus.emit(SubscriptionLive, nil)
	read(5, "an entry from before a loss")
	removeBehindBack(t, c, "k")
	read(5, "L1 hit")

	bus.emit(SubscriptionMessage, []byte("not a message of ours"))
	read(6, "after an unreadable message")

	bus.emit(SubscriptionMessage, encodeKeysMsg("another instance", []string{"other", "k"}))
	removeBehindBack(t, c, "k")
	read(7, "after a message naming the key")
	removeBehindBack(t, c, "k")
	bus.emit(SubscriptionMessage, encodeKeysMsg(c.gw.tokens.id, []string{"k"}))
	read(7, "its own message changes nothing")
	bus.emit(SubscriptionMessage, encodeAllMsg("another instance", "*"))
	read(8, "after a pattern message")
}

func TestLocalInvalidationReachesOtherInstances(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[int64](t, b, 3, l1Opts()...)
		waitLive(t, cs...)
		var version atomic.Int64
		version.Store(1)
		load := func(context.Context) (int64, error) { return version.Load(), nil }
		for _, c := range cs {
			for _, k := range []string{"a", "b", "p:1", "p:2"} {
				if _, err := c.GetOrLoad(bg(), k, load); err != nil {
					t.Fatal(err)
				}
			}
		}
		version.Store(2)
		if err := cs[0].Invalidate(bg(), "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := cs[1].InvalidatePattern(bg(), "p:*"); err != nil {
			t.Fatal(err)
		}
		for i, c := range cs {
			for k, want := range map[string]int64{"a": 2, "b": 1, "p:1": 2, "p:2": 2} {
				eventually(t, 20*time.Second, fmt.Sprintf("instance %d key %s", i, k), func() (bool, string) {
					v, err := c.GetOrLoad(bg(), k, load)
					return err == nil && v == want, fmt.Sprintf("got %d, %v; want %d", v, err, want)
				})
			}
		}
	})
}

// eventually polls cond until it holds, failing the test after d (a generous bound).
func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, d, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// coherenceRun drives writers and readers over cs for d and checks, on each instance, that no
// read returns a version older than one whose Invalidate had returned on that instance before
// the read began; at rest, every instance must agree with the source of truth. It returns how
// many invalidations each instance made.
func coherenceRun(t *testing.T, cs []*Cache[int64], keys int, d time.Duration, during func(stop <-chan struct{})) []int64 {
	sot := make([]atomic.Int64, keys)
	wmu := make([]sync.Mutex, keys)
	invDone := make([][]atomic.Int64, len(cs)) // per instance and key
	for i := range invDone {
		invDone[i] = make([]atomic.Int64, keys)
	}
	key := func(k int) string { return fmt.Sprintf("k%d", k) }
	loader := func(k int) func(context.Context) (int64, error) {
		return func(context.Context) (int64, error) { return sot[k].Load(), nil }
	}
	var reads, loads, stale atomic.Int64
	writes := make([]atomic.Int64, len(cs))
	counted := func(k int) func(context.Context) (int64, error) {
		return func(ctx context.Context) (int64, error) { loads.Add(1); return loader(k)(ctx) }
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() { // a writer per instance
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := rand.N(keys)
				wmu[k].Lock()
				v := sot[k].Add(1)
				for attempt := 0; ; attempt++ {
					err := c.Invalidate(bg(), key(k))
					if err == nil {
						break
					}
					if attempt == 50 {
						t.Errorf("Invalidate keeps failing: %v", err)
						break
					}
				}
				invDone[i][k].Store(v)
				writes[i].Add(1)
				wmu[k].Unlock()
				time.Sleep(time.Duration(rand.N(3)) * time.Millisecond)
			}
		}()
		for range 3 {
			wg.Add(1)
			go func() { // readers
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					k := rand.N(keys)
					floor := invDone[i][k].Load()
					v, err := c.GetOrLoad(bg(), key(k), counted(k))
					reads.Add(1)
					if err != nil {
						t.Errorf("instance %d: %v", i, err)
						continue
					}
					if v < floor && stale.Add(1) <= 5 {
						t.Errorf("instance %d read %s = %d after its own Invalidate of version %d had returned", i, key(k), v, floor)
					}
				}
			}()
		}
	}
	if during != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			during(stop)
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	t.Logf("%d reads, %d loads, %d stale", reads.Load(), loads.Load(), stale.Load())

	waitLive(t, cs...)
	for i, c := range cs {
		for k := range keys {
			eventually(t, 20*time.Second, fmt.Sprintf("at rest, instance %d %s", i, key(k)), func() (bool, string) {
				v, err := c.GetOrLoad(bg(), key(k), loader(k))
				return err == nil && v == sot[k].Load(), fmt.Sprintf("got %d, %v; source of truth %d", v, err, sot[k].Load())
			})
		}
	}
	out := make([]int64, len(cs))
	for i := range out {
		out[i] = writes[i].Load()
	}
	return out
}

func TestLocalThreeInstancesStayCoherent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		cs := instances[int64](t, b, 3, l1Opts(slowMachine...)...)
		waitLive(t, cs...)
		// 2 s per store in make verify; 1 s in make test (-short).
		d := 2 * time.Second
		if testing.Short() {
			d = time.Second
		}
		coherenceRun(t, cs, 8, d, nil)
	})
}
