package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Loading the keys of a batch: in chunks (WithBatchLoadSize), each chunk one loader call on its
// own goroutine and load timeout, at most WithBatchLoadConcurrency chunks at once per batch,
// one flight per key that completes with its chunk.

// chunkDone receives the outcome of one loader call for keys[lo:hi] of a batch load, on the
// chunk's load context. The chunk's flights are finished when it returns.
type chunkDone[T any] func(ctx context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, delta time.Duration)

// loadMany starts the load of keys, whose leases tok holds: one flight per key, joinable under
// (key, tok), settled in the store chunk by chunk. It returns nil after Close.
func (c *Cache[T]) loadMany(ctx context.Context, keys, sks []string, gens []uint64, tok string, load func(context.Context, []string) (map[string]T, error)) []*flight[T] {
	fks := make([]flightKey, len(keys))
	for i, sk := range sks {
		fks[i] = flightKey{sk, tok}
	}
	return c.flights.launchMany(ctx, fks, gens, 0, func(lctx context.Context, fs []*flight[T]) {
		c.runChunksTagged(lctx, fs, keys, sks, tok, load, func(ctx context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, delta time.Duration) {
			c.settleMany(ctx, fs[lo:hi], keys[lo:hi], sks[lo:hi], tok, m, err, pe, delta)
		})
	})
}

// runChunks calls load for keys in chunks of at most the batch load size (all keys in one call
// without a cap), at most the batch load concurrency at once, each with its own load timeout
// from its start, and hands each outcome to done. ctx ends only with Close: the chunks not
// started by then end with ErrClosed.
func (c *Cache[T]) runChunks(ctx context.Context, fs []*flight[T], keys []string, load func(context.Context, []string) (map[string]T, error), done chunkDone[T]) {
	size := c.cfg.batchLoadSize
	if size <= 0 || size >= len(keys) {
		c.runChunk(ctx, fs, keys, 0, len(keys), load, done)
		return
	}
	sem := make(chan struct{}, c.cfg.batchLoadConc)
	var wg sync.WaitGroup
	defer wg.Wait()
	for lo := 0; lo < len(keys); lo += size {
		hi := min(lo+size, len(keys))
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			done(ctx, lo, len(keys), nil, ErrClosed, nil, 0)
			c.flights.finish(fs[lo:]...)
			return
		}
		wg.Add(1)
		go func() { // owned: runChunks waits for it, and runs on a goroutine the Cache owns
			defer func() {
				<-sem
				wg.Done()
			}()
			c.runChunk(ctx, fs, keys, lo, hi, load, done)
		}()
	}
}

// runChunk is one loader call for keys[lo:hi]. The loader gets a copy of its keys, free to
// reorder or keep.
func (c *Cache[T]) runChunk(ctx context.Context, fs []*flight[T], keys []string, lo, hi int, load func(context.Context, []string) (map[string]T, error), done chunkDone[T]) {
	chunk := fs[lo:hi]
	lctx, cancel := context.WithTimeout(ctx, c.cfg.loadTimeout)
	completed := false
	defer func() {
		if !completed { // the loader called runtime.Goexit: settle as a failed load
			done(lctx, lo, hi, nil, errLoaderExit, nil, 0)
		}
		cancel()
		c.flights.finish(chunk...)
	}()
	missing := append([]string(nil), keys[lo:hi]...)
	lctx, obs := c.obs.loadStartMany(lctx, missing)
	defer obs.end()
	m, err, pe := callLoader(lctx, func(ctx context.Context) (map[string]T, error) { return load(ctx, missing) })
	done(lctx, lo, hi, m, err, pe, c.obs.loadDone(&obs, err, pe))
	completed = true
}

// setOutcome sets the result of one loader call in the flights of its keys.
func setOutcome[T any](fs []*flight[T], keys []string, m map[string]T, err error, pe *PanicError) {
	allNotFound := errors.Is(err, ErrNotFound)
	for i, f := range fs {
		switch {
		case pe != nil:
			f.panicked = pe
		case err != nil && !allNotFound:
			f.err = err
		default:
			f.loaded = true
			if v, ok := m[keys[i]]; ok && !allNotFound {
				f.val = v
			} else {
				f.err = ErrNotFound
			}
		}
	}
}

// settleMany is settle for keys loaded together under tok: values and not-founds are filled in
// one store round trip (per node), errors release the leases (also in one, when the store
// implements ReleaseManyStore).
func (c *Cache[T]) settleMany(ctx context.Context, fs []*flight[T], keys, sks []string, tok string, m map[string]T, err error, pe *PanicError, delta time.Duration) {
	setOutcome(fs, keys, m, err, pe)
	if pe != nil || (err != nil && !errors.Is(err, ErrNotFound)) {
		_, _ = c.gw.releaseMany(ctx, tok, sks)
		return
	}
	entries := make([]FillEntry, 0, len(keys))
	filled := make([]*flight[T], 0, len(keys))
	var unstorable []int
	for i, f := range fs {
		data, ttl, ok := c.entries.encode(ctx, sks[i], f.val, f.err != nil, delta)
		if !ok {
			unstorable = append(unstorable, i)
			continue
		}
		entries = append(entries, FillEntry{Key: sks[i], Value: data, TTL: ttl})
		filled = append(filled, f)
	}
	if len(unstorable) > 0 {
		c.stats.storeless.Add(1)
		held, rerr := c.gw.releaseMany(ctx, tok, pick(sks, unstorable))
		for j, i := range unstorable {
			fs[i].retry = rerr != nil || !held[j]
		}
	}
	if len(entries) == 0 {
		return
	}
	stored, ferr := storeCallN(c.gw, context.WithoutCancel(ctx), opFillMany, len(entries), func(ctx context.Context) ([]bool, error) {
		return c.gw.store.FillMany(ctx, tok, entries)
	})
	if ferr != nil {
		// Some fills may not have reached the store (on Cluster, one node's may fail alone):
		// free every lease, or every process waits for them until they expire. A fill that
		// did land left no lease of tok's to release.
		fsks := make([]string, len(entries))
		for i, e := range entries {
			fsks[i] = e.Key
		}
		c.gw.abandonMany(ctx, tok, fsks, nil)
	}
	for i, f := range filled {
		f.retry = ferr != nil || i >= len(stored) || !stored[i]
		if !f.retry {
			c.l1.fillStored(entries[i].Key, f.gen, f.val, entries[i].Value)
			c.fresh.refreshSucceeded(entries[i].Key) // as settle: a fresh value's refreshes need not wait
		} else {
			c.stats.storeless.Add(1)
		}
	}
}

// loadManyWithoutStore loads keys without waiting on the store, in chunks as loadMany does, on
// goroutines the Cache owns, so the caller can leave when ctx ends. If tok is the token of a
// lookup that failed on the caller's side, the store may have granted it for some keys, maybe
// only now: those leases are released after the load, which frees other processes waiting.
// The values are never filled under tok: the load may have read the source before the lease
// was granted, and before an Invalidate that the lease, granted after it, did not see.
func (c *Cache[T]) loadManyWithoutStore(ctx context.Context, keys, sks []string, tok string, b *batch[T]) error {
	fs := c.flights.launchMany(ctx, nil, make([]uint64, len(keys)), 0, func(lctx context.Context, fs []*flight[T]) {
		c.stats.storeless.Add(1)
		c.runChunks(lctx, fs, keys, b.load, func(ctx context.Context, lo, hi int, m map[string]T, err error, pe *PanicError, delta time.Duration) {
			setOutcome(fs[lo:hi], keys[lo:hi], m, err, pe)
			if tok == "" {
				return
			}
			c.gw.freeLeases(ctx, tok, sks[lo:hi], releaseAttempts)
		})
	})
	if fs == nil {
		return ErrClosed
	}
	for i, f := range fs {
		v, err, _ := await(ctx, f, true)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && !errors.Is(err, ErrNotFound):
			if b.errs == nil {
				return err
			}
			b.errs[keys[i]] = err
		case err == nil && b.out != nil:
			b.out[keys[i]] = v
		}
	}
	return nil
}

// oneEach checks that a batch store call answered one result per key: a store that answers
// more or fewer failed the call.
func oneEach[R any](rs []R, err error, n int) ([]R, error) {
	if err == nil && len(rs) != n {
		return nil, fmt.Errorf("cacheaside: store answered %d results for %d keys", len(rs), n)
	}
	return rs, err
}
