package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Tags: related entries invalidated together, in time proportional to the entries tagged.
//
// A load that will fill tagged keys records them under their tags in the store's tag index
// (TagStore.AddTags) after the store granted it the keys' leases and before the loader runs.
// InvalidateTags reads the keys recorded under its tags, deletes them as Invalidate does
// (which voids their leases) and then removes exactly the records it read (a key recorded
// again meanwhile stays). Why that keeps guarantee 2 for tags:
//   - A load that began before InvalidateTags(t) recorded its key under t before it began, so
//     before InvalidateTags read t; the read finds the key, and the delete that follows voids
//     the load's lease, which it held before it recorded: its fill is refused.
//   - A record is removed only after its key was deleted, and only if no AddTags came since
//     the read: a load recorded after the read keeps its record for the next InvalidateTags.
//   - A record lives as long as the entry it guards can (the lease, then the value's TTL and
//     stale windows), so expired records can be dropped without losing one that matters.
// Hits do nothing with tags: a tagged hit costs what an untagged one does.

// tagLifeSlack is added to the life of a tag record, beyond the longest life of the entry it
// guards: room for the time between the lease grant and the record on another node.
const tagLifeSlack = time.Minute

// Tags tags the entries this call's load stores (every key of a GetOrLoadMany) with tags, so
// that InvalidateTags of any of them removes them. Tags are per load: a call that shares a load
// another call started (concurrent calls for a key) stores what that load stores, with that
// call's tags, and a hit stores nothing. Give a key the same tags on every call. Each tag must be
// non-empty. The store must implement TagStore (RedisStore and MemoryStore do), else the call
// returns an error wrapping ErrTagsUnsupported.
//
// A load with tags costs one more store round trip before the loader runs (RedisStore: one
// per node holding one of the tags, pipelined); a hit costs nothing more.
func Tags(tags ...string) CallOption {
	return func(o *callOptions) {
		for _, t := range tags {
			if t == "" {
				o.errs = append(o.errs, fmt.Errorf("%w: empty tag", ErrInvalidOption))
				return
			}
		}
		o.tags = append(o.tags, tags...)
	}
}

// TagsOf tags each entry this call's load stores with the tags fn returns for its key, in
// addition to those of Tags: the per-key form, for a GetOrLoadMany whose keys carry different
// tags. fn runs before the loader, once per key loaded (never for hits), and must not block;
// empty tags it returns are ignored. Tags cannot depend on the loaded value: a tag must be
// recorded before the load begins, or an InvalidateTags during the load would miss it.
func TagsOf(fn func(key string) []string) CallOption {
	return func(o *callOptions) {
		if fn == nil {
			o.errs = append(o.errs, fmt.Errorf("%w: nil TagsOf function", ErrInvalidOption))
			return
		}
		o.tagsOf = fn
	}
}

// tagger records the keys of tagged loads in the store's tag index, finds them again for
// InvalidateTags, and removes the records it acted on.
type tagger struct {
	gw          *gateway
	inval       *invalidator
	prefix      string
	ttl         time.Duration // WithTTL, WithNegativeTTL and the longer stale window: how long
	negativeTTL time.Duration // an entry a record guards may live
	extraTTL    time.Duration
	failures    atomic.Uint64 // Stats.TagFailures
}

// name is the name under which the store indexes tag: in this cache's prefix, like its keys
// (RedisStore keeps it at that key), where no key of the cache is likely to be.
func (tg *tagger) name(tag string) string { return tg.prefix + "\x00tag:" + tag }

// SupportsTags reports whether the Cache's store indexes tags (it implements TagStore, as
// RedisStore and MemoryStore do): whether Tags, TagsOf and InvalidateTags can work. Without
// an index they return errors wrapping ErrTagsUnsupported. The outbox asks it, to refuse a tag
// invalidation when it is written rather than retry its delivery forever.
func (c *Cache[T]) SupportsTags() bool { return c.gw.tags != nil }

// tagged reports whether the options carry tags.
func (o *callOptions) tagged() bool { return o != nil && (len(o.tags) > 0 || o.tagsOf != nil) }

// checkTags refuses a call with tags on a store without a tag index.
func (tg *tagger) check(ctx context.Context) error {
	if o, _ := ctx.Value(callKey{}).(*callOptions); o.tagged() && tg.gw.tags == nil {
		return fmt.Errorf("cacheaside: Tags with %T: %w", tg.gw.store, ErrTagsUnsupported)
	}
	return nil
}

// record records the store keys sks under the tags of the call whose load ctx is, before the
// load begins. The caller holds the keys' leases. It does nothing for a call without tags. An
// error means the keys must not be filled: the load goes on without storing.
func (tg *tagger) record(ctx context.Context, sks []string) error {
	o, _ := ctx.Value(callKey{}).(*callOptions)
	if !o.tagged() || tg.gw.tags == nil {
		return nil
	}
	tagged := make(map[string][]string, len(o.tags))
	for _, sk := range sks {
		for _, t := range o.tags {
			name := tg.name(t)
			tagged[name] = append(tagged[name], sk)
		}
		if o.tagsOf != nil {
			for _, t := range o.tagsOf(sk[len(tg.prefix):]) {
				if t != "" {
					name := tg.name(t)
					tagged[name] = append(tagged[name], sk)
				}
			}
		}
	}
	if len(tagged) == 0 {
		return nil
	}
	life := tg.gw.leaseTTL + max(fillTTL(ctx, false, tg.ttl, tg.negativeTTL), fillTTL(ctx, true, tg.ttl, tg.negativeTTL)) + tg.extraTTL + tagLifeSlack
	add := func(ctx context.Context) (struct{}, error) { return struct{}{}, tg.gw.tags.AddTags(ctx, tagged, life) }
	ctx = context.WithoutCancel(ctx)
	_, err := storeCallN(tg.gw, ctx, opAddTags, len(sks), add)
	if err != nil {
		// The tags' nodes are not the key's: on a Cluster the first record may have to
		// connect to one. Once more, with the time a connection is given.
		timeout := max(tg.gw.connectTimeout, tg.gw.storeTimeout(true, len(sks)))
		_, err = storeCallWithin(tg.gw, ctx, opAddTags, true, timeout, add)
	}
	if err != nil {
		tg.failures.Add(1)
	}
	return err
}

// tagLoadsBefore is tagger.record where a load is about to begin (nothing in the broken build the
// tests make with unsafeLateTags, which records tags after the load).
func (c *Cache[T]) tagLoadsBefore(ctx context.Context, sks []string) error {
	if c.unsafeLateTags {
		return nil
	}
	return c.tags.record(ctx, sks)
}

// runChunksTagged is runChunks for keys whose leases tok holds, settled by settle, once their
// tags are recorded (tagger.record). If that fails, the leases are released and the keys are loaded
// without being stored.
func (c *Cache[T]) runChunksTagged(ctx context.Context, fs []*flight[T], keys, sks []string, tok string, load func(context.Context, []string) (map[string]T, error), settle chunkDone[T]) {
	if c.unsafeLateTags {
		inner := settle
		settle = func(ctx context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, delta time.Duration) {
			_ = c.tags.record(ctx, sks[lo:hi])
			inner(ctx, lo, hi, m, err, pe, delta)
		}
	}
	if err := c.tagLoadsBefore(ctx, sks); err != nil {
		c.gw.freeLeases(ctx, tok, sks, releaseAttempts)
		c.stats.storeless.Add(1)
		settle = func(_ context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, _ time.Duration) {
			setOutcome(fs[lo:hi], keys[lo:hi], m, err, pe)
		}
	}
	c.runChunks(ctx, fs, keys, load, settle)
}

// invalidateTags is InvalidateTags (cacheaside.go).
func (c *Cache[T]) invalidateTags(ctx context.Context, tags ...string) error {
	if c.life.isClosed() {
		return ErrClosed
	}
	if len(tags) == 0 {
		return nil
	}
	if c.gw.tags == nil {
		return fmt.Errorf("cacheaside: invalidate tags with %T: %w", c.gw.store, ErrTagsUnsupported)
	}
	for _, t := range tags {
		if t == "" {
			return errors.New("cacheaside: invalidate tags: empty tag")
		}
	}
	tags = dedupe(tags)
	c.obs.invalidated(invalidatedTag, len(tags))
	names := make([]string, len(tags))
	for i, t := range tags {
		names[i] = c.tags.name(t)
	}
	deadline := c.inval.deadline()
	found, err := c.tags.find(ctx, deadline, names)
	if err != nil {
		c.stats.invalFailed.Add(1)
		return &InvalidationError{Tags: tags, Err: err}
	}
	seen := make(map[string]bool)
	var keys, sks []string
	acted := make(map[string][]TaggedKey, len(names)) // the records to remove once their keys are deleted
	for i, tks := range found {
		for _, tk := range tks {
			if !strings.HasPrefix(tk.Key, c.cfg.prefix) {
				continue // not a key of this cache's: leave its record alone
			}
			acted[names[i]] = append(acted[names[i]], tk)
			if !seen[tk.Key] {
				seen[tk.Key] = true
				sks = append(sks, tk.Key)
				keys = append(keys, tk.Key[len(c.cfg.prefix):])
			}
		}
	}
	if len(keys) == 0 {
		return nil
	}
	removed, err := c.invalidateKeys(ctx, deadline, keys, sks)
	if err != nil {
		c.stats.invalFailed.Add(1)
		return &InvalidationError{Tags: tags, Keys: keys, Removed: removed, Err: err}
	}
	c.tags.untag(ctx, deadline, acted)
	return nil
}

// untag removes the records InvalidateTags read and acted on, once. A failure leaves them in
// place, which costs the next InvalidateTags of the tag a delete of keys already deleted, not
// a stale entry: so it is not the caller's error.
func (tg *tagger) untag(ctx context.Context, deadline time.Time, tagged map[string][]TaggedKey) {
	timeout := max(min(time.Until(deadline), invalidateAttempt), time.Millisecond)
	_, err := storeCallWithin(tg.gw, ctx, opRemoveTags, tg.gw.warm.Load(), timeout, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, tg.gw.tags.RemoveTags(ctx, tagged)
	})
	if err != nil {
		tg.failures.Add(1)
	}
}

// find reads the records of the tags names, retried within the invalidation's budget (until
// deadline).
func (tg *tagger) find(ctx context.Context, deadline time.Time, names []string) ([][]TaggedKey, error) {
	var found [][]TaggedKey
	err := tg.inval.retry(ctx, deadline, false, func(ctx context.Context, warm bool, timeout time.Duration) error {
		r, err := storeCallWithin(tg.gw, ctx, opTaggedKeys, warm, timeout, func(ctx context.Context) ([][]TaggedKey, error) {
			return tg.gw.tags.TaggedKeys(ctx, names)
		})
		if err == nil && len(r) != len(names) {
			err = fmt.Errorf("cacheaside: store answered %d tags for %d", len(r), len(names))
		}
		found = r
		return err
	})
	return found, err
}
