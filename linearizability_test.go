package cacheaside

// Guarantee 2 checked by a machine: concurrent clients on several Cache instances, each on its
// own store client, read keys with GetOrLoad (and GetOrLoadMany) from a source of truth and
// write them (commit a new version to the truth, then Invalidate), while faults hit the
// store. Every operation's call and return are recorded on the monotonic clock, and each
// key's history is checked with porcupine against a register whose versions are written in
// order (a write is its commit plus its invalidation).
//
// Two checks run on every history:
//
//   - guarantee 2 (every scenario): each read, taken alone with all the writes, must
//     linearize. A read returns the value of a write that began before it returned, and of
//     none older than a write whose Invalidate returned before the read began. porcupine
//     checks it with one partition per read.
//   - linearizability (strict scenarios): the whole history must linearize, which also
//     forbids two reads, one after the other, seeing a new version and then an older one.
//     Cache-aside does not promise that while a write is in progress and some callers fail
//     open: a caller that skips the store reads the source's new version while another
//     instance still hits the old entry until the writer's Invalidate lands. So scenarios in
//     which callers fail open count those "inversions" apart, as information; scenarios
//     where the store stays healthy (generous store timeouts) require full linearizability.
//
// What is left out of a history, and why:
//
//   - a read that returned an error (its context ended, or the loader failed) returned no
//     value, and a read changes nothing: it is dropped.
//   - a write whose Invalidate returned an error has no guarantee: the old entry may live
//     until its TTL. Its commit is real (the truth moved, and versions must stay in order), so
//     the write stays, with its real interval; but the reads of its key that begin from its
//     call until a later write (a higher version, so committed after it) has been
//     invalidated successfully are dropped. Dropping reads never hides a violation among
//     the reads that stay, and never invents one.
//
// A test-only switch (Cache.unsafeSkipLeaseCheck) makes fills ignore leases, as a cache
// without them would; TestLinearizabilityCatchesBrokenBuild shows the checker then reports
// violations, so the suite can fail.
//
// Sizes: CACHEASIDE_VERIFY_SCALE multiplies the rounds (1, the default, is the CI size; make
// verify runs 6, about five minutes).

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
	client    int
	write     bool
	failed    bool   // a write whose Invalidate returned an error
	version   uint64 // written or read
	call, ret int64  // nanoseconds on the monotonic clock since the history's base
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

// linzOps turns one key's recorded operations into porcupine's, dropping the reads no
// guarantee covers (see the file comment). staleBound widens every write by the delay a
// scenario allows reads to lag (an L1's bound; 0 without one).
func linzOps(ops []linzOp, staleBound time.Duration) (out []porcupine.Operation, dropped int) {
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
	for _, op := range ops {
		if op.write {
			meta := "invalidated"
			if op.failed {
				meta = "Invalidate failed"
			}
			out = append(out, porcupine.Operation{
				ClientId: op.client, Input: linzIn{write: true, version: op.version},
				Call: op.call, Return: op.ret + int64(staleBound), Metadata: meta,
			})
			continue
		}
		if slices.ContainsFunc(tainted, func(w window) bool { return op.call >= w.from && op.call <= w.to }) {
			dropped++
			continue
		}
		out = append(out, porcupine.Operation{
			ClientId: op.client, Input: linzIn{}, Output: op.version, Call: op.call, Return: op.ret,
		})
	}
	return out, dropped
}

// linzResult sums the checks of one run.
type linzResult struct {
	histories, ops       int
	violations           int // reads that break guarantee 2, plus histories with inversions in a strict scenario
	inversions           int // strict linearizability failures a non-strict scenario tolerates
	unknown              int // checks porcupine could not finish in time
	readErrs, taintReads int
	failedWrites         int
	viz                  string // visualization of the first violation
}

func (r *linzResult) merge(o linzResult) {
	r.histories += o.histories
	r.ops += o.ops
	r.violations += o.violations
	r.inversions += o.inversions
	r.unknown += o.unknown
	r.readErrs += o.readErrs
	r.taintReads += o.taintReads
	r.failedWrites += o.failedWrites
	if r.viz == "" {
		r.viz = o.viz
	}
}

const linzCheckTimeout = time.Minute

// check checks every key's history of h.
func (h *linzHistory) check(label string, strict bool, staleBound time.Duration) linzResult {
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
		}
		ops, dropped := linzOps(h.ops[k], staleBound)
		res.histories++
		res.ops += len(ops)
		res.taintReads += dropped

		perRead := porcupine.CheckOperationsTimeout(linzModel(true), ops, linzCheckTimeout)
		full := porcupine.Ok
		if strict || perRead == porcupine.Ok {
			full = porcupine.CheckOperationsTimeout(linzModel(false), ops, linzCheckTimeout)
		}
		var failed porcupine.Model
		switch {
		case perRead == porcupine.Unknown || full == porcupine.Unknown:
			res.unknown++
			continue
		case perRead == porcupine.Illegal:
			res.violations += staleReads(ops)
			failed = linzModel(true)
		case full == porcupine.Illegal && strict:
			res.violations++
			failed = linzModel(false)
		case full == porcupine.Illegal:
			res.inversions++
			continue
		default:
			continue
		}
		if res.viz == "" {
			res.viz = visualizeLinz(label, k, failed, ops) + explainStale(k, ops)
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
			s += fmt.Sprintf("; write v%d by client %d over [%s, %s] (%v) had returned before it began",
				before.Input.(linzIn).version, before.ClientId, ms(before.Call), ms(before.Return), before.Metadata)
		}
		return s
	}
	return ""
}

// visualizeLinz writes porcupine's HTML view of a failed history to a file under the temp
// directory and returns its path (or why it could not).
func visualizeLinz(label, key string, m porcupine.Model, ops []porcupine.Operation) string {
	_, info := porcupine.CheckOperationsVerbose(m, ops, linzCheckTimeout)
	f, err := os.CreateTemp("", "cacheaside-linz-*.html")
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
}

// linzScenario is one line of the table: a workload, cache options, a fault, on some stores.
type linzScenario struct {
	name   string
	stores []string
	opts   []Option // added to every instance's options
	work   workload
	fault  fault // nil: none
	proxy  bool  // route the store's connections through a fault proxy
	// strict requires full linearizability; otherwise inversions are counted apart (see the
	// file comment). A scenario in which callers may fail open must not be strict.
	strict bool
	// staleBound is the staleness a scenario's options allow (an L1's documented bound).
	staleBound time.Duration
	// broken turns on Cache.unsafeSkipLeaseCheck in every instance.
	broken bool
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
// busy two-core machine under -race never makes a caller fail open.
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

func concat[T any](ss ...[]T) []T { return slices.Concat(ss...) }

// baseWork is the CI size of a scenario's traffic.
var baseWork = workload{
	rounds: 3, keys: 3, instances: 3, readers: 6, writers: 2, writes: 20,
	writeGap: 10 * time.Millisecond, readGap: time.Millisecond,
	loadDelay: 4 * time.Millisecond, commitGap: 2 * time.Millisecond, manyEvery: 5,
}

func withWork(f func(w *workload)) workload {
	w := baseWork
	f(&w)
	return w
}

var allStores = []string{storeMemory, storeRedis, storeCluster}
var redisStores = []string{storeRedis, storeCluster}

// linzScenarios is the table. The L1 (WithLocalCache) and early refresh (WithEarlyRefresh)
// add their lines here: options in opts, and staleBound for the L1's documented delay.
func linzScenarios() []linzScenario {
	return []linzScenario{
		{name: "clean", stores: allStores, opts: healthyOpts, work: baseWork, strict: true},
		{name: "stall-past-lease", stores: allStores, strict: false,
			// Leases far shorter than the load timeout: a stalled load loses its lease, the next
			// caller takes over, and the stalled load's fill must be refused.
			opts: concat(healthyOpts, []Option{WithLeaseTTL(15 * time.Millisecond), WithLoadTimeout(150 * time.Millisecond), WithLeaseWait(time.Millisecond, 10*time.Millisecond)}),
			work: withWork(func(w *workload) { w.stallEvery, w.stall = 4, 40*time.Millisecond })},
		{name: "cancel-mid-load", stores: allStores, opts: healthyOpts, strict: true,
			work: withWork(func(w *workload) {
				w.cancelEvery, w.cancelAfter, w.loadDelay = 2, 3*time.Millisecond, 4*time.Millisecond
			})},
		{name: "client-kill", stores: redisStores, opts: faultOpts, fault: faultKill,
			work: withWork(func(w *workload) { w.writeGap = 40 * time.Millisecond })},
		{name: "redis-restart", stores: []string{storeOwn}, opts: faultOpts, fault: faultRestart,
			work: withWork(func(w *workload) { w.writes, w.writeGap = 20, 50*time.Millisecond })},
		{name: "proxy-latency", stores: redisStores, opts: faultOpts, fault: faultLatency, proxy: true,
			work: withWork(func(w *workload) { w.writeGap = 40 * time.Millisecond })},
		{name: "proxy-drop", stores: redisStores, opts: faultOpts, fault: faultDrop, proxy: true,
			work: withWork(func(w *workload) { w.writeGap = 40 * time.Millisecond })},
	}
}

// TestLinearizability runs every scenario on every store it lists and requires zero
// violations. Each prints one line: scenario, store, histories, operations, violations.
func TestLinearizability(t *testing.T) {
	scale := linzScale(t)
	for _, sc := range linzScenarios() {
		for _, store := range sc.stores {
			t.Run(sc.name+"/"+store, func(t *testing.T) {
				res, note := runLinz(t, sc, store, scale)
				report := linzLine(sc, store, res, note)
				t.Log(report)
				if res.violations > 0 || res.unknown > 0 {
					t.Errorf("%s\nvisualization of the first violation: %s", report, res.viz)
				}
			})
		}
	}
}

// TestLinearizabilityCatchesBrokenBuild runs the clean scenario on a build whose fills ignore
// leases (Cache.unsafeSkipLeaseCheck) and requires the checker to report violations: proof
// that the suite can fail.
func TestLinearizabilityCatchesBrokenBuild(t *testing.T) {
	sc := linzScenarios()[0]
	sc.name, sc.broken = "broken-build", true
	for _, store := range sc.stores {
		t.Run(store, func(t *testing.T) {
			res, note := runLinz(t, sc, store, 1)
			report := linzLine(sc, store, res, note)
			t.Log(report)
			if res.violations == 0 {
				t.Errorf("the checker found no violation in a build without lease checks: %s", report)
			} else {
				t.Logf("as it must, the checker caught the broken build; first violation: %s", res.viz)
			}
		})
	}
}

func linzLine(sc linzScenario, store string, res linzResult, note string) string {
	mode := "linearizable"
	if !sc.strict {
		mode = "guarantee 2"
	}
	line := fmt.Sprintf("linz: scenario=%s store=%s histories=%d operations=%d violations=%d (%s)",
		sc.name, store, res.histories, res.ops, res.violations, mode)
	line += fmt.Sprintf(" inversions=%d dropped-reads=%d+%d failed-writes=%d",
		res.inversions, res.readErrs, res.taintReads, res.failedWrites)
	if note != "" {
		line += " fault: " + note
	}
	return line
}

// runLinz runs a scenario's rounds on one store and checks them.
func runLinz(t *testing.T, sc linzScenario, store string, scale int) (linzResult, string) {
	tg := newLinzTarget(t, store, sc.proxy)
	if tg.memory == nil {
		tg.admin(t)
	}
	w := sc.work
	prefix := testPrefix(t)
	caches := make([]*Cache[linzValue], w.instances)
	for i := range caches {
		caches[i] = newTestCache[linzValue](t, tg.newStore(t), concat([]Option{WithPrefix(prefix)}, sc.opts)...)
		caches[i].unsafeSkipLeaseCheck = sc.broken
	}
	var res linzResult
	var notes []string
	relaxed := 0
	for r := range w.rounds * scale {
		errs := tg.storeErrs.Load()
		h, note := linzRound(t, sc, tg, caches, fmt.Sprintf("r%d:", r))
		if note != "" {
			notes = append(notes, note)
		}
		strict := sc.strict
		if strict && tg.storeErrs.Load() != errs {
			// A store call failed (a busy machine outlasted even generous timeouts) and
			// callers failed open: full linearizability is not promised for this round.
			strict = false
			relaxed++
		}
		res.merge(h.check(sc.name+"/"+store, strict, sc.staleBound))
	}
	note := ""
	if len(notes) > 0 {
		note = notes[len(notes)-1]
		if len(notes) > 1 {
			note = fmt.Sprintf("%s (last of %d rounds)", note, len(notes))
		}
	}
	if relaxed > 0 {
		note = strings.TrimPrefix(note+fmt.Sprintf("; %d rounds checked for guarantee 2 only: the store erred", relaxed), "; ")
	}
	return res, note
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
	record := func(client int, key string, call int64, v linzValue, err error) {
		if err != nil {
			h.readErrs.Add(1)
			return
		}
		ver := v.Version
		if v.Key != key {
			ver = badVersion
		}
		h.add(key, linzOp{client: client, version: ver, call: call, ret: h.now()})
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
		if at == "" && w.manyEvery > 0 && n%w.manyEvery == 0 && len(keys) > 1 {
			i := rand.N(len(keys))
			ks := []string{keys[i], keys[(i+1+rand.N(len(keys)-1))%len(keys)]}
			call := h.now()
			m, err := c.GetOrLoadMany(ctx, ks, manyLoader)
			for _, k := range ks {
				v, ok := m[k]
				if err == nil && !ok {
					err = errors.New("missing from GetOrLoadMany")
				}
				record(client, k, call, v, err)
			}
			return
		}
		k := at
		if k == "" {
			k = keys[rand.N(len(keys))]
		}
		call := h.now()
		v, err := c.GetOrLoad(ctx, k, loader(k))
		record(client, k, call, v, err)
	}
	write := func(client int, c *Cache[linzValue], key string, retry bool) {
		call := h.now()
		v := truth.commit(key)
		if w.commitGap > 0 {
			time.Sleep(rand.N(w.commitGap))
		}
		err := c.Invalidate(context.Background(), key)
		for retry && err != nil {
			time.Sleep(10 * time.Millisecond)
			if h.now()-call > int64(30*time.Second) {
				t.Errorf("Invalidate still failing 30s after the faults stopped: %v", err)
				break
			}
			err = c.Invalidate(context.Background(), key)
		}
		h.add(key, linzOp{client: client, write: true, failed: err != nil, version: v, call: call, ret: h.now()})
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
				write(i, c, keys[rand.N(len(keys))], false)
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
	writing.Wait()
	close(stopReads)
	wg.Wait()
	stopFault()
	note := <-faultDone

	// At rest: one last write per key, invalidated for sure, then every instance reads every
	// key, and each of those reads must return the last version.
	for i, k := range keys {
		write(i%w.writers, caches[i%len(caches)], k, true)
	}
	for i, c := range caches {
		for _, k := range keys {
			read(w.writers+w.readers+i, c, 0, k)
		}
	}
	return h, note
}
