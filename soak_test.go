package cacheaside

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestSoak runs mixed reads, writes and faults at full speed on every store at once, for
// CACHEASIDE_SOAK (a duration; make soak sets one minute), on long-lived caches: every round
// of every store must show no violation of guarantee 2, and the heap (after a GC) and the
// goroutine count must stay flat from the end of the first round to the end of the run.
func TestSoak(t *testing.T) {
	spec := os.Getenv("CACHEASIDE_SOAK")
	if spec == "" {
		t.Skip("set CACHEASIDE_SOAK to a duration (make soak) to run the soak")
	}
	dur, err := time.ParseDuration(spec)
	if err != nil || dur <= 0 {
		t.Fatalf("CACHEASIDE_SOAK=%q: want a positive duration", spec)
	}

	type lane struct {
		sc     linzScenario
		store  string
		tg     *linzTarget
		caches []*Cache[linzValue]
		res    linzResult
		rounds int
	}
	work := baseWork
	work.rounds = 1
	faulty := linzScenario{name: "soak", opts: concat(faultOpts, []Option{WithTTL(time.Minute)}), work: work, fault: faultMixed, proxy: true}
	healthy := linzScenario{name: "soak", opts: concat(healthyOpts, []Option{WithTTL(time.Minute)}), work: work}
	var lanes []*lane
	for _, l := range []struct {
		store string
		sc    linzScenario
	}{{storeMemory, healthy}, {storeRedis, faulty}, {storeCluster, faulty}, {storeOwn, faulty}} {
		tg := newLinzTarget(t, l.store, l.sc.proxy)
		if tg.memory == nil {
			tg.admin(t)
		}
		prefix := testPrefix(t)
		caches := make([]*Cache[linzValue], work.instances)
		for i := range caches {
			caches[i] = newTestCache[linzValue](t, tg.newStore(t), concat([]Option{WithPrefix(prefix)}, l.sc.opts)...)
		}
		lanes = append(lanes, &lane{sc: l.sc, store: l.store, tg: tg, caches: caches})
	}

	round := func(ln *lane) {
		h, _ := linzRound(t, ln.sc, ln.tg, ln.caches, fmt.Sprintf("r%d:", ln.rounds))
		ln.rounds++
		r := h.check("soak/"+ln.store, false, 0)
		if r.violations > 0 || r.unknown > 0 {
			t.Errorf("soak on %s, round %d: %d violations, %d unknown; first: %s", ln.store, ln.rounds, r.violations, r.unknown, r.viz)
		}
		ln.res.merge(r)
	}
	// Warm up: one round everywhere, then the baseline.
	for _, ln := range lanes {
		round(ln)
	}
	heap0, gor0 := settledHeap(), runtime.NumGoroutine()

	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for _, ln := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && !t.Failed() {
				round(ln)
			}
		}()
	}
	wg.Wait()

	var heap1 uint64
	var gor1 int
	// Goroutines of the last faults (timers lifting blackholes, calls abandoned at their store
	// timeout) end within a few seconds: give them that, never a tight bound.
	for wait := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		heap1, gor1 = settledHeap(), runtime.NumGoroutine()
		if gor1 <= gor0+25 || time.Now().After(wait) {
			break
		}
	}
	for _, ln := range lanes {
		t.Log(linzLine(linzScenario{name: "soak", strict: false}, ln.store, ln.res, fmt.Sprintf("%d rounds of mixed faults", ln.rounds)))
	}
	t.Logf("soak: heap %.1f MiB -> %.1f MiB, goroutines %d -> %d, over %v", mib(heap0), mib(heap1), gor0, gor1, dur)
	if heap1 > 2*heap0+32<<20 {
		t.Errorf("heap grew from %.1f MiB to %.1f MiB", mib(heap0), mib(heap1))
	}
	if gor1 > gor0+25 {
		t.Errorf("goroutines grew from %d to %d", gor0, gor1)
	}
}

// settledHeap returns the live heap after a full collection.
func settledHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
