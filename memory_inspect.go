package cacheaside

import (
	"context"
	"time"
)

var _ InspectStore = (*MemoryStore)(nil)

// Inspect implements InspectStore: one read of the entry (which otter counts as an access,
// like any read), no write.
func (s *MemoryStore) Inspect(ctx context.Context, key string) (StoreEntry, error) {
	e, ok := s.c.GetIfPresent(key)
	now := s.now()
	if e = s.live(e, ok, now); e == nil {
		return StoreEntry{}, nil
	}
	out := StoreEntry{Value: e.value, TTL: time.Duration(e.expires - now)}
	if e.token != "" && e.leaseEnd > now {
		out.Lease, out.LeaseTTL = true, time.Duration(e.leaseEnd-now)
	}
	return out, nil
}
