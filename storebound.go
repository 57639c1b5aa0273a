package cacheaside

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Bounding store calls without a timer per call.
//
// Every store call is bounded by the store timeout (guarantee 3: a hung store costs a caller
// at most that, then it fails open). context.WithTimeout per call costs a timer, a cancel
// context and their allocations on every hit. Calls that start within the same slice of time
// (boundSlice) share one deadline instead: that slice's end plus the store timeout, with one
// timer that fires once for all of them. A call is thus bounded by the store
// timeout plus at most one slice, and costs one small allocation (its boundCtx, which keeps
// the caller's values for tracing and client hooks).

// boundSlices is how many slices the store timeout is cut into: a call is bounded by the store
// timeout plus at most 1/boundSlices of it (50 ms: 3.1 ms).
const boundSlices = 16

// sharedDeadline is the deadline of the store calls that start within one slice: done is
// closed by one timer at deadline, after expired is set.
type sharedDeadline struct {
	done     chan struct{}
	expired  atomic.Bool
	deadline time.Time
	until    time.Time // calls starting after this take the next slice
}

// deadlines hands out the current slice's sharedDeadline for one timeout.
type deadlines struct {
	timeout time.Duration
	slice   time.Duration
	cur     atomic.Pointer[sharedDeadline]
	mu      sync.Mutex // one goroutine makes the next slice
}

func newDeadlines(timeout time.Duration) *deadlines {
	return &deadlines{timeout: timeout, slice: max(timeout/boundSlices, 100*time.Microsecond)}
}

// get returns a deadline at least d.timeout after now, and at most d.timeout + d.slice.
func (d *deadlines) get(now time.Time) *sharedDeadline {
	if s := d.cur.Load(); s != nil && !now.After(s.until) {
		return s
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.cur.Load(); s != nil && !now.After(s.until) {
		return s
	}
	until := now.Add(d.slice)
	deadline := until.Add(d.timeout)
	s := &sharedDeadline{done: make(chan struct{}), deadline: deadline, until: until}
	time.AfterFunc(deadline.Sub(now), func() {
		s.expired.Store(true)
		close(s.done)
	})
	d.cur.Store(s)
	return s
}

// boundCtx is a caller's context (for its values) bounded by a shared deadline. The caller's
// context must have no Done channel of its own (it is detached: context.WithoutCancel).
type boundCtx struct {
	context.Context
	d *sharedDeadline
}

func (b *boundCtx) Deadline() (time.Time, bool) { return b.d.deadline, true }
func (b *boundCtx) Done() <-chan struct{}       { return b.d.done }

func (b *boundCtx) Err() error {
	if b.d.expired.Load() {
		return context.DeadlineExceeded
	}
	return nil
}

// Value keeps the caller's values, but not the cancel context context.Cause looks for: the
// caller's (a detached context) has none, and Cause must then report Err.
func (b *boundCtx) Value(key any) any { return b.Context.Value(key) }

func noCancel() {}
