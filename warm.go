package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Defaults of the Warm options.
const (
	DefaultWarmBatchSize   = 100
	DefaultWarmConcurrency = 4
)

// maxWarmErrors bounds the distinct batch errors Warm's error joins.
const maxWarmErrors = 10

// WarmResult counts the keys of a Warm, each key in exactly one count once its batch is done.
type WarmResult struct {
	// Loaded is the number of keys Warm's loader returned a value for (stored, unless the
	// store was unusable).
	Loaded int
	// Cached is the number of keys already cached, as a value or as not found, or filled
	// meanwhile by another caller: Warm's loader was not called for them.
	Cached int
	// NotFound is the number of keys Warm's loader left out of its map (or answered with
	// ErrNotFound for): they are cached as not found.
	NotFound int
	// Failed is the number of keys whose load failed: Warm's loader returned an error for
	// their batch (or chunk), or the load of another caller they waited for did.
	Failed int
}

// WarmOption configures one Warm call.
type WarmOption func(*warmConfig)

type warmConfig struct {
	batchSize   int
	concurrency int
	progress    func(done, total int)
	callOpts    []CallOption
}

// WithWarmBatchSize sets how many keys Warm reads (one store round trip per node) and loads
// (one loader call, or chunks of WithBatchLoadSize) at a time. Default: DefaultWarmBatchSize
// (100). Values below 1 keep the default.
func WithWarmBatchSize(n int) WarmOption {
	return func(c *warmConfig) {
		if n > 0 {
			c.batchSize = n
		}
	}
}

// WithWarmConcurrency sets how many batches Warm works on at once. Default:
// DefaultWarmConcurrency (4). Values below 1 keep the default.
func WithWarmConcurrency(n int) WarmOption {
	return func(c *warmConfig) {
		if n > 0 {
			c.concurrency = n
		}
	}
}

// WithWarmProgress has Warm call fn after each batch, with the number of distinct keys done
// (in any count of WarmResult) and the total. Calls are sequential, on Warm's goroutine, with
// done growing; the last is (total, total) unless Warm stopped early. Default: none.
func WithWarmProgress(fn func(done, total int)) WarmOption {
	return func(c *warmConfig) { c.progress = fn }
}

// WithWarmCallOptions gives every batch of Warm the call options opts, as GetOrLoadMany takes
// them: TTL, NegativeTTL, Tags, TagsOf (to tag each warmed entry). An invalid one makes Warm
// return an error wrapping ErrInvalidOption before it reads anything. Default: none.
func WithWarmCallOptions(opts ...CallOption) WarmOption {
	return func(c *warmConfig) { c.callOpts = append(c.callOpts, opts...) }
}

// warm is Warm (cacheaside.go).
func (c *Cache[T]) warm(ctx context.Context, keys []string, load func(ctx context.Context, missing []string) (map[string]T, error), opts ...WarmOption) (WarmResult, error) {
	var res WarmResult
	if load == nil {
		return res, errNilLoader
	}
	if !c.calls.enter() { // Close waits for the calls inside (gate.go)
		return res, ErrClosed
	}
	defer c.calls.exit()
	cfg := warmConfig{batchSize: DefaultWarmBatchSize, concurrency: DefaultWarmConcurrency}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if len(cfg.callOpts) > 0 {
		var err error
		if ctx, err = withCallOptions(ctx, cfg.callOpts); err == nil {
			err = c.tags.check(ctx)
		}
		if err != nil {
			return res, err
		}
	}
	keys = dedupe(keys)
	total := len(keys)
	if cfg.progress != nil && total == 0 {
		cfg.progress(0, 0)
	}

	// wctx stops the feeding and the batches in progress when Warm stops early.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := c.warmWorkers(wctx, keys, cfg, load)
	defer func() { // on every way out (a progress callback that panics too): no worker left
		cancel()
		for range results {
		}
	}()
	res, stopErr, panicked, errs := collectWarm(results, cfg.progress, total, cancel)
	switch {
	case panicked != nil:
		panic(panicked)
	case ctx.Err() != nil:
		return res, ctx.Err()
	case stopErr != nil:
		return res, stopErr
	case res.Failed > 0:
		return res, fmt.Errorf("cacheaside: warm: %d of %d keys failed: %w", res.Failed, total, errors.Join(errs...))
	}
	return res, nil
}

// warmResult is the outcome of one batch of Warm.
type warmResult struct {
	res   WarmResult
	err   error // a failure of some keys (Warm goes on) or a stop (ErrClosed, ctx.Err())
	stop  bool
	panic any
}

// warmWorkers resolves keys in batches of cfg.batchSize on up to cfg.concurrency goroutines
// and sends each batch's outcome on the channel it returns, closed once every worker has
// ended. Cancelling ctx stops the feeding and the batches in progress; the caller must drain
// the channel (Warm never leaves a goroutine behind).
func (c *Cache[T]) warmWorkers(ctx context.Context, keys []string, cfg warmConfig, load func(ctx context.Context, missing []string) (map[string]T, error)) <-chan warmResult {
	total := len(keys)
	todo := make(chan []string)
	results := make(chan warmResult)
	var wg sync.WaitGroup
	for range min(cfg.concurrency, (total+cfg.batchSize-1)/cfg.batchSize) {
		wg.Add(1)
		go func() { // Warm waits for it: it never outlives the call
			defer wg.Done()
			for ks := range todo {
				var r warmResult
				func() {
					defer func() {
						if p := recover(); p != nil {
							r = warmResult{panic: p, stop: true}
						}
					}()
					r.res, r.err, r.stop = c.warmBatch(ctx, ks, load)
				}()
				results <- r
			}
		}()
	}
	go func() { // feeds the workers; Warm waits for it through them
		defer close(todo)
		for lo := 0; lo < total; lo += cfg.batchSize {
			select {
			case todo <- keys[lo:min(lo+cfg.batchSize, total)]:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		wg.Wait()
		close(results)
	}()
	return results
}

// collectWarm sums the batches' outcomes until results is closed, reporting progress; the
// first stop or panic cancels the rest (cancel). errs holds up to maxWarmErrors distinct
// errors of failed keys.
func collectWarm(results <-chan warmResult, progress func(done, total int), total int, cancel func()) (res WarmResult, stopErr error, panicked any, errs []error) {
	done := 0
	for r := range results {
		switch {
		case r.panic != nil:
			if panicked == nil {
				panicked = r.panic
			}
			cancel()
			continue
		case r.stop:
			if stopErr == nil {
				stopErr = r.err
			}
			cancel()
			continue
		}
		res.Loaded += r.res.Loaded
		res.Cached += r.res.Cached
		res.NotFound += r.res.NotFound
		res.Failed += r.res.Failed
		if r.err != nil && len(errs) < maxWarmErrors && !containsErr(errs, r.err) {
			errs = append(errs, r.err)
		}
		done += r.res.Loaded + r.res.Cached + r.res.NotFound + r.res.Failed
		if progress != nil && stopErr == nil && panicked == nil {
			progress(done, total)
		}
	}
	return res, stopErr, panicked, errs
}

// warmBatch resolves one batch of Warm, going on past keys that fail. stop reports an error
// that ends Warm (ErrClosed or the caller's context).
func (c *Cache[T]) warmBatch(ctx context.Context, keys []string, load func(context.Context, []string) (map[string]T, error)) (res WarmResult, err error, stop bool) {
	var mu sync.Mutex
	loaded := make(map[string]bool, len(keys)) // keys this batch's loader answered: true if found
	counting := func(ctx context.Context, missing []string) (map[string]T, error) {
		m, err := load(ctx, missing)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return m, err
		}
		mu.Lock()
		for _, k := range missing {
			_, found := m[k]
			loaded[k] = found && err == nil
		}
		mu.Unlock()
		return m, err
	}
	b := &batch[T]{load: counting, errs: make(map[string]error)}
	if err := c.resolveAll(ctx, keys, b); err != nil {
		return res, err, true
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range keys {
		if kerr, failed := b.errs[k]; failed {
			res.Failed++
			err = kerr
			continue
		}
		found, ours := loaded[k]
		switch {
		case !ours:
			res.Cached++
		case found:
			res.Loaded++
		default:
			res.NotFound++
		}
	}
	return res, err, false
}

func containsErr(errs []error, err error) bool {
	for _, e := range errs {
		if e == err || e.Error() == err.Error() { //nolint:errorlint // the same error value or text, not its chain

			return true
		}
	}
	return false
}
