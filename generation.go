package cacheaside

import (
	"hash/maphash"
	"sync/atomic"
)

// generations counts invalidations per stripe of keys, plus an epoch for pattern
// invalidations (and local cache flushes). Keys are user keys, without the prefix. A flight
// records the sum when it begins; a caller without the store joins it only if the sum is
// unchanged, that is, if no invalidation that may cover its key happened since. A local cache
// entry records it too, and is served only while it is unchanged (local.go). Both counters
// only grow, so the sum changes whenever either does.
type generations struct {
	seed    maphash.Seed
	epoch   atomic.Uint64
	stripes [1024]atomic.Uint64
}

func newGenerations() *generations {
	return &generations{seed: maphash.MakeSeed()}
}

func (g *generations) stripe(key string) *atomic.Uint64 {
	return &g.stripes[maphash.String(g.seed, key)%uint64(len(g.stripes))]
}

func (g *generations) load(key string) uint64 { return g.loadStripe(g.stripe(key)) }

// loadStripe is load for a key whose stripe is known (a local cache entry keeps it).
func (g *generations) loadStripe(s *atomic.Uint64) uint64 { return g.epoch.Load() + s.Load() }

func (g *generations) bump(key string) { g.stripe(key).Add(1) }

func (g *generations) bumpAll() { g.epoch.Add(1) }
