package cacheaside

import (
	"math"
	"sync"
	"sync/atomic"
)

// callGate counts the calls running in a Cache (GetOrLoad, GetOrLoadMany, Warm), so that Close
// can refuse new ones and wait until those running have returned. A call inside the gate may
// take leases; Close waits for it, so every lease it was granted is loaded or released before
// Close returns, even one granted by a round trip that was on the wire when Close began.
//
// The state is one atomic word: the number of calls inside, plus math.MinInt64 once closed,
// so enter and exit are one atomic add each and take no lock.
type callGate struct {
	state atomic.Int64
	once  sync.Once
	idle  chan struct{} // closed when the gate is closed and no call is inside
}

func newCallGate() *callGate { return &callGate{idle: make(chan struct{})} }

// enter admits a call, unless the gate is closed. An admitted call must exit.
func (g *callGate) enter() bool {
	if g.state.Add(1) < 0 {
		g.exit()
		return false
	}
	return true
}

// exit ends an admitted call.
func (g *callGate) exit() {
	if g.state.Add(-1) == math.MinInt64 {
		g.once.Do(func() { close(g.idle) })
	}
}

// close refuses new calls and returns a channel closed once no call is inside. It must be
// called once.
func (g *callGate) close() <-chan struct{} {
	if g.state.Add(math.MinInt64) == math.MinInt64 {
		g.once.Do(func() { close(g.idle) })
	}
	return g.idle
}
