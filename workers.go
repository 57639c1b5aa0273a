package cacheaside

import (
	"runtime/pprof"
	"slices"
	"sync"
	"time"
)

// Worker pool defaults: how many finished goroutines may wait for the next function, and how
// long one waits before it ends.
const (
	maxIdleWorkers = 256
	workerIdle     = 10 * time.Second
)

// workers runs functions on goroutines the Cache owns, reusing the ones that finished instead
// of starting one per function. A miss runs its load on such a goroutine; a new goroutine
// starts with a small stack and grows it (copying) through the load, the codec and the store
// call, 7.5 µs of CPU per miss on the fill benchmark, where a reused one already has the stack.
//
// A function runs with no profiler labels (runtime/pprof): whatever labels the worker's
// creator had, or an earlier function set, are dropped; a function that wants its caller's sets
// them from its context (flight.go does).
//
// Every worker is counted in its lifecycle's wait group from start to end, so Close waits for
// the idle ones too. A worker ends when the lifecycle's context is cancelled, after waiting
// idle (workerIdle) for a function, or when its function returns while maxIdle
// (maxIdleWorkers) others wait already. A function that calls runtime.Goexit
// ends its worker; a panic ends the process, as on any goroutine.
type workers struct {
	life    *lifecycle
	idle    time.Duration // 0: workerIdle
	maxIdle int           // 0: maxIdleWorkers

	mu     sync.Mutex
	parked []*worker // LIFO: the most recently used stack is the warmest
}

type worker struct {
	next chan func() // buffered 1: run hands a function over without waiting
}

// run runs fn on an idle worker, or on a new one. The caller must hold a count in the
// lifecycle's wait group (add) or otherwise know it is open: a new worker's Add then happens
// while the count is positive, as sync.WaitGroup requires.
func (p *workers) run(fn func()) {
	p.mu.Lock()
	if n := len(p.parked); n > 0 {
		w := p.parked[n-1]
		p.parked[n-1] = nil
		p.parked = p.parked[:n-1]
		p.mu.Unlock()
		w.next <- fn
		return
	}
	p.mu.Unlock()
	p.life.wg.Add(1)
	go p.work(&worker{next: make(chan func(), 1)}, fn)
}

// work runs fn, then the functions handed to w, until w is idle too long or the Cache closes.
func (p *workers) work(w *worker, fn func()) {
	defer p.life.wg.Done()
	var timer *time.Timer
	for {
		fn()
		pprof.SetGoroutineLabels(p.life.ctx) // none: the next function must not run under fn's
		if !p.park(w) {
			return
		}
		if timer == nil {
			timer = time.NewTimer(p.idleFor())
		} else {
			timer.Reset(p.idleFor())
		}
		select {
		case fn = <-w.next:
			timer.Stop()
			continue
		case <-timer.C:
		case <-p.life.ctx.Done():
		}
		if !p.unpark(w) {
			fn = <-w.next // run popped w and is handing it a function: run it
			timer.Stop()
			continue
		}
		return
	}
}

// park puts w on the idle stack, unless enough are idle or the Cache is closing.
func (p *workers) park(w *worker) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	limit := p.maxIdle
	if limit == 0 {
		limit = maxIdleWorkers
	}
	if len(p.parked) >= limit || p.life.closing() {
		return false
	}
	p.parked = append(p.parked, w)
	return true
}

// unpark takes w off the idle stack; false means run took it first.
func (p *workers) unpark(w *worker) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.Index(p.parked, w)
	if i < 0 {
		return false
	}
	p.parked = slices.Delete(p.parked, i, i+1)
	return true
}

// idleCount reports how many workers wait for a function (tests).
func (p *workers) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

func (p *workers) idleFor() time.Duration {
	if p.idle > 0 {
		return p.idle
	}
	return workerIdle
}
