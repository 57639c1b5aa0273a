package cacheaside

import (
	"context"
	"errors"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
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
	seq  uint64      // launch order in its group, for store-less joins
	regs []flightKey // where it is registered in its group
}

// flightGroup is a Cache's flights in this process, by key and lease token, and the
// goroutines that run them (owned by the Cache's lifecycle: Close cancels and waits for them).
// Registering, joining and finishing a flight each take the group's lock once.
type flightGroup[T any] struct {
	life *lifecycle
	mu   sync.Mutex
	m    map[flightKey]*flight[T]
	seq  atomic.Uint64 // numbers flights in launch order
}

func newFlightGroup[T any](life *lifecycle) *flightGroup[T] {
	return &flightGroup[T]{life: life, m: make(map[flightKey]*flight[T])}
}

type flightKey struct {
	key   string // store key
	token string // lease token; "" for a store-less flight
}

// errLoaderExit is the error of a load whose loader called runtime.Goexit.
var errLoaderExit = errors.New("cacheaside: loader called runtime.Goexit")

// register makes f joinable under k. The caller holds g.mu.
func (g *flightGroup[T]) register(f *flight[T], k flightKey) {
	g.m[k] = f
	f.regs = append(f.regs, k)
}

// joinAs makes the running flights fs joinable under their keys ks too (a wait or a refresh
// that was just granted its own lease, under that lease's token).
func (g *flightGroup[T]) joinAs(fs []*flight[T], ks []flightKey) {
	g.mu.Lock()
	for i, f := range fs {
		g.register(f, ks[i])
	}
	g.mu.Unlock()
}

// get returns the flight registered under k, or nil.
func (g *flightGroup[T]) get(k flightKey) *flight[T] {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.m[k]
}

// lastSeq is the number of the last flight launched: flights launched after this call have
// a greater seq.
func (g *flightGroup[T]) lastSeq() uint64 { return g.seq.Load() }

// count returns how many flights are registered under token (tests: refreshMarker).
func (g *flightGroup[T]) count(token string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for k := range g.m {
		if k.token == token {
			n++
		}
	}
	return n
}

// launch registers a new flight under k and runs fn for it; see launchMany.
func (g *flightGroup[T]) launch(ctx context.Context, k flightKey, gen uint64, timeout time.Duration, fn func(ctx context.Context, f *flight[T])) *flight[T] {
	fs := g.launchMany(ctx, []flightKey{k}, []uint64{gen}, timeout, func(ctx context.Context, fs []*flight[T]) {
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
func (g *flightGroup[T]) launchMany(ctx context.Context, keys []flightKey, gens []uint64, timeout time.Duration, fn func(ctx context.Context, fs []*flight[T])) []*flight[T] {
	fs, _ := g.spawn(ctx, keys, gens, timeout, spawnAll, func(ctx context.Context, fs []*flight[T], _ []int) {
		fn(ctx, fs)
	})
	return fs
}

// launchFree is launchMany for the keys under which no flight is registered, checked and
// registered in one step: two callers never both start one for a key. fn gets the new
// flights and the indexes of their keys in keys. Nothing runs if every key is taken, or after
// Close.
func (g *flightGroup[T]) launchFree(ctx context.Context, keys []flightKey, gens []uint64, timeout time.Duration, fn func(ctx context.Context, fs []*flight[T], idx []int)) {
	g.spawn(ctx, keys, gens, timeout, spawnFree, fn)
}

// joinOrLaunch returns the flight registered under k, or registers and runs a new one with fn
// (see launchMany), in one step: two callers never both start one. started reports which.
func (g *flightGroup[T]) joinOrLaunch(ctx context.Context, k flightKey, gen uint64, timeout time.Duration, fn func(ctx context.Context, f *flight[T])) (f *flight[T], started bool) {
	fs, joined := g.spawn(ctx, []flightKey{k}, []uint64{gen}, timeout, spawnJoin, func(ctx context.Context, fs []*flight[T], _ []int) {
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
func (g *flightGroup[T]) spawn(ctx context.Context, keys []flightKey, gens []uint64, timeout time.Duration, mode spawnMode, fn func(ctx context.Context, fs []*flight[T], idx []int)) (_ []*flight[T], joined bool) {
	n := len(keys)
	if keys == nil {
		n = len(gens)
	}
	fs := make([]*flight[T], n)
	for i := range fs {
		fs[i] = &flight[T]{done: make(chan struct{}), gen: gens[i], seq: g.seq.Add(1)}
	}
	var idx []int
	if !g.life.add() { // closed
		return nil, false
	}
	g.mu.Lock()
	switch {
	case mode == spawnJoin && len(keys) == 1 && g.m[keys[0]] != nil:
		f := g.m[keys[0]]
		g.mu.Unlock()
		g.life.done()
		return []*flight[T]{f}, true
	case mode == spawnFree:
		free := fs[:0]
		for i, k := range keys {
			if g.m[k] == nil {
				g.register(fs[i], k)
				free, idx = append(free, fs[i]), append(idx, i)
			}
		}
		if fs = free; len(fs) == 0 {
			g.mu.Unlock()
			g.life.done()
			return nil, false
		}
	default:
		for i, k := range keys {
			g.register(fs[i], k)
		}
	}
	g.mu.Unlock()
	g.life.run(func() {
		defer g.life.done()
		// The caller's profiler labels (pprof.Do), as a goroutine of its own would inherit
		// them; the pooled goroutine drops them when the load ends (workers.go).
		pprof.SetGoroutineLabels(ctx)
		var lctx context.Context
		var cancel context.CancelFunc
		if timeout > 0 {
			lctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), timeout)
		} else {
			lctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
		}
		stop := context.AfterFunc(g.life.ctx, cancel)
		completed := false
		defer func() {
			stop()
			cancel()
			if !completed {
				exited(fs)
			}
			g.finish(fs...)
		}()
		fn(lctx, fs, idx)
		completed = true
	})
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
func (g *flightGroup[T]) finish(fs ...*flight[T]) {
	g.mu.Lock()
	for _, f := range fs {
		if f.finished {
			continue
		}
		for _, r := range f.regs {
			if g.m[r] == f {
				delete(g.m, r)
			}
		}
	}
	g.mu.Unlock()
	closing := g.life.closing()
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
func (g *flightGroup[T]) joinable(k flightKey, gen uint64) *flight[T] {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := g.m[k]
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

// tokenKeys returns the flight keys of sks under one lease token.
func tokenKeys(sks []string, tok string) []flightKey {
	ks := make([]flightKey, len(sks))
	for i, sk := range sks {
		ks[i] = flightKey{sk, tok}
	}
	return ks
}
