package cacheaside

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a Cache's counters since New: the same counts the Prometheus
// metrics export (cacheasideprom.WithPrometheus), summed over key groups, for programs without Prometheus.
// Each field is read atomically, the snapshot as a whole is not: under load, fields may be a
// few events apart.
type Stats struct {
	// Requests by how they were answered (one per GetOrLoad call, one per distinct key of a
	// GetOrLoadMany call).
	Hits         uint64 // a value from the store
	L1Hits       uint64 // a value from the local cache (WithLocalCache)
	NegativeHits uint64 // a cached not-found
	Stale        uint64 // a value past its TTL: served while it is refreshed, or instead of a failed load
	StaleIfError uint64 // among Stale: served instead of a failed load (WithStaleIfError)
	Misses       uint64 // answered by a load: the call's own, a shared one, or another process's

	// Loader calls (a GetOrLoadMany load is one call) by outcome, and their total duration.
	Loads         uint64 // every loader call; the next three are among them
	LoadsNotFound uint64 // returned ErrNotFound
	LoadErrors    uint64 // returned another error
	LoadPanics    uint64 // panicked
	LoadTime      time.Duration

	StoreErrors          uint64 // store operations that failed or timed out
	LeaseWaits           uint64 // waits for a lease another process held
	Coalesced            uint64 // calls that shared a load, a lease wait or a lookup in this process
	EarlyRefreshes       uint64 // background refreshes that loaded before expiry (WithEarlyRefresh)
	Invalidations        uint64 // keys passed to Invalidate
	PatternInvalidations uint64 // InvalidatePattern calls
	TagInvalidations     uint64 // tags passed to InvalidateTags
	InvalidationFailures uint64 // Invalidate, InvalidatePattern and InvalidateTags calls that returned an *InvalidationError
	TagFailures          uint64 // loads left unstored because their tags could not be recorded, and tag records InvalidateTags could not remove (harmless: a later one deletes those keys again)
	UnreleasedLeases     uint64 // leases this process would not fill and could not release (the store refused every attempt): they expire with their TTL
	UndecodableValues    uint64 // stored entries that did not decode, treated as misses
	UnopenedValues       uint64 // among them: encrypted entries that did not open (altered, moved, unknown key), unencrypted ones where encryption is on (WithEncryption)
	L1BroadcastDrops     uint64 // local-cache entries dropped on another instance's invalidation (held here, not keys named)
	L1Flushes            uint64 // times the whole local cache was dropped

	BreakerOpen  bool   // the store is being skipped now
	BreakerOpens uint64 // times the circuit breaker opened
}

// Requests returns the number of requests, however they were answered (StaleIfError is among
// Stale, not added).
func (s Stats) Requests() uint64 {
	return s.Hits + s.L1Hits + s.NegativeHits + s.Stale + s.Misses
}

// HitRatio returns the share of requests answered from the cache without waiting for a load
// (hits, L1 hits, negative hits and stale values), in [0, 1]; 0 before any request.
func (s Stats) HitRatio() float64 {
	n := s.Requests()
	if n == 0 {
		return 0
	}
	return float64(n-s.Misses) / float64(n)
}

// MeanLoadTime returns the mean duration of a loader call; 0 before any load.
func (s Stats) MeanLoadTime() time.Duration {
	if s.Loads == 0 {
		return 0
	}
	return s.LoadTime / time.Duration(s.Loads)
}

// Stats returns a snapshot of the cache's counters. It is cheap (a few dozen atomic loads)
// and safe to call at any time, also after Close.
func (c *Cache[T]) Stats() Stats {
	s := c.obs.stats()
	s.UnopenedValues = c.entries.wire.rejects[rejectSealed].Load() + c.entries.wire.rejects[rejectPlain].Load()
	s.InvalidationFailures = c.stats.invalFailed.Load()
	s.TagFailures = c.tags.failures.Load()
	s.UnreleasedLeases = c.gw.unreleased.Load()
	return s
}

func (o *observer) stats() Stats {
	var s Stats
	o.eachGroup(func(g *groupCounters) {
		s.Hits += g.requests.load(resultHit)
		s.L1Hits += g.requests.load(resultL1Hit)
		s.NegativeHits += g.requests.load(resultNegativeHit)
		s.Stale += g.requests.load(resultStale)
		s.Misses += g.requests.load(resultMiss)
		for oc := range numOutcomes {
			s.Loads += g.loads[oc].Load()
		}
		s.LoadsNotFound += g.loads[outcomeNotFound].Load()
		s.LoadErrors += g.loads[outcomeError].Load()
		s.LoadPanics += g.loads[outcomePanic].Load()
		s.LoadTime += time.Duration(g.loadTime.sum.Load())
	})
	for op := range numStoreOps {
		s.StoreErrors += o.storeErrors[op].Load()
	}
	for k := range numCoalesceKinds {
		s.Coalesced += o.coalescedN[k].Load()
	}
	s.LeaseWaits = o.leaseWaits.Load()
	s.StaleIfError = o.staleOnError.Load()
	s.EarlyRefreshes = o.earlyRefreshes.Load()
	s.Invalidations = o.invalidations[invalidatedKey].Load()
	s.PatternInvalidations = o.invalidations[invalidatedPattern].Load()
	s.TagInvalidations = o.invalidations[invalidatedTag].Load()
	s.UndecodableValues = o.undecodable.Load()
	s.L1BroadcastDrops = o.l1Drops.Load()
	s.L1Flushes = o.l1Flushes.Load()
	s.BreakerOpen = o.breaker != nil && o.breaker.Open()
	s.BreakerOpens = o.transitions[1].Load()
	return s
}

// stats counts what the metrics (metrics.go) do not tell apart. (The parts keep their own:
// refreshes in the refresher, unreleased leases in the gateway, tag failures in the tagger.)
type stats struct {
	// storeless counts loads whose values the store did not take, which their callers get all
	// the same: loads of callers failing open (loadWithoutStore, loadManyWithoutStore), loads
	// after waiting out another's lease, and loads whose fill was refused (the lease was lost
	// to an Invalidate or its expiry), failed or was not tried (value not storable). The
	// linearizability suite tells by it the reads that may have got such a value.
	storeless atomic.Uint64
	// invalFailed counts Invalidate, InvalidatePattern and InvalidateTags calls that returned
	// an error.
	invalFailed atomic.Uint64
}
