package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// CallOption configures one GetOrLoad or GetOrLoadMany call. An invalid one makes the call
// return an error wrapping ErrInvalidOption, before anything else.
//
// Options shape what the call's own load stores. Calls that share one load (concurrent calls
// for the same key) share its options too: those of the call that started the load.
type CallOption func(*callOptions)

type callOptions struct {
	ttl    time.Duration // 0: the cache's TTL
	negTTL time.Duration // negative TTL, when negSet
	negSet bool
	tags   []string                  // Tags (tags.go)
	tagsOf func(key string) []string // TagsOf
	errs   []error
}

// TTL sets the lifetime of the value this call's load stores, instead of the cache's TTL
// (WithTTL); the TTL jitter applies to it as well. It must be positive. It does not apply to a
// not-found the load returns, which keeps the cache's negative TTL unless NegativeTTL is given
// too: how long a record may be cached and how long its absence may be are separate choices.
func TTL(d time.Duration) CallOption {
	return func(o *callOptions) {
		if d <= 0 {
			o.errs = append(o.errs, fmt.Errorf("%w: call TTL must be positive, got %v", ErrInvalidOption, d))
			return
		}
		o.ttl = d
	}
}

// NegativeTTL sets the lifetime of a not-found this call's load stores, instead of the cache's
// negative TTL (WithNegativeTTL); 0 does not cache it. It must not be negative.
func NegativeTTL(d time.Duration) CallOption {
	return func(o *callOptions) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("%w: call negative TTL must not be negative, got %v", ErrInvalidOption, d))
			return
		}
		o.negTTL, o.negSet = d, true
	}
}

// callKey carries a call's options on the contexts of the loads it starts, from the call to
// the fill; loaderContext hides them from the loader itself.
type callKey struct{}

// withCallOptions returns ctx carrying opts, or an error for an invalid option.
func withCallOptions(ctx context.Context, opts []CallOption) (context.Context, error) {
	o := &callOptions{}
	for _, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, fmt.Errorf("%w: nil call option", ErrInvalidOption))
			continue
		}
		opt(o)
	}
	if len(o.errs) > 0 {
		return ctx, errors.Join(o.errs...)
	}
	return context.WithValue(ctx, callKey{}, o), nil
}

// fillTTL returns the TTL of a fill on ctx: the call's, else the cache's. 0: do not store.
func fillTTL(ctx context.Context, notFound bool, ttl, negativeTTL time.Duration) time.Duration {
	o, _ := ctx.Value(callKey{}).(*callOptions)
	switch {
	case notFound && o != nil && o.negSet:
		return o.negTTL
	case notFound:
		return negativeTTL
	case o != nil && o.ttl > 0:
		return o.ttl
	}
	return ttl
}

// loaderContext is the context a loader runs on: the load's, without the options of the call
// that started it, so that a GetOrLoad the loader makes on it does not inherit them.
func loaderContext(ctx context.Context) context.Context {
	if ctx.Value(callKey{}) == nil {
		return ctx
	}
	return context.WithValue(ctx, callKey{}, nil)
}
