package cacheaside

import (
	"context"
	"errors"
	"runtime/debug"
	"time"
)

// A flight is one shared resolution of a key in this process: a load under a lease this
// process holds, a wait for another process's lease, or (with the store unusable) a bare
// load. Callers join a flight only when the store has just told them its lease is live
// (flightKey.token), or, without the store, when the flight began after they did (seq).
// Either way the flight's result is no older than the caller.
type flight[T any] struct {
	done chan struct{}

	// Set before done is closed.
	val      T
	err      error
	panicked *PanicError
	retry    bool // the store did not take the value: joiners must read again
	loaded   bool // val and err come from a load under a lease granted after the owner began
	finished bool // done is closed; only the goroutine running the flight reads or sets it

	gen  uint64      // invalidation generation at start
	seq  uint64      // launch order in its Cache, for store-less joins
	regs []flightKey // where it is registered in Cache.flights
}

type flightKey struct {
	key   string // store key
	token string // lease token; "" for a store-less flight
}

// errLoaderExit is the error of a load whose loader called runtime.Goexit.
var errLoaderExit = errors.New("cacheaside: loader called runtime.Goexit")

// register makes f joinable under k. The caller holds c.mu.
func (c *Cache[T]) register(f *flight[T], k flightKey) {
	c.flights[k] = f
	f.regs = append(f.regs, k)
}

// launch registers a new flight under k and runs fn for it; see launchMany.
func (c *Cache[T]) launch(ctx context.Context, k flightKey, gen uint64, timeout time.Duration, fn func(ctx context.Context, f *flight[T])) *flight[T] {
	fs := c.launchMany(ctx, []flightKey{k}, []uint64{gen}, timeout, func(ctx context.Context, fs []*flight[T]) {
		fn(ctx, fs[0])
	})
	if fs == nil {
		return nil
	}
	return fs[0]
}

// launchMany registers one new flight per key and runs fn for all of them on one goroutine the
// Cache owns, with a context detached from ctx's cancellation, bounded by timeout (none if
// timeout is 0), and cancelled by Close. Each flight completes when fn finishes it (finish)
// or, at the latest, when fn returns. A nil keys registers none (flights nobody may join). It
// returns nil after Close.
func (c *Cache[T]) launchMany(ctx context.Context, keys []flightKey, gens []uint64, timeout time.Duration, fn func(ctx context.Context, fs []*flight[T])) []*flight[T] {
	fs, _ := c.spawn(ctx, keys, gens, timeout, spawnAll, func(ctx context.Context, fs []*flight[T], _ []int) {
		fn(ctx, fs)
	})
	return fs
}

// launchFree is launchMany for the keys under which no flight is registered, checked and
// registered in one step: two callers never both start one for a key. fn gets the new
// flights and the indexes of their keys in keys. Nothing runs if every key is taken, or after
// Close.
func (c *Cache[T]) launchFree(ctx context.Context, keys []flightKey, gens []uint64, timeout time.Duration, fn func(ctx context.Context, fs []*flight[T], idx []int)) {
	c.spawn(ctx, keys, gens, timeout, spawnFree, fn)
}

// joinOrLaunch returns the flight registered under k, or registers and runs a new one with fn
// (see launchMany), in one step: two callers never both start one. started reports which.
func (c *Cache[T]) joinOrLaunch(ctx context.Context, k flightKey, gen uint64, timeout time.Duration, fn func(ctx context.Context, f *flight[T])) (f *flight[T], started bool) {
	fs, joined := c.spawn(ctx, []flightKey{k}, []uint64{gen}, timeout, spawnJoin, func(ctx context.Context, fs []*flight[T], _ []int) {
		fn(ctx, fs[0])
	})
	if fs == nil {
		return nil, false
	}
	return fs[0], !joined
}

// spawnMode is what spawn does with keys under which a flight is registered already.
type spawnMode uint8

const (
	spawnAll  spawnMode = iota // register the new flights over them
	spawnJoin                  // (one key) return the registered flight instead (joined), run nothing
	spawnFree                  // leave them out: flights for the other keys only
)

// spawn is launchMany, with mode for the keys already taken. fn gets the flights it runs and,
// with spawnFree, the indexes of their keys in keys.
func (c *Cache[T]) spawn(ctx context.Context, keys []flightKey, gens []uint64, timeout time.Duration, mode spawnMode, fn func(ctx context.Context, fs []*flight[T], idx []int)) (_ []*flight[T], joined bool) {
	n := len(keys)
	if keys == nil {
		n = len(gens)
	}
	fs := make([]*flight[T], n)
	for i := range fs {
		fs[i] = &flight[T]{done: make(chan struct{}), gen: gens[i], seq: c.seq.Add(1)}
	}
	var idx []int
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil, false
	}
	switch {
	case mode == spawnJoin && len(keys) == 1 && c.flights[keys[0]] != nil:
		f := c.flights[keys[0]]
		c.mu.Unlock()
		return []*flight[T]{f}, true
	case mode == spawnFree:
		free := fs[:0]
		for i, k := range keys {
			if c.flights[k] == nil {
				c.register(fs[i], k)
				free, idx = append(free, fs[i]), append(idx, i)
			}
		}
		if fs = free; len(fs) == 0 {
			c.mu.Unlock()
			return nil, false
		}
	default:
		for i, k := range keys {
			c.register(fs[i], k)
		}
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		var lctx context.Context
		var cancel context.CancelFunc
		if timeout > 0 {
			lctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), timeout)
		} else {
			lctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
		}
		stop := context.AfterFunc(c.life, cancel)
		completed := false
		defer func() {
			stop()
			cancel()
			if !completed {
				exited(fs)
			}
			c.finish(fs...)
		}()
		fn(lctx, fs, idx)
		completed = true
	}()
	return fs, false
}

// exited marks the unfinished flights of a goroutine that ended without completing them: its
// loader called runtime.Goexit.
func exited[T any](fs []*flight[T]) {
	for _, f := range fs {
		if !f.finished && f.panicked == nil {
			f.err, f.retry = errLoaderExit, false
		}
	}
}

// finish completes the flights not completed yet: they can no longer be joined, and their
// callers get their outcome. Only the goroutine running a flight calls it (or one it waits
// for), after setting the outcome.
func (c *Cache[T]) finish(fs ...*flight[T]) {
	c.mu.Lock()
	for _, f := range fs {
		if f.finished {
			continue
		}
		for _, r := range f.regs {
			if c.flights[r] == f {
				delete(c.flights, r)
			}
		}
	}
	c.mu.Unlock()
	closing := c.life.Err() != nil
	for _, f := range fs {
		if !f.finished {
			if closing && f.err != nil && errors.Is(f.err, context.Canceled) {
				f.err = ErrClosed // Close ended it, not the callers' own contexts
			}
			f.finished = true
			close(f.done)
		}
	}
}

// joinable returns the flight registered under k, if any. For a store-less key it must also
// have begun at generation gen.
func (c *Cache[T]) joinable(k flightKey, gen uint64) *flight[T] {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.flights[k]
	if f != nil && k.token == "" && f.gen != gen {
		return nil
	}
	return f
}

// await waits for f or for ctx. owner is true for the caller that started f: it takes the
// value even when the store refused it (its load began after the call did). It reports
// again=true when the caller must read the store again.
func await[T any](ctx context.Context, f *flight[T], owner bool) (v T, err error, again bool) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return v, ctx.Err(), false
	}
	if f.panicked != nil {
		panic(f.panicked)
	}
	if f.retry && !(owner && f.loaded) {
		return v, nil, true
	}
	return f.val, f.err, false
}

// callLoader runs load, turning a panic into a *PanicError. A Goexit ends the calling
// goroutine; launch reports it as errLoaderExit.
func callLoader[R any](ctx context.Context, load func(context.Context) (R, error)) (v R, err error, pe *PanicError) {
	normal := false
	func() {
		defer func() {
			if !normal {
				if r := recover(); r != nil {
					pe = &PanicError{Value: r, Stack: debug.Stack()}
				}
			}
		}()
		v, err = load(loaderContext(ctx))
		normal = true
	}()
	return v, err, pe
}
