package cacheaside

import (
	"math/bits"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// requestCounts counts requests by result. L1 hits, the one result counted at the speed of a
// map read and on many goroutines at once, go to stripes chosen by the calling goroutine
// (stackHash), each on cache lines of its own, so that parallel hits do not bounce one counter
// between cores; the other results to one atomic each. A load sums the stripes: it is exact
// once the adds it should see have returned, like a single atomic.
type requestCounts struct {
	n  [numResults]atomic.Uint64 // all but resultL1Hit
	l1 []paddedCounter           // len a power of two
}

// paddedCounter is a counter alone on its cache lines (two, against adjacent-line prefetch).
type paddedCounter struct {
	atomic.Uint64
	_ [128 - 8]byte
}

// maxCounterStripes bounds the stripes per group: 4 KiB of counters.
const maxCounterStripes = 32

// stripesPerProc: with 2 per P, two goroutines hitting at once shared a stripe often enough to
// show (BenchmarkL1Hit/cacheaside-vs-floor/parallel on 2 vCPUs: 3 runs of 12 above 2.1x the
// floor with 4 stripes, 1 with 16, none without the counter).
const stripesPerProc = 8

func (rc *requestCounts) init() {
	n := min(stripesPerProc*runtime.GOMAXPROCS(0), maxCounterStripes)
	rc.l1 = make([]paddedCounter, 1<<bits.Len(uint(n-1))) // n rounded up to a power of two
}

func (rc *requestCounts) add(r result) {
	if r == resultL1Hit {
		rc.l1[stackHash()&uint64(len(rc.l1)-1)].Add(1)
		return
	}
	rc.n[r].Add(1)
}

func (rc *requestCounts) load(r result) uint64 {
	if r != resultL1Hit {
		return rc.n[r].Load()
	}
	var sum uint64
	for i := range rc.l1 {
		sum += rc.l1[i].Load()
	}
	return sum
}

// stackHash returns a hash of the calling goroutine's stack address: the same while the
// goroutine runs (a stack that grows moves and gets another, which only moves the goroutine to
// another stripe), and different between goroutines running at the same time. It is a
// per-goroutine hint without per-goroutine state, as otter's read buffers use.
func stackHash() uint64 {
	var x byte
	// The bits below the minimum stack size (2 KiB) depend on the call depth, not on the
	// goroutine: drop them, and mix the upper bits (stacks are aligned to their size) down.
	// G103: the address is only hashed to pick a stripe, never turned back into a pointer.
	hi, lo := bits.Mul64(uint64(uintptr(unsafe.Pointer(&x)))>>11, 0x9e3779b97f4a7c15) //nolint:gosec
	return hi ^ lo
}
