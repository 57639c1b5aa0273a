package cacheaside

import (
	"context"
	"sync"
	"sync/atomic"
)

// lifecycle is what a Cache owns from New to Close: the goroutines it runs (loads, waits,
// refreshes, lease releases, subscribers, the store prober), which Close waits for; the
// context Close cancels to end them; and the closed flag.
//
// A goroutine is started only while the Cache is open (goOwned, add), and the check and the
// count happen under one lock, so Close never waits on a count that can still grow.
type lifecycle struct {
	mu     sync.Mutex
	closed atomic.Bool
	wg     sync.WaitGroup
	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	pool   workers // the goroutines goOwned and run use (workers.go)
}

func newLifecycle() *lifecycle {
	l := &lifecycle{}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.pool.life = l
	return l
}

// isClosed reports whether close has been called.
func (l *lifecycle) isClosed() bool { return l.closed.Load() }

// closing reports whether close has cancelled the lifecycle's context.
func (l *lifecycle) closing() bool { return l.ctx.Err() != nil }

// add counts one goroutine about to start, unless closed; a counted goroutine calls done.
func (l *lifecycle) add() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return false
	}
	l.wg.Add(1)
	return true
}

func (l *lifecycle) done() { l.wg.Done() }

// goOwned runs fn on a goroutine the Cache owns (close's wait includes it), unless closed. It
// reports whether it started fn.
func (l *lifecycle) goOwned(fn func()) bool {
	if !l.add() {
		return false
	}
	l.run(func() {
		defer l.wg.Done()
		fn()
	})
	return true
}

// run runs fn on a pooled goroutine the Cache owns. The caller holds a count from add, which
// fn releases with done.
func (l *lifecycle) run(fn func()) { l.pool.run(fn) }

// close refuses new goroutines and cancels the context; it reports false if it was closed
// already. wait then waits for the goroutines.
func (l *lifecycle) close() bool {
	l.mu.Lock()
	already := l.closed.Swap(true)
	l.mu.Unlock()
	if already {
		return false
	}
	l.cancel()
	return true
}

// wait returns once every goroutine started by goOwned or counted by add has ended.
func (l *lifecycle) wait() { l.wg.Wait() }
