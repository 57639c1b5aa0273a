package cacheaside

import (
	"bytes"
	"context"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// goid returns the calling goroutine's id, from its stack header ("goroutine 7 [running]:").
func goid(t *testing.T) uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	id, err := strconv.ParseUint(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	require.NoError(t, err)
	return id
}

// waitIdle waits until the pool has n idle workers.
func waitIdle(t *testing.T, p *workers, n int) {
	t.Helper()
	eventually(t, 5*time.Second, "idle workers", func() (bool, string) {
		idle := p.idleCount()
		return idle >= n, strconv.Itoa(idle) + " idle"
	})
}

// runBlocked starts n functions on l's pool that block until the returned release is called,
// and returns once all n run.
func runBlocked(t *testing.T, l *lifecycle, n int) (release func()) {
	t.Helper()
	var wg sync.WaitGroup
	ch := make(chan struct{})
	for range n {
		wg.Add(1)
		require.True(t, l.goOwned(func() { wg.Done(); <-ch }))
	}
	wg.Wait()
	return func() { close(ch) }
}

// Consecutive misses run their loads on one reused goroutine, not on a new one each (whose
// stack would grow again through every load).
func TestWorkersReuseLoadGoroutine(t *testing.T) {
	c := newTestCache[int](t, NewMemoryStore())
	ids := map[uint64]bool{}
	for i := range 20 {
		if i > 0 {
			waitIdle(t, &c.life.pool, 1)
		}
		v, err := c.GetOrLoad(bg(), "k"+strconv.Itoa(i), func(context.Context) (int, error) {
			ids[goid(t)] = true
			return i, nil
		})
		require.NoError(t, err)
		require.Equal(t, i, v)
	}
	require.Len(t, ids, 1, "every load ran on the same pooled goroutine")
}

// An idle worker ends after the idle timeout.
func TestWorkersEndWhenIdle(t *testing.T) {
	l := newLifecycle()
	l.pool.idle = 20 * time.Millisecond
	ran := make(chan struct{})
	require.True(t, l.goOwned(func() { close(ran) }))
	<-ran
	within(t, 5*time.Second, "the idle worker ending", l.wait)
	require.Zero(t, l.pool.idleCount())
	l.close()
}

// Close ends the idle workers (at their default idle timeout of 10 s they would outlive it), and
// wait waits for them.
func TestWorkersEndOnClose(t *testing.T) {
	l := newLifecycle()
	runBlocked(t, l, 5)()
	waitIdle(t, &l.pool, 5)
	require.True(t, l.close())
	within(t, 5*time.Second, "wait after close", l.wait)
	require.Zero(t, l.pool.idleCount())
	require.False(t, l.goOwned(func() { t.Error("ran after close") }))
}

// At most maxIdle workers wait; the others end when their function returns.
func TestWorkersMaxIdle(t *testing.T) {
	l := newLifecycle()
	l.pool.maxIdle = 2
	runBlocked(t, l, 6)()
	waitIdle(t, &l.pool, 2)
	time.Sleep(20 * time.Millisecond) // the other four, had they parked, would show now
	require.Equal(t, 2, l.pool.idleCount())
	l.close()
	within(t, 5*time.Second, "wait after close", l.wait)
}

// A function that calls runtime.Goexit ends its worker and nothing else: the pool goes on.
func TestWorkersGoexit(t *testing.T) {
	l := newLifecycle()
	done := make(chan struct{})
	require.True(t, l.goOwned(func() { defer close(done); runtime.Goexit() }))
	<-done
	ran := make(chan struct{})
	require.True(t, l.goOwned(func() { close(ran) }))
	within(t, 5*time.Second, "a function after a Goexit", func() { <-ran })
	l.close()
	within(t, 5*time.Second, "wait after close", l.wait)
}

// Many goroutines handing functions to workers that time out about as fast as they park: every
// function runs once, and close waits for every worker (run with -race).
func TestWorkersConcurrent(t *testing.T) {
	l := newLifecycle()
	l.pool.idle = time.Microsecond * 200
	l.pool.maxIdle = 4
	var ran atomic.Int64
	var wg sync.WaitGroup
	const goroutines, each = 8, 500
	for range goroutines {
		wg.Go(func() {
			for i := range each {
				if !l.goOwned(func() { ran.Add(1) }) {
					t.Error("refused while open")
				}
				if i%50 == 0 {
					time.Sleep(time.Millisecond) // let some workers time out
				}
			}
		})
	}
	within(t, 20*time.Second, "handing out functions", wg.Wait)
	l.close()
	within(t, 5*time.Second, "wait after close", l.wait)
	require.EqualValues(t, goroutines*each, ran.Load())
	require.Zero(t, l.pool.idleCount())
}

// labelProbe blocks a loader until the test has read the goroutine profile; its name marks the
// loader's goroutine in that profile.
//
//go:noinline
func labelProbe(entered chan<- struct{}, release <-chan struct{}) {
	entered <- struct{}{}
	<-release
}

// probeLabels returns the profiler labels ("" for none) of the goroutine that calls the probe
// start hands out, as the goroutine profile shows them; start returns once that call returned.
func probeLabels(t *testing.T, start func(probe func())) string {
	t.Helper()
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		start(func() { labelProbe(entered, release) })
	}()
	<-entered
	var buf bytes.Buffer
	require.NoError(t, pprof.Lookup("goroutine").WriteTo(&buf, 1))
	close(release)
	<-done
	for rec := range strings.SplitSeq(buf.String(), "\n\n") {
		if !strings.Contains(rec, ".labelProbe+") {
			continue
		}
		for line := range strings.SplitSeq(rec, "\n") {
			if l, ok := strings.CutPrefix(line, "# labels: "); ok {
				return l
			}
		}
		return ""
	}
	t.Fatal("no probe goroutine in the profile")
	return ""
}

// loaderLabels runs a miss of key under ctx and returns the labels its loader ran under.
func loaderLabels(ctx context.Context, t *testing.T, c *Cache[int], key string) string {
	return probeLabels(t, func(probe func()) {
		_, err := c.GetOrLoad(ctx, key, func(context.Context) (int, error) { probe(); return 1, nil })
		require.NoError(t, err)
	})
}

// A load runs under its caller's profiler labels (pprof.Do), as on a goroutine of its own,
// whatever the pooled goroutine ran before; a load whose caller has none runs with none.
func TestWorkersProfilerLabels(t *testing.T) {
	c := newTestCache[int](t, NewMemoryStore())
	var got []string
	pprof.Do(bg(), pprof.Labels("req", "a"), func(ctx context.Context) {
		got = append(got, loaderLabels(ctx, t, c, "k1"))
	})
	waitIdle(t, &c.life.pool, 1)
	got = append(got, loaderLabels(bg(), t, c, "k2"))
	waitIdle(t, &c.life.pool, 1)
	pprof.Do(bg(), pprof.Labels("req", "c"), func(ctx context.Context) {
		got = append(got, loaderLabels(ctx, t, c, "k3"))
	})
	require.Equal(t, []string{`{"req":"a"}`, "", `{"req":"c"}`}, got)
}

// A pooled function starts with no profiler labels, whatever the one before it on the same
// goroutine set.
func TestWorkersDropLabels(t *testing.T) {
	l := newLifecycle()
	defer func() { l.close(); l.wait() }()
	ran := make(chan struct{})
	require.True(t, l.goOwned(func() {
		pprof.SetGoroutineLabels(pprof.WithLabels(bg(), pprof.Labels("req", "a")))
		close(ran)
	}))
	<-ran
	waitIdle(t, &l.pool, 1)
	got := probeLabels(t, func(probe func()) {
		done := make(chan struct{})
		require.True(t, l.goOwned(func() { probe(); close(done) }))
		<-done
	})
	require.Empty(t, got)
}
