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
//     another's lease is given up after a lease and a load's time (wait.go). Each instance
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
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

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
