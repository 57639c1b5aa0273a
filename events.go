package cacheaside

// The kinds of event the observer (metrics.go) counts: how a request was answered, how a load
// ended, which store operation ran, how work was shared, what an invalidation named. Each is a
// small enum whose String is its metric label.

import "errors"

// result is how a request for one key was answered.
type result uint8

const (
	resultHit         result = iota // a value from the store
	resultL1Hit                     // a value from the local cache
	resultMiss                      // answered by a load: its own, a shared one, or another process's
	resultNegativeHit               // a cached not-found
	resultStale                     // a value past its TTL: served while refreshed, or for a failed load
	numResults
)

func (r result) String() string {
	switch r {
	case resultHit:
		return "hit"
	case resultL1Hit:
		return "l1_hit"
	case resultMiss:
		return "miss"
	case resultNegativeHit:
		return "negative_hit"
	default:
		return "stale"
	}
}

// hitResult is the result of a decoded entry: a value or a cached not-found.
func hitResult(notFound bool) result {
	if notFound {
		return resultNegativeHit
	}
	return resultHit
}

// outcome is how one loader call ended.
type outcome uint8

const (
	outcomeOK outcome = iota
	outcomeNotFound
	outcomeError
	outcomePanic
	numOutcomes
)

func (o outcome) String() string {
	switch o {
	case outcomeOK:
		return "ok"
	case outcomeNotFound:
		return "not_found"
	case outcomeError:
		return "error"
	default:
		return "panic"
	}
}

func outcomeOf(err error, pe *PanicError) outcome {
	switch {
	case pe != nil:
		return outcomePanic
	case err == nil:
		return outcomeOK
	case errors.Is(err, ErrNotFound):
		return outcomeNotFound
	default:
		return outcomeError
	}
}

// storeOp names a Store method, for store metrics, logs and spans.
type storeOp uint8

const (
	opGetOrLease storeOp = iota
	opGetOrLeaseMany
	opLease
	opFill
	opFillMany
	opRelease
	opDelete
	opDeletePattern
	opPing
	opPublish    // an invalidation message to the other instances (broadcast.go)
	opAddTags    // TagStore.AddTags (tags.go)
	opTaggedKeys // TagStore.TaggedKeys
	opRemoveTags // TagStore.RemoveTags
	numStoreOps
)

func (op storeOp) String() string {
	switch op {
	case opGetOrLease:
		return "get_or_lease"
	case opGetOrLeaseMany:
		return "get_or_lease_many"
	case opLease:
		return "lease"
	case opFill:
		return "fill"
	case opFillMany:
		return "fill_many"
	case opRelease:
		return "release"
	case opDelete:
		return "delete"
	case opDeletePattern:
		return "delete_pattern"
	case opPublish:
		return "publish"
	case opAddTags:
		return "add_tags"
	case opTaggedKeys:
		return "tagged_keys"
	case opRemoveTags:
		return "remove_tags"
	default:
		return "ping"
	}
}

// coalesceKind is how a call shared work with others in this process.
type coalesceKind uint8

const (
	coalescedFlight coalesceKind = iota // joined a load or lease wait in flight
	coalescedLookup                     // shared a read-or-lease round trip
	numCoalesceKinds
)

func (k coalesceKind) String() string {
	if k == coalescedFlight {
		return "flight"
	}
	return "lookup"
}

// invalidationKind is what an invalidation named.
type invalidationKind uint8

const (
	invalidatedKey     invalidationKind = iota // one key of Invalidate
	invalidatedPattern                         // one InvalidatePattern call
	invalidatedTag                             // one tag of InvalidateTags
	numInvalidationKinds
)

func (k invalidationKind) String() string {
	switch k {
	case invalidatedKey:
		return "key"
	case invalidatedTag:
		return "tag"
	}
	return "pattern"
}
