package cacheaside

import (
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
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
