package cacheaside

import (
	"context"
	"sync"
	"time"
)

var _ TagStore = (*MemoryStore)(nil)

// memTags is a MemoryStore's tag index: for each tag, the keys recorded under it with the
// version and deadline of each record. Expired records are dropped in a sweep of the whole
// index whenever the records added since the last sweep outnumber those it left (and at
// least memTagSweepMin): the index holds at most about twice the live records, and each
// record costs O(1) amortized.
type memTags struct {
	mu      sync.Mutex
	tags    map[string]map[string]memTagRecord
	version int64 // the last version given
	added   int   // records added since the last sweep
	left    int   // records the last sweep left
}

type memTagRecord struct {
	version int64
	expires int64 // nanoseconds since the store's base
}

const memTagSweepMin = 1024

// AddTags implements TagStore.
func (s *MemoryStore) AddTags(ctx context.Context, tagged map[string][]string, life time.Duration) error {
	t := &s.tags
	now := s.now()
	expires := now + int64(life)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tags == nil {
		t.tags = make(map[string]map[string]memTagRecord)
	}
	for tag, keys := range tagged {
		recs := t.tags[tag]
		if recs == nil {
			recs = make(map[string]memTagRecord, len(keys))
			t.tags[tag] = recs
		}
		for _, k := range keys {
			t.version++
			r := memTagRecord{version: t.version, expires: expires}
			if old, ok := recs[k]; ok {
				r.expires = max(r.expires, old.expires)
			}
			recs[k] = r
			t.added++
		}
	}
	if t.added > max(t.left, memTagSweepMin) {
		t.sweep(now)
	}
	return nil
}

// sweep drops expired records and tags left empty. The caller holds t.mu.
func (t *memTags) sweep(now int64) {
	t.left, t.added = 0, 0
	for tag, recs := range t.tags {
		for k, r := range recs {
			if r.expires <= now {
				delete(recs, k)
			}
		}
		if len(recs) == 0 {
			delete(t.tags, tag)
		}
		t.left += len(recs)
	}
}

// TaggedKeys implements TagStore.
func (s *MemoryStore) TaggedKeys(ctx context.Context, tags []string) ([][]TaggedKey, error) {
	t := &s.tags
	now := s.now()
	out := make([][]TaggedKey, len(tags))
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, tag := range tags {
		for k, r := range t.tags[tag] {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if r.expires > now {
				out[i] = append(out[i], TaggedKey{Key: k, Version: r.version})
			}
		}
	}
	return out, nil
}

// RemoveTags implements TagStore.
func (s *MemoryStore) RemoveTags(ctx context.Context, tagged map[string][]TaggedKey) error {
	t := &s.tags
	t.mu.Lock()
	defer t.mu.Unlock()
	for tag, tks := range tagged {
		recs := t.tags[tag]
		for _, tk := range tks {
			if r, ok := recs[tk.Key]; ok && r.version == tk.Version {
				delete(recs, tk.Key)
			}
		}
		if recs != nil && len(recs) == 0 {
			delete(t.tags, tag)
		}
	}
	return nil
}
