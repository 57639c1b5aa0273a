package breaker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// transitions records onChange calls.
type transitions struct {
	mu  sync.Mutex
	got []bool
}

func (r *transitions) note(open bool) {
	r.mu.Lock()
	r.got = append(r.got, open)
	r.mu.Unlock()
}

func (r *transitions) list() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.got...)
}

// It opens after threshold consecutive failures, not after as many scattered among successes,
// and tells onChange once.
func TestOpensOnConsecutiveFailures(t *testing.T) {
	var tr transitions
	b := New(3, tr.note)
	for range 10 {
		b.Failure()
		b.Failure()
		b.Success()
	}
	if !b.Allow() || b.Open() {
		t.Fatal("opened on failures that successes interrupted")
	}
	b.Failure()
	b.Failure()
	if !b.Allow() {
		t.Fatal("opened before the threshold")
	}
	b.Failure()
	if b.Allow() || !b.Open() {
		t.Fatal("still closed after 3 consecutive failures")
	}
	b.Failure()
	b.Trip()
	if got := tr.list(); !slices.Equal(got, []bool{true}) {
		t.Fatalf("transitions = %v, want one open", got)
	}
}

// A threshold below 1 means the first failure opens it.
func TestThresholdAtLeastOne(t *testing.T) {
	b := New(0, nil)
	b.Failure()
	if b.Allow() {
		t.Fatal("a failure with threshold 0 left the breaker closed")
	}
}

// Run probes only while the breaker is open, keeps probing while probes fail, closes it on
// the first probe that works, waits for the next opening, and returns when ctx ends.
func TestRunProbes(t *testing.T) {
	var tr transitions
	b := New(1, tr.note)
	var probes atomic.Int32
	var healthy atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx, time.Millisecond, time.Second, func(pctx context.Context) error {
			if _, ok := pctx.Deadline(); !ok {
				t.Error("a probe without a timeout")
			}
			probes.Add(1)
			if healthy.Load() {
				return nil
			}
			return errors.New("down")
		})
	}()
	time.Sleep(20 * time.Millisecond)
	if n := probes.Load(); n != 0 {
		t.Fatalf("%d probes while the breaker was closed", n)
	}

	b.Failure() // opens
	poll(t, "failed probes", func() bool { return probes.Load() >= 3 })
	if b.Allow() {
		t.Fatal("a failed probe closed the breaker")
	}
	healthy.Store(true)
	poll(t, "the breaker closes", func() bool { return b.Allow() })
	poll(t, "the close is told", func() bool { return len(tr.list()) == 2 })
	settled := probes.Load()
	time.Sleep(20 * time.Millisecond)
	if n := probes.Load(); n != settled {
		t.Fatalf("%d probes after the breaker closed", n-settled)
	}

	b.Trip() // opens again: probing resumes
	poll(t, "the breaker closes again", func() bool { return b.Allow() && len(tr.list()) == 4 })
	if got := tr.list(); !slices.Equal(got, []bool{true, false, true, false}) {
		t.Fatalf("transitions = %v", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// A probe that succeeds only because Run is stopping does not close the breaker.
func TestRunStoppedMidProbe(t *testing.T) {
	b := New(1, nil)
	b.Trip()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx, time.Millisecond, time.Second, func(context.Context) error {
			cancel()
			return nil
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if b.Allow() {
		t.Fatal("a probe that ran as Run stopped closed the breaker")
	}
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
