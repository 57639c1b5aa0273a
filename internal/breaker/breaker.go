// Package breaker is the circuit breaker that lets a cache skip a sick store.
//
// After Threshold consecutive failures the breaker opens: Allow reports false and callers go
// straight to their loaders, paying nothing for the store. While it is open, Run probes the
// store in the background every interval, and the first successful probe closes it again. No
// caller ever pays for a probe.
package breaker

import (
	"context"
	"sync/atomic"
	"time"
)

// Breaker counts consecutive store failures. The zero value is not usable; use New.
type Breaker struct {
	threshold int32
	failures  atomic.Int32
	open      atomic.Bool
	opened    chan struct{} // wakes Run; capacity 1
	onChange  func(open bool)
}

// New returns a closed breaker that opens after threshold consecutive failures. onChange, if
// not nil, is called on every transition, from the goroutine that caused it.
func New(threshold int, onChange func(open bool)) *Breaker {
	if threshold < 1 {
		threshold = 1
	}
	return &Breaker{threshold: int32(threshold), opened: make(chan struct{}, 1), onChange: onChange}
}

// Allow reports whether the store should be used. It is one atomic load.
func (b *Breaker) Allow() bool { return !b.open.Load() }

// Open reports whether the breaker is open.
func (b *Breaker) Open() bool { return b.open.Load() }

// Success records a store operation that worked.
func (b *Breaker) Success() {
	if b.failures.Load() != 0 {
		b.failures.Store(0)
	}
}

// Failure records a store operation that failed, and opens the breaker at the threshold.
func (b *Breaker) Failure() {
	if b.failures.Add(1) >= b.threshold {
		b.Trip()
	}
}

// Trip opens the breaker now, whatever the count.
func (b *Breaker) Trip() {
	b.failures.Store(b.threshold)
	if b.open.CompareAndSwap(false, true) {
		select {
		case b.opened <- struct{}{}:
		default:
		}
		if b.onChange != nil {
			b.onChange(true)
		}
	}
}

func (b *Breaker) reset() {
	b.failures.Store(0)
	if b.open.CompareAndSwap(true, false) && b.onChange != nil {
		b.onChange(false)
	}
}

// Run probes while the breaker is open, every interval, each probe bounded by timeout, until
// ctx ends. The first probe that returns nil closes the breaker.
func (b *Breaker) Run(ctx context.Context, interval, timeout time.Duration, probe func(context.Context) error) {
	t := time.NewTimer(interval)
	t.Stop()
	defer t.Stop()
	for {
		if !b.open.Load() {
			select {
			case <-ctx.Done():
				return
			case <-b.opened:
			}
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := probe(pctx)
		cancel()
		if err == nil && ctx.Err() == nil {
			b.reset()
		}
	}
}
