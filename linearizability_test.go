package cacheaside

// Guarantee 2 checked by a machine: concurrent clients on several Cache instances, each on its
// own store client, read keys with GetOrLoad (and GetOrLoadMany) from a source of truth and
// write them (commit a new version to the truth, then Invalidate), while faults hit the
// store. Every operation's call and return are recorded on the monotonic clock, and each
// key's history is checked with porcupine against a register whose versions are written in
// order (a write is its commit plus its invalidation).
//
// The instances run on the stores exactly as users build them (NewRedisStore on a go-redis
// client, or one shared MemoryStore), so every optional interface of the store is in play:
// the invalidation broadcast, the pipelined delete and publish, batch releases.
//
// Two checks run on every history:
//
//   - guarantee 2 (every scenario): each read, taken alone with all the writes, must
//     linearize. A read returns the value of a write that began before it returned, and of
//     none older than a write whose Invalidate returned before the read began. porcupine
//     checks it with one partition per read. With a local cache (WithLocalCache) the other
//     instances drop a key when the invalidation message reaches them, so each write counts
//     as returned only a stated delay later (the scenario's staleBound): no read may return a
//     version older than one whose write returned more than that delay before the read began.
//   - linearizability (strict scenarios): the whole history must linearize, which also
//     forbids two reads, one after the other, seeing a new version and then an older one.
//     Cache-aside does not promise that for a read that returns a value the store did not
//     take: the store may still hold an older version, served to the next reader until the
//     writer's Invalidate lands. That happens when a caller fails open (guarantee 3: it skips
//     the store and loads the source's new version), when a caller's lease was voided by an
//     Invalidate before its fill (the fill is refused; the caller still gets what it loaded,
//     fresh for it, while another caller may have filled an older version meanwhile: seen
//     under latency, where a lease's grant reaches its caller late), and when a wait for
//     another's lease is given up after a lease and a load's time (lock.go). Each instance
//     counts such loads (Cache.stats.storeless), and they run during the reads they answer;
//     so every read during which its instance counted one, counted a store error
//     (Stats.StoreErrors) or had its breaker open is marked "unstored": it is checked for
//     guarantee 2 only, and the strict check covers the writes and every other read. The
//     summary line counts both.
//
// What is left out of a history, and why:
//
//   - a read that returned an error (its context ended, or the loader failed) returned no
//     value, and a read changes nothing: it is dropped.
//   - a write whose Invalidate returned an error has no guarantee: the old entry may live
//     until its TTL. Its commit is real (the truth moved, and versions must stay in order), so
//     the write stays, with its real interval; but the reads of its key that begin from its
//     call until a later write (a higher version, so committed after it) has been
//     invalidated successfully are dropped ("tainted"). Dropping reads never hides a
//     violation among the reads that stay, and never invents one.
//
// Test-only switches break the build on purpose, and TestLinearizabilityCatchesBrokenBuild
// shows the checker then reports violations, so the suite can fail: Cache.unsafeSkipLeaseCheck
// makes fills ignore leases, as a cache without them would; a store that sends no
// invalidation message leaves the other instances' local caches stale.
//
// Sizes: CACHEASIDE_VERIFY_SCALE multiplies the rounds (1, the default, is the CI size; make
// verify runs 6). Each scenario's summary line also goes to the file CACHEASIDE_LINZ_SUMMARY
// names, if set: make test prints it, since go test shows a passing package's output only
// with -v.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// linzTruth is the source of truth: a versioned register per key.
type linzTruth struct {
	mu sync.Mutex
	v  map[string]uint64
}

func newLinzTruth() *linzTruth { return &linzTruth{v: make(map[string]uint64)} }

// commit writes a new version of key and returns it. Versions of a key are 1, 2, 3, ...
func (s *linzTruth) commit(key string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v[key]++
	return s.v[key]
}

func (s *linzTruth) read(key string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v[key]
}

// linzValue is what the caches hold: the version, and its key to catch a value served for
// the wrong key.
type linzValue struct {
	Key     string
	Version uint64
}

// badVersion is recorded for a read that returned another key's value: no write has it.
const badVersion = math.MaxUint64

// linzOp is one recorded operation on one key.
type linzOp struct {
	client   int
	write    bool
	failed   bool // a write whose Invalidate returned an error (after its retries, if any)
	retried  bool // a write whose Invalidate failed at least once
	unstored bool // a read that may have returned a value the store did not take (see above)
	version  uint64
	call     int64 // nanoseconds on the monotonic clock since the history's base
	ret      int64
}

// linzHistory records the operations of one run, per key.
type linzHistory struct {
	base time.Time
	mu   sync.Mutex
	ops  map[string][]linzOp

	readErrs atomic.Int64 // reads that returned an error: dropped
}

func newLinzHistory() *linzHistory {
	return &linzHistory{base: time.Now(), ops: make(map[string][]linzOp)}
}

// now reads the monotonic clock.
func (h *linzHistory) now() int64 { return int64(time.Since(h.base)) }

func (h *linzHistory) add(key string, op linzOp) {
	h.mu.Lock()
	h.ops[key] = append(h.ops[key], op)
	h.mu.Unlock()
}

// storeMark is what an instance's counters say of its store at one moment: a read that spans
// a change of it, or an open breaker, may have returned a value the store did not take.
type storeMark struct {
	storeless   uint64 // loads whose values nothing stored (Cache.stats.storeless)
	errs, opens uint64
	open        bool
}

func markOf[T any](c *Cache[T]) storeMark {
	s := c.Stats()
	return storeMark{storeless: c.stats.storeless.Load(), errs: s.StoreErrors, opens: s.BreakerOpens, open: s.BreakerOpen}
}

// unstored reports whether a call between marks a and b may have got a value the store did
// not take: a load of its instance ended so meanwhile, or the store erred, or the breaker was
// open (what makes callers fail open; counted too, to be safe).
func (a storeMark) unstored(b storeMark) bool {
	return a.storeless != b.storeless || a.open || b.open || a.errs != b.errs || a.opens != b.opens
}

// The counter behind the "unstored" marks counts the loads whose values the store did not
// take and that callers got all the same: a fill refused because an Invalidate voided the
// lease mid-load, and loads of callers failing open. Without it the strict check would fail
// on histories the contract allows.
func TestStorelessLoadsAreCounted(t *testing.T) {
	mem := NewMemoryStore()
	defer mem.Close()
	prefix := testPrefix(t)
	a := newTestCache[int](t, mem, WithPrefix(prefix))
	b := newTestCache[int](t, mem, WithPrefix(prefix))
	v, err := a.GetOrLoad(bg(), "k", func(context.Context) (int, error) {
		if err := b.Invalidate(bg(), "k"); err != nil { // voids a's lease: its fill is refused
			return 0, err
		}
		return 1, nil
	})
	if err != nil || v != 1 {
		t.Fatalf("the load whose fill was refused: %v, %v (want 1: its caller still gets it)", v, err)
	}
	if n := a.stats.storeless.Load(); n != 1 {
		t.Fatalf("after a refused fill: storeless = %d, want 1", n)
	}
	down := newTestCache[int](t, downStore{mem}, WithPrefix(prefix), WithCircuitBreaker(100, time.Hour))
	if v, err := down.GetOrLoad(bg(), "k", func(context.Context) (int, error) { return 2, nil }); err != nil || v != 2 {
		t.Fatalf("fail-open read: %v, %v", v, err)
	}
	if n := down.stats.storeless.Load(); n != 1 {
		t.Fatalf("after a fail-open load: storeless = %d, want 1", n)
	}
	if n := b.stats.storeless.Load(); n != 0 {
		t.Fatalf("a cache that loaded nothing: storeless = %d, want 0", n)
	}
}

// linzIn is a porcupine input: a write of a version, or a read (its output is the version).
type linzIn struct {
	write   bool
	version uint64
}

// linzModel is a register whose writes come in version order (the truth commits versions
// 1, 2, 3, ... and each commit lies inside its write's interval, so the real order is always
// a legal one). perRead partitions a key's history into one sub-history per read, holding
// every write and that read: the guarantee-2 check.
func linzModel(perRead bool) porcupine.Model {
	m := porcupine.Model{
		Init: func() any { return uint64(0) },
		Step: func(state, input, output any) (bool, any) {
			s, in := state.(uint64), input.(linzIn)
			if in.write {
				return in.version == s+1, in.version
			}
			return output.(uint64) == s, s
		},
		DescribeOperation: func(input, output any) string {
			in := input.(linzIn)
			if in.write {
				return fmt.Sprintf("write v%d", in.version)
			}
			if v := output.(uint64); v != badVersion {
				return fmt.Sprintf("read v%d", v)
			}
			return "read: another key's value"
		},
		DescribeState: func(state any) string { return fmt.Sprintf("v%d", state.(uint64)) },
		DescribeOperationMetadata: func(info any) string {
			if info == nil {
				return ""
			}
			return fmt.Sprint(info)
		},
	}
	if perRead {
		m.Partition = func(h []porcupine.Operation) [][]porcupine.Operation {
			var writes, reads []porcupine.Operation
			for _, op := range h {
				if op.Input.(linzIn).write {
					writes = append(writes, op)
				} else {
					reads = append(reads, op)
				}
			}
			if len(reads) == 0 {
				return [][]porcupine.Operation{writes}
			}
			out := make([][]porcupine.Operation, len(reads))
			for i, r := range reads {
				out[i] = append(slices.Clip(writes), r)
			}
			return out
		}
	}
	return m
}

// linzKey is one key's history ready for porcupine.
type linzKey struct {
	all    []porcupine.Operation // the writes and every read kept: the guarantee-2 check
	strict []porcupine.Operation // the writes and the reads not marked unstored
	reads  int                   // reads kept
	open   int                   // among them, reads that may have returned an unstored value
	taint  int                   // reads dropped after a failed Invalidate
	maxLag int64                 // the longest a kept read began after a newer version's write returned
}

// linzOps turns one key's recorded operations into porcupine's, dropping the reads no
// guarantee covers (see the file comment). staleBound widens every write by the delay a
// scenario allows reads to lag (an L1's bound; 0 without one).
func linzOps(ops []linzOp, staleBound time.Duration) linzKey {
	type window struct{ from, to int64 }
	var tainted []window
	for _, f := range ops {
		if !f.write || !f.failed {
			continue
		}
		w := window{f.call, math.MaxInt64}
		for _, s := range ops {
			if s.write && !s.failed && s.version > f.version && s.ret < w.to {
				w.to = s.ret
			}
		}
		tainted = append(tainted, w)
	}
	var k linzKey
	for _, op := range ops {
		if op.write {
			meta := "invalidated"
			switch {
			case op.failed:
				meta = "Invalidate failed"
			case op.retried:
				meta = "invalidated after retries"
			}
			w := porcupine.Operation{
				ClientId: op.client, Input: linzIn{write: true, version: op.version},
				Call: op.call, Return: op.ret + int64(staleBound), Metadata: meta,
			}
			k.all = append(k.all, w)
			k.strict = append(k.strict, w)
			continue
		}
		if slices.ContainsFunc(tainted, func(w window) bool { return op.call >= w.from && op.call <= w.to }) {
			k.taint++
			continue
		}
		r := porcupine.Operation{
			ClientId: op.client, Input: linzIn{}, Output: op.version, Call: op.call, Return: op.ret,
		}
		k.reads++
		k.all = append(k.all, r)
		if op.unstored {
			k.open++
			r.Metadata = "may have returned an unstored value"
		} else {
			k.strict = append(k.strict, r)
		}
		for _, w := range ops {
			if w.write && w.version > op.version && w.version != badVersion && op.call-w.ret > k.maxLag {
				k.maxLag = op.call - w.ret
			}
		}
	}
	return k
}

// linzResult sums the checks of one run.
type linzResult struct {
	histories, ops int
	violations     int // reads that break guarantee 2, plus histories that fail the strict check
	inversions     int // histories that are not linearizable in a scenario that does not require it
	unknown        int // checks porcupine could not finish in time
	reads, open    int // reads checked; among them, reads that may have returned an unstored value
	readErrs       int // reads dropped: they returned an error
	taintReads     int // reads dropped: they began after a failed Invalidate
	failedWrites   int
	retriedWrites  int
	maxLag         time.Duration
	viz            string // visualization of the first violation
}

func (r *linzResult) merge(o linzResult) {
	r.histories += o.histories
	r.ops += o.ops
	r.violations += o.violations
	r.inversions += o.inversions
	r.unknown += o.unknown
	r.reads += o.reads
	r.open += o.open
	r.readErrs += o.readErrs
	r.taintReads += o.taintReads
	r.failedWrites += o.failedWrites
	r.retriedWrites += o.retriedWrites
	r.maxLag = max(r.maxLag, o.maxLag)
	if r.viz == "" {
		r.viz = o.viz
	}
}

const linzCheckTimeout = time.Minute

// linzCheck says how to check a history.
type linzCheck struct {
	label      string
	strict     bool          // require linearizability of the reads not marked unstored
	staleBound time.Duration // the delay after a write's return its Invalidate may take to reach every instance
	vizDir     string        // where the visualization of a violation goes ("": the temp directory)
}

// check checks every key's history of h.
func (h *linzHistory) check(c linzCheck) linzResult {
	res := linzResult{readErrs: int(h.readErrs.Load())}
	keys := make([]string, 0, len(h.ops))
	for k := range h.ops {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, op := range h.ops[k] {
			if op.write && op.failed {
				res.failedWrites++
			}
			if op.write && op.retried {
				res.retriedWrites++
			}
		}
		kh := linzOps(h.ops[k], c.staleBound)
		res.histories++
		res.ops += len(kh.all)
		res.reads += kh.reads
		res.open += kh.open
		res.taintReads += kh.taint
		res.maxLag = max(res.maxLag, time.Duration(kh.maxLag))

		perRead := porcupine.CheckOperationsTimeout(linzModel(true), kh.all, linzCheckTimeout)
		full := porcupine.Ok
		switch {
		case c.strict:
			full = porcupine.CheckOperationsTimeout(linzModel(false), kh.strict, linzCheckTimeout)
		case perRead == porcupine.Ok:
			full = porcupine.CheckOperationsTimeout(linzModel(false), kh.all, linzCheckTimeout)
		}
		var failed porcupine.Model
		var ops []porcupine.Operation
		switch {
		case perRead == porcupine.Unknown || full == porcupine.Unknown:
			res.unknown++
			continue
		case perRead == porcupine.Illegal:
			res.violations += staleReads(kh.all)
			failed, ops = linzModel(true), kh.all
		case full == porcupine.Illegal && c.strict:
			res.violations++
			failed, ops = linzModel(false), kh.strict
			if res.viz == "" {
				res.viz = visualizeLinz(c.vizDir, c.label, k, failed, ops) + explainInversion(k, ops)
			}
			continue
		case full == porcupine.Illegal:
			res.inversions++
			continue
		default:
			continue
		}
		if res.viz == "" {
			res.viz = visualizeLinz(c.vizDir, c.label, k, failed, ops) + explainStale(k, ops)
		}
	}
	return res
}

// staleReads counts the reads of a key's history that break guarantee 2, each checked alone
// with every write (at least 1: the caller saw the history fail).
func staleReads(ops []porcupine.Operation) int {
	m := linzModel(false)
	var writes []porcupine.Operation
	for _, op := range ops {
		if op.Input.(linzIn).write {
			writes = append(writes, op)
		}
	}
	n := 0
	for _, op := range ops {
		if !op.Input.(linzIn).write && !porcupine.CheckOperations(m, append(slices.Clip(writes), op)) {
			n++
		}
	}
	return max(n, 1)
}

// explainStale describes the first read of a key's history that breaks guarantee 2 on its
// own: what it returned, and the newest write whose Invalidate returned before it began.
func explainStale(key string, ops []porcupine.Operation) string {
	m := linzModel(false)
	var writes []porcupine.Operation
	for _, op := range ops {
		if op.Input.(linzIn).write {
			writes = append(writes, op)
		}
	}
	ms := func(ns int64) string { return fmt.Sprintf("%.3fms", float64(ns)/1e6) }
	for _, r := range ops {
		if r.Input.(linzIn).write || porcupine.CheckOperations(m, append(slices.Clip(writes), r)) {
			continue
		}
		var before *porcupine.Operation
		for i, w := range writes {
			if w.Return < r.Call && (before == nil || w.Input.(linzIn).version > before.Input.(linzIn).version) {
				before = &writes[i]
			}
		}
		s := fmt.Sprintf("\n  key %s: read by client %d over [%s, %s] returned v%d", key, r.ClientId, ms(r.Call), ms(r.Return), r.Output.(uint64))
		if before != nil {
			s += fmt.Sprintf("; write v%d by client %d over [%s, %s] (%v, end widened by the stale bound) had returned before it began",
				before.Input.(linzIn).version, before.ClientId, ms(before.Call), ms(before.Return), before.Metadata)
		}
		return s
	}
	return ""
}

// explainInversion describes the first pair of reads of a key's history that see a version
// and then, starting after the first returned, an older one, with the writes in between.
func explainInversion(key string, ops []porcupine.Operation) string {
	ms := func(ns int64) string { return fmt.Sprintf("%.3fms", float64(ns)/1e6) }
	desc := func(op porcupine.Operation) string {
		what := fmt.Sprintf("read v%d", op.Output)
		if in := op.Input.(linzIn); in.write {
			what = fmt.Sprintf("write v%d", in.version)
		}
		s := fmt.Sprintf("%s by client %d over [%s, %s]", what, op.ClientId, ms(op.Call), ms(op.Return))
		if op.Metadata != nil {
			s += fmt.Sprintf(" (%v)", op.Metadata)
		}
		return s
	}
	var reads []porcupine.Operation
	for _, op := range ops {
		if !op.Input.(linzIn).write {
			reads = append(reads, op)
		}
	}
	slices.SortFunc(reads, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
	for _, r1 := range reads {
		for _, r2 := range reads {
			if r2.Call <= r1.Return || r2.Output.(uint64) >= r1.Output.(uint64) {
				continue
			}
			s := fmt.Sprintf("\n  key %s: %s, then %s", key, desc(r1), desc(r2))
			for _, w := range ops {
				if in := w.Input.(linzIn); in.write && in.version > r2.Output.(uint64) && in.version <= r1.Output.(uint64) {
					s += "\n    " + desc(w)
				}
			}
			return s
		}
	}
	return "\n  key " + key + ": no pair of reads out of order; the writes' order itself does not fit"
}

// visualizeLinz writes porcupine's HTML view of a failed history to a file under dir (the
// temp directory if empty) and returns its path (or why it could not).
func visualizeLinz(dir, label, key string, m porcupine.Model, ops []porcupine.Operation) string {
	_, info := porcupine.CheckOperationsVerbose(m, ops, linzCheckTimeout)
	f, err := os.CreateTemp(dir, "cacheaside-linz-*.html")
	if err != nil {
		return "(no visualization: " + err.Error() + ")"
	}
	defer f.Close()
	info.AddAnnotations([]porcupine.Annotation{{Tag: "key", Start: 0, End: 0, Description: label + " " + key}})
	if err := porcupine.Visualize(m, info, f); err != nil {
		return "(no visualization: " + err.Error() + ")"
	}
	return f.Name()
}

// workload is the traffic of a scenario.
type workload struct {
	rounds    int           // independent runs, each on fresh keys
	keys      int           // keys per round: few, so that operations contend
	instances int           // caches, each on its own store client
	readers   int           // reading goroutines, spread over the instances
	writers   int           // writing goroutines, spread over the instances
	writes    int           // writes per writer per round; readers read until writers finish
	writeGap  time.Duration // max pause between a writer's operations
	readGap   time.Duration // max pause between a reader's operations
	loadDelay time.Duration // max delay of a loader after it reads the truth: the race window
	commitGap time.Duration // max delay between a write's commit and its Invalidate
	manyEvery int           // one read in manyEvery is a GetOrLoadMany of two keys; 0: none

	stallEvery  int           // one load in stallEvery stalls for stall (ignoring its context)
	stall       time.Duration //
	cancelEvery int           // one read in cancelEvery has a context that ends mid-load
	cancelAfter time.Duration // max life of such a context

	// retryInvalidate: a writer whose Invalidate fails tries again every 10ms for up to this
	// long, as a service that must not leave stale entries behind would; the write's interval
	// spans its retries. 0: no retry (the write is recorded as failed at once).
	retryInvalidate time.Duration
}

// linzScenario is one line of the table: a workload, cache options, a fault, on some stores.
type linzScenario struct {
	name   string
	stores []string
	opts   []Option // added to every instance's options
	work   workload
	fault  fault // nil: none
	proxy  bool  // route the store's connections through a fault proxy
	// strict requires the reads not marked unstored to be linearizable with the writes (see
	// the file comment); every scenario without a local cache is strict unless its entry in the
	// table says why the contract allows more.
	strict bool
	// l1Bound is the staleness the local cache's documented delivery bound allows on a Redis
	// store (pub/sub); a MemoryStore delivers before Invalidate returns, so its bound is 0.
	l1Bound time.Duration
	// feature names what the scenario's options must be seen doing (Stats), so that it is
	// not vacuous: "l1" (L1 hits), "stale" (stale values served), "early" (early refreshes).
	feature string
	// migrate moves the hash slot of the scenario's keys between masters (cluster only).
	migrate bool
	// wrap, if set, wraps every instance's store (fault injection at the Store boundary).
	wrap func(Store) Store
	// churn adds an instance that readers use for a few milliseconds before it is closed
	// mid-flight and replaced, again and again, until the round's writes are done.
	churn bool
	// tags has readers tag each key with its own tag and its group's (one of two), and writers
	// invalidate with InvalidateTags of one of the two instead of Invalidate.
	tags bool

	// lateTags turns on Cache.unsafeLateTags (tags recorded after the load: a broken build).
	lateTags bool
	// broken turns on Cache.unsafeSkipLeaseCheck in every instance; mute makes the stores
	// send no invalidation message (a broken L1); vizDir is where a violation's
	// visualization goes ("": the temp directory, named in the failure).
	broken, mute bool
	vizDir       string
}

// staleBound is the delay a scenario allows reads to lag on store.
func (sc linzScenario) staleBound(store string) time.Duration {
	if store == storeMemory {
		return 0
	}
	return sc.l1Bound
}

// linzScale is the size factor from CACHEASIDE_VERIFY_SCALE (default 1, the CI size).
func linzScale(t testing.TB) int {
	s := os.Getenv("CACHEASIDE_VERIFY_SCALE")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("CACHEASIDE_VERIFY_SCALE=%q: want a positive integer", s)
	}
	return n
}

// healthyOpts are for scenarios whose store stays healthy: timeouts generous enough that a
// busy two-core machine under -race seldom makes a caller fail open (the reads it happens to
// are counted, and checked for guarantee 2 only).
var healthyOpts = slowMachine

// faultOpts are for scenarios with faults: callers fail open after a short wait, the breaker
// looks for the store again soon, and leases are short.
var faultOpts = []Option{
	// A lease lost to a fault (granted to a request that landed after its caller gave up)
	// blocks its key until it expires: keep that short.
	WithLoadTimeout(time.Second),
	WithStoreTimeout(100 * time.Millisecond),
	WithConnectTimeout(time.Second),
	WithCircuitBreaker(3, 20*time.Millisecond),
}

// linzL1 is the local cache of the L1 scenarios: a local TTL far longer than a round, so that an invalidation an
// instance missed would show as a stale read, never hidden by the entry's expiry.
var linzL1 = []Option{WithLocalCache(1000, time.Minute)}

// linzL1Bound is the delay within which, on a Redis store, every instance's local cache drops
// a key after the Invalidate of another instance returned, as the README states it: a pub/sub
// message normally arrives well under a millisecond after Invalidate returns (measured p99
// 0.35 ms on Cluster), or the subscriber sees its connection fail and flushes its L1. 100 ms
// leaves room for a loaded two-core machine under -race; each line reports the longest lag
// seen (max-lag).
const linzL1Bound = 100 * time.Millisecond

func concat[T any](ss ...[]T) []T { return slices.Concat(ss...) }

// baseWork is the CI size of a scenario's traffic.
var baseWork = workload{
	rounds: 3, keys: 3, instances: 3, readers: 6, writers: 2, writes: 20,
	writeGap: 10 * time.Millisecond, readGap: time.Millisecond,
	loadDelay: 4 * time.Millisecond, commitGap: 2 * time.Millisecond, manyEvery: 5,
}

// shortWrites is w with n writes per writer per round under -short (make test), for the
// scenarios whose rounds are the longest there; make verify runs them at w's size.
func shortWrites(w workload, n int) workload {
	if testing.Short() {
		w.writes = n
	}
	return w
}

func withWork(f func(w *workload)) workload {
	w := baseWork
	f(&w)
	return w
}

var allStores = []string{storeMemory, storeRedis, storeCluster}
var redisStores = []string{storeRedis, storeCluster}

// linzScenarios is the table.
func linzScenarios() []linzScenario {
	faultWork := withWork(func(w *workload) { w.writeGap = 40 * time.Millisecond })
	return []linzScenario{
		{name: "clean", stores: allStores, opts: healthyOpts, work: baseWork, strict: true},
		// Leases far shorter than the load timeout: a stalled load loses its lease, the next
		// caller takes over, and the stalled load's fill must be refused. The caller that
		// started the stalled load still gets its value (loaded after it began, so fresh for
		// it), after the lease's next holder may have returned a newer one: such reads are
		// marked unstored (its fill was refused) and checked for guarantee 2 only.
		{name: "stall-past-lease", stores: allStores, strict: true,
			opts: concat(healthyOpts, []Option{WithLeaseTTL(15 * time.Millisecond), WithLoadTimeout(150 * time.Millisecond), WithLeaseWait(time.Millisecond, 10*time.Millisecond)}),
			work: withWork(func(w *workload) { w.stallEvery, w.stall = 4, 40*time.Millisecond })},
		{name: "cancel-mid-load", stores: allStores, opts: healthyOpts, strict: true,
			work: withWork(func(w *workload) {
				w.cancelEvery, w.cancelAfter, w.loadDelay = 2, 3*time.Millisecond, 4*time.Millisecond
			})},
		// Early refresh and stale-while-revalidate, with a TTL of a few writes, so that values
		// expire and refresh all the time. Both stay strict: a refresh loads and fills under a
		// lease like any load, and SWR's stale window is counted from the TTL, not from writes
		// (Invalidate deletes the entry, window and all). So a value served stale is still the
		// newest version whose Invalidate returned, and histories must stay linearizable; the
		// scenario requires Stats to show stale values served (early refreshes).
		{name: "early-refresh", stores: allStores, strict: true, feature: "early", work: baseWork,
			opts: concat(healthyOpts, []Option{WithTTL(40 * time.Millisecond), WithEarlyRefresh(20)})},
		{name: "stale-while-revalidate", stores: allStores, strict: true, feature: "stale", work: baseWork,
			opts: concat(healthyOpts, []Option{WithTTL(20 * time.Millisecond), WithStaleWhileRevalidate(time.Minute)})},
		// The local cache: not strict, since another instance's L1 serves the old version
		// until the invalidation message reaches it, while the writer's own instance and the
		// store have the new one. Guarantee 2 within the L1 bound: no read returns a version
		// older than one whose write returned more than linzL1Bound before it began (0 on the
		// MemoryStore, which delivers before Invalidate returns).
		{name: "l1", stores: allStores, opts: concat(healthyOpts, linzL1), work: baseWork,
			l1Bound: linzL1Bound, feature: "l1"},
		// The L1 with its subscriptions' connections killed along with the data connections:
		// a subscriber that loses its connection flushes its L1 and serves from the store
		// until it is subscribed again, so the bound holds.
		{name: "l1-client-kill", stores: redisStores, opts: concat(faultOpts, linzL1), fault: faultKill, work: faultWork,
			l1Bound: linzL1Bound, feature: "l1"},
		// Faults: strict for the reads not marked unstored (the others are checked for
		// guarantee 2 only: see the file comment).
		{name: "client-kill", stores: redisStores, opts: faultOpts, fault: faultKill, work: faultWork, strict: true},
		{name: "redis-restart", stores: []string{storeOwn}, opts: faultOpts, fault: faultRestart, strict: true,
			work: withWork(func(w *workload) { w.writes, w.writeGap = 20, 50*time.Millisecond })},
		// Latency up to and beyond the store timeout: writers retry a failed Invalidate, as a
		// real service would, so that few reads are left unchecked after a failed one.
		{name: "proxy-latency", stores: redisStores, opts: faultOpts, fault: faultLatency, proxy: true, strict: true,
			work: withWork(func(w *workload) { w.writeGap, w.retryInvalidate = 40*time.Millisecond, 2*time.Second })},
		{name: "proxy-drop", stores: redisStores, opts: faultOpts, fault: faultDrop, proxy: true, strict: true, work: shortWrites(faultWork, 10)},
		// A hash slot holding every key of the scenario moves between masters and back, with
		// traffic on the half-moved slot (ASK redirections, TRYAGAIN on two-key scripts).
		// Fills that fail: one in three, half of them after the store took the value (the
		// reply was lost), half before. The lease is released in the background under the
		// same token (a no-op if the value landed), and the reads whose fill failed are
		// marked unstored.
		{name: "fill-failures", stores: allStores, opts: healthyOpts, strict: true, work: baseWork, wrap: failingFills},
		// An instance closed mid-flight, again and again, while readers use it: its calls end
		// with ErrClosed (dropped) or a value, and the leases it held are released.
		{name: "close-mid-flight", stores: allStores, opts: healthyOpts, strict: true, work: baseWork, churn: true},
		// Tags instead of keys: each write invalidates the key's own tag or its group's
		// (InvalidateTags), reads tag every load (Tags, TagsOf); entries and tags live in
		// different hash slots on the Cluster.
		{name: "tags", stores: allStores, opts: healthyOpts, strict: true, feature: "tags", work: baseWork, tags: true},
		{name: "tags-l1", stores: allStores, opts: concat(healthyOpts, linzL1), feature: "tags", work: baseWork, tags: true,
			l1Bound: linzL1Bound},
		{name: "slot-migration", stores: []string{storeCluster}, opts: healthyOpts, fault: faultMigrate, migrate: true, strict: true,
			work: withWork(func(w *workload) { w.writes, w.writeGap = 30, 30*time.Millisecond })},
	}
}

// TestLinearizability runs every scenario on every store it lists and requires zero
// violations. Each prints one line: scenario, store, histories, operations, violations, and
// how many reads were checked and dropped.
func TestLinearizability(t *testing.T) {
	scale := linzScale(t)
	for _, sc := range linzScenarios() {
		for _, store := range sc.stores {
			t.Run(sc.name+"/"+store, func(t *testing.T) {
				// Two scenarios at a time (-parallel is GOMAXPROCS): they spend most of their
				// time waiting (loads, gaps), each on keys of its own.
				t.Parallel()
				res, note := runLinz(t, sc, store, scale)
				report := linzLine(sc, store, res, note)
				t.Log(report)
				linzSummary(report)
				if res.violations > 0 || res.unknown > 0 {
					t.Errorf("%s\nvisualization of the first violation: %s", report, res.viz)
				}
				if res.reads == 0 {
					t.Errorf("no read was checked: %s", report)
				}
			})
		}
	}
}

// TestLinearizabilityCatchesBrokenBuild runs the clean scenario on a build whose fills ignore
// leases (Cache.unsafeSkipLeaseCheck), and the L1 scenario on stores that send no invalidation
// message, and requires the checker to report violations: proof that the suite can fail.
func TestLinearizabilityCatchesBrokenBuild(t *testing.T) {
	var lease, l1, tags linzScenario
	for _, sc := range linzScenarios() {
		switch sc.name {
		case "clean":
			lease = sc
		case "l1":
			l1 = sc
		case "tags":
			tags = sc
		}
	}
	lease.name, lease.broken = "broken-lease-check", true
	l1.name, l1.mute = "broken-l1-broadcast", true
	tags.name, tags.lateTags = "broken-late-tags", true
	// The late record opens a window as long as a load, after the first load of a key that
	// follows an invalidation: longer loads and more writes make the checker meet it in
	// every run, not only most.
	tags.work = withWork(func(w *workload) { w.loadDelay, w.writes = 15*time.Millisecond, 40 })
	for _, sc := range []linzScenario{lease, l1, tags} {
		for _, store := range sc.stores {
			t.Run(sc.name+"/"+store, func(t *testing.T) {
				sc.vizDir = t.TempDir() // a violation is expected: leave no file behind
				res, note := runLinz(t, sc, store, 1)
				// A self-check: violations are required here, and the line says so.
				details := strings.TrimPrefix(linzLine(sc, store, res, note), "linz ")
				line := fmt.Sprintf("self-check %s/%s: broken build caught: %d violations, as required (%s)",
					sc.name, store, res.violations, details)
				if res.violations == 0 {
					line = fmt.Sprintf("self-check %s/%s: FAILED, the checker found no violation in a deliberately broken build (%s)",
						sc.name, store, details)
				}
				t.Log(line)
				linzSummary(line)
				if res.violations == 0 {
					t.Error(line)
				} else {
					t.Logf("first violation (expected here): %s", res.viz)
				}
			})
		}
	}
}

var linzSummaryMu sync.Mutex

// linzSummary appends a scenario's line to the file CACHEASIDE_LINZ_SUMMARY names, if set:
// make test prints it after the run (go test hides a passing package's output without -v).
func linzSummary(line string) {
	path := os.Getenv("CACHEASIDE_LINZ_SUMMARY")
	if path == "" {
		return
	}
	linzSummaryMu.Lock()
	defer linzSummaryMu.Unlock()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// linzLine is a scenario's summary: histories, operations (writes and reads checked),
// violations, the check, and the reads checked (strictly, or for guarantee 2 only because
// they may have returned a value the store did not take) and dropped (errors, and after a failed Invalidate).
func linzLine(sc linzScenario, store string, res linzResult, note string) string {
	mode := "linearizable"
	switch {
	case sc.strict:
	case sc.staleBound(store) > 0:
		mode = fmt.Sprintf("guarantee 2 within %v", sc.staleBound(store))
	default:
		mode = "guarantee 2"
	}
	line := fmt.Sprintf("linz %s/%s: histories=%d ops=%d violations=%d (%s) reads=%d",
		sc.name, store, res.histories, res.ops, res.violations, mode, res.reads)
	if sc.strict {
		line += fmt.Sprintf(" strict=%d unstored=%d", res.reads-res.open, res.open)
	}
	line += fmt.Sprintf(" dropped=%d+%d", res.readErrs, res.taintReads)
	if res.failedWrites > 0 {
		line += fmt.Sprintf(" failed-invalidates=%d", res.failedWrites)
	}
	if sc.work.retryInvalidate > 0 {
		line += fmt.Sprintf(" retried-invalidates=%d", res.retriedWrites)
	}
	if !sc.strict {
		line += fmt.Sprintf(" inversions=%d", res.inversions)
	}
	if sc.staleBound(store) > 0 || sc.l1Bound > 0 {
		line += fmt.Sprintf(" max-lag=%.2fms", float64(res.maxLag)/1e6)
	}
	if res.unknown > 0 {
		line += fmt.Sprintf(" unknown=%d", res.unknown)
	}
	if note != "" {
		line += " | " + note
	}
	return line
}

// runLinz runs a scenario's rounds on one store and checks them.
func runLinz(t *testing.T, sc linzScenario, store string, scale int) (linzResult, string) {
	tg := newLinzTarget(t, store, sc.proxy)
	if tg.memory == nil {
		tg.admin(t)
	}
	tg.mute = sc.mute
	if sc.migrate {
		if scale == 1 && os.Getenv("CACHEASIDE_LINZ_SLOT") == "" {
			// Not at CI size: on a cluster shared with the rest of the suite a MIGRATE now and
			// then meets BUSYKEY (a key of the slot created on the target through an ASK while
			// the source still held it), a race of the resharding itself, not of the cache.
			t.Skip("slot migration runs in make verify (or with CACHEASIDE_LINZ_SLOT=1)")
		}
		tg.mover = newSlotMover(t, tg)
		tg.keyTag = tg.mover.tag
	}
	w := sc.work
	prefix := testPrefix(t)
	caches := make([]*Cache[linzValue], w.instances)
	for i := range caches {
		store := tg.newStore(t)
		if sc.wrap != nil {
			store = sc.wrap(store)
		}
		caches[i] = newTestCache[linzValue](t, store, concat([]Option{WithPrefix(prefix)}, sc.opts)...)
		caches[i].unsafeSkipLeaseCheck = sc.broken
		caches[i].unsafeLateTags = sc.lateTags
	}
	if sc.feature == "l1" {
		waitLive(t, caches...)
	}
	var res linzResult
	var notes []string
	for r := range w.rounds * scale {
		h, note := linzRound(t, sc, tg, caches, fmt.Sprintf("r%d:", r))
		if note != "" {
			notes = append(notes, note)
		}
		res.merge(h.check(linzCheck{label: sc.name + "/" + store, strict: sc.strict, staleBound: sc.staleBound(store), vizDir: sc.vizDir}))
	}
	var st Stats
	for _, c := range caches {
		s := c.Stats()
		st.L1Hits += s.L1Hits
		st.L1Flushes += s.L1Flushes
		st.Stale += s.Stale
		st.EarlyRefreshes += s.EarlyRefreshes
		st.TagInvalidations += s.TagInvalidations
	}
	var feature string
	var seen uint64
	switch sc.feature {
	case "l1":
		feature, seen = fmt.Sprintf("%d L1 hits, %d L1 flushes", st.L1Hits, st.L1Flushes), st.L1Hits
	case "stale":
		feature, seen = fmt.Sprintf("%d stale values served", st.Stale), st.Stale
	case "early":
		feature, seen = fmt.Sprintf("%d early refreshes", st.EarlyRefreshes), st.EarlyRefreshes
	case "tags":
		feature, seen = fmt.Sprintf("%d tags invalidated", st.TagInvalidations), st.TagInvalidations
	}
	if sc.feature != "" && seen == 0 && !sc.mute {
		t.Errorf("%s/%s did not exercise its options: %s", sc.name, store, feature)
	}
	note := ""
	if len(notes) > 0 {
		note = notes[len(notes)-1]
		if len(notes) > 1 {
			note = fmt.Sprintf("%s (last of %d rounds)", note, len(notes))
		}
	}
	return res, strings.Trim(feature+"; "+note, "; ")
}

// linzRound runs one round of sc's workload on fresh keys, with its fault, and returns the
// history. After the traffic and the fault stop, each key gets a last write whose Invalidate
// is retried until it succeeds, and every instance reads every key: at rest, every cache
// must serve the truth.
func linzRound(t testing.TB, sc linzScenario, tg *linzTarget, caches []*Cache[linzValue], keyPrefix string) (*linzHistory, string) {
	w := sc.work
	truth := newLinzTruth()
	h := newLinzHistory()
	keys := make([]string, w.keys)
	for i := range keys {
		keys[i] = keyPrefix + strconv.Itoa(i)
		if tg.keyTag != "" {
			keys[i] = "{" + tg.keyTag + "}" + keys[i]
		}
	}
	// With sc.tags, key i carries its own tag and its group's.
	tagsOf := func(key string) []string {
		i := slices.Index(keys, key)
		return []string{"k:" + key, "g:" + strconv.Itoa(i%2)}
	}
	var manyOpts []CallOption
	keyOpts := func(string) []CallOption { return nil }
	if sc.tags {
		manyOpts = []CallOption{TagsOf(tagsOf)}
		keyOpts = func(k string) []CallOption { return []CallOption{Tags(tagsOf(k)...)} }
	}
	var loads atomic.Int64
	loader := func(key string) func(context.Context) (linzValue, error) {
		return func(ctx context.Context) (linzValue, error) {
			v := truth.read(key)
			n := loads.Add(1)
			if w.stallEvery > 0 && n%int64(w.stallEvery) == 0 {
				time.Sleep(w.stall) // a load stuck past its lease, deaf to its context
			} else if w.loadDelay > 0 {
				if !sleepCtx(ctx, rand.N(w.loadDelay)) {
					return linzValue{}, ctx.Err()
				}
			}
			return linzValue{Key: key, Version: v}, nil
		}
	}
	manyLoader := func(ctx context.Context, missing []string) (map[string]linzValue, error) {
		m := make(map[string]linzValue, len(missing))
		for _, k := range missing {
			m[k] = linzValue{Key: k, Version: truth.read(k)}
		}
		if w.loadDelay > 0 && !sleepCtx(ctx, rand.N(w.loadDelay)) {
			return nil, ctx.Err()
		}
		return m, nil
	}
	record := func(client int, key string, call int64, v linzValue, err error, unstored bool) {
		if err != nil {
			h.readErrs.Add(1)
			return
		}
		ver := v.Version
		if v.Key != key {
			ver = badVersion
		}
		h.add(key, linzOp{client: client, version: ver, call: call, ret: h.now(), unstored: unstored})
	}
	// read is a reader's n-th operation; at is "" for a random key (or two), else a plain read
	// of at with a context that never ends.
	read := func(client int, c *Cache[linzValue], n int, at string) {
		ctx := context.Background()
		if at == "" && w.cancelEvery > 0 && n%w.cancelEvery == 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, rand.N(w.cancelAfter+1))
			defer cancel()
		}
		before := markOf(c)
		if at == "" && w.manyEvery > 0 && n%w.manyEvery == 0 && len(keys) > 1 {
			i := rand.N(len(keys))
			ks := []string{keys[i], keys[(i+1+rand.N(len(keys)-1))%len(keys)]}
			call := h.now()
			m, err := c.GetOrLoadMany(ctx, ks, manyLoader, manyOpts...)
			unstored := before.unstored(markOf(c))
			for _, k := range ks {
				v, ok := m[k]
				if err == nil && !ok {
					err = errors.New("missing from GetOrLoadMany")
				}
				record(client, k, call, v, err, unstored)
			}
			return
		}
		k := at
		if k == "" {
			k = keys[rand.N(len(keys))]
		}
		call := h.now()
		v, err := c.GetOrLoad(ctx, k, loader(k), keyOpts(k)...)
		unstored := before.unstored(markOf(c))
		record(client, k, call, v, err, unstored)
	}
	// write commits a new version of key and invalidates it, retrying a failed Invalidate for
	// up to retryFor; must says the Invalidate has to succeed (at rest, after the faults).
	write := func(client int, c *Cache[linzValue], key string, retryFor time.Duration, must bool) {
		call := h.now()
		v := truth.commit(key)
		if w.commitGap > 0 {
			time.Sleep(rand.N(w.commitGap))
		}
		invalidate := func() error { return c.Invalidate(context.Background(), key) }
		if sc.tags {
			tag := tagsOf(key)[rand.N(2)]
			invalidate = func() error { return c.InvalidateTags(context.Background(), tag) }
		}
		err := invalidate()
		retried := err != nil
		for err != nil && h.now()-call < int64(retryFor) {
			time.Sleep(10 * time.Millisecond)
			err = invalidate()
		}
		if err != nil && must {
			t.Errorf("Invalidate still failing %v after the faults stopped: %v", retryFor, err)
		}
		h.add(key, linzOp{client: client, write: true, failed: err != nil, retried: retried, version: v, call: call, ret: h.now()})
	}

	faultCtx, stopFault := context.WithCancel(context.Background())
	faultDone := make(chan string, 1)
	if sc.fault != nil {
		go func() { faultDone <- sc.fault(faultCtx, t, tg) }()
	} else {
		faultDone <- ""
	}

	var writing sync.WaitGroup
	var wg sync.WaitGroup
	stopReads := make(chan struct{})
	for i := range w.writers {
		writing.Add(1)
		go func() {
			defer writing.Done()
			c := caches[i%len(caches)]
			for range w.writes {
				time.Sleep(rand.N(w.writeGap + 1))
				write(i, c, keys[rand.N(len(keys))], w.retryInvalidate, false)
			}
		}()
	}
	for i := range w.readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := w.writers + i
			c := caches[i%len(caches)]
			for n := 1; ; n++ {
				select {
				case <-stopReads:
					return
				default:
				}
				read(client, c, n, "")
				if w.readGap > 0 {
					time.Sleep(rand.N(w.readGap + 1))
				}
			}
		}()
	}
	if sc.churn {
		wg.Add(1)
		go func() {
			defer wg.Done()
			churn(t, sc, tg, caches[0].cfg.prefix, stopReads, func(client int, c *Cache[linzValue], n int) {
				read(w.writers+w.readers+len(caches)+client, c, n, "")
			})
		}()
	}
	writing.Wait()
	close(stopReads)
	wg.Wait()
	stopFault()
	note := <-faultDone

	// At rest: one last write per key, invalidated for sure, then every instance reads every
	// key, and each of those reads must return the last version (or one within the stale
	// bound of it).
	for i, k := range keys {
		write(i%w.writers, caches[i%len(caches)], k, 30*time.Second, true)
	}
	for i, c := range caches {
		for _, k := range keys {
			read(w.writers+w.readers+i, c, 0, k)
		}
	}
	return h, note
}

// churn builds an instance on tg with prefix, has three readers read through it (read) for 2
// to 20 ms, closes it while they are at it, and starts over, until stop is closed.
func churn(t testing.TB, sc linzScenario, tg *linzTarget, prefix string, stop <-chan struct{}, read func(client int, c *Cache[linzValue], n int)) {
	for gen := 0; ; gen++ {
		select {
		case <-stop:
			return
		default:
		}
		c, err := New[linzValue](tg.newStore(t), concat([]Option{WithPrefix(prefix)}, sc.opts)...)
		if err != nil {
			t.Error(err)
			return
		}
		var readers sync.WaitGroup
		for r := range 3 {
			readers.Add(1)
			go func() {
				defer readers.Done()
				for n := 1; !c.life.isClosed(); n++ {
					read(gen%8*3+r, c, n)
				}
			}()
		}
		time.Sleep(2*time.Millisecond + rand.N(18*time.Millisecond))
		_ = c.Close()
		readers.Wait()
	}
}

// failingFills wraps a store so that one Fill or FillMany in three fails: half of them after
// the store took the values (a lost reply), half without reaching it.
func failingFills(s Store) Store {
	return &fillFaults{Store: s}
}

type fillFaults struct {
	Store
	n atomic.Int64
}

var errFillLost = errors.New("injected: fill reply lost")

func (f *fillFaults) fault() (fail, land bool) {
	n := f.n.Add(1)
	return n%3 == 0, n%6 == 0
}

func (f *fillFaults) Fill(ctx context.Context, key, token string, value []byte, ttl time.Duration) (bool, error) {
	fail, land := f.fault()
	if !fail {
		return f.Store.Fill(ctx, key, token, value, ttl)
	}
	if land {
		_, _ = f.Store.Fill(ctx, key, token, value, ttl)
	}
	return false, errFillLost
}

func (f *fillFaults) FillMany(ctx context.Context, token string, entries []FillEntry) ([]bool, error) {
	fail, land := f.fault()
	if !fail {
		return f.Store.FillMany(ctx, token, entries)
	}
	if land {
		_, _ = f.Store.FillMany(ctx, token, entries)
	}
	return nil, errFillLost
}

func (f *fillFaults) ReleaseMany(ctx context.Context, token string, keys []string) ([]bool, error) {
	return f.Store.(ReleaseManyStore).ReleaseMany(ctx, token, keys)
}

func (f *fillFaults) LeaseMany(ctx context.Context, keys []string, token string, leaseTTL time.Duration) ([]Lookup, error) {
	return f.Store.(LeaseManyStore).LeaseMany(ctx, keys, token, leaseTTL)
}
