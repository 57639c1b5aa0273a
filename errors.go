package cacheaside

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

var (
	// ErrNotFound is what a loader returns (wrapped or not) to say the record does not exist.
	// The answer is cached for the negative TTL, and callers get an error for which
	// errors.Is(err, ErrNotFound) holds.
	ErrNotFound = errors.New("cacheaside: not found")

	// ErrInvalidOption is wrapped by the error New returns for an invalid option (a codec
	// that cannot encode the cached type included), by the errors of KeyRing for an invalid
	// key, and by the error of a call given an invalid CallOption.
	ErrInvalidOption = errors.New("cacheaside: invalid option")

	// ErrClosed is returned by every method of a Cache after Close, and by the calls that were
	// running when Close ended their load (unless their own context ended first).
	ErrClosed = errors.New("cacheaside: cache closed")

	// ErrInvalidationFailed is wrapped by the error of an Invalidate or InvalidatePattern that
	// could not be completed within its budget (WithInvalidateTimeout) or the caller's
	// context: the keys it names may still be served with their old value. The error is an
	// *InvalidationError, which says which keys and why.
	ErrInvalidationFailed = errors.New("cacheaside: invalidation failed")

	// ErrTagsUnsupported is wrapped by the error of InvalidateTags, and of a call given Tags
	// or TagsOf, on a Cache whose Store does not implement TagStore.
	ErrTagsUnsupported = errors.New("cacheaside: the store does not support tags")
)

// PanicError is the value every caller sharing a load panics with when its loader panicked.
// It carries the original value and the stack of the loader's goroutine.
type PanicError struct {
	Value any    // what the loader panicked with
	Stack []byte // the stack of the goroutine that ran the loader
}

// Error includes the original value and the stack.
func (p *PanicError) Error() string {
	return fmt.Sprintf("cacheaside: loader panicked: %v\n\n%s", p.Value, p.Stack)
}

// Unwrap returns the original value if it is an error.
func (p *PanicError) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

// InvalidationError is the error of an Invalidate, InvalidatePattern or InvalidateTags that did
// not complete.
// errors.Is(err, ErrInvalidationFailed) holds for it, and errors.Is finds its cause too (the
// store's error, or context.Canceled / context.DeadlineExceeded when the caller's ctx ended).
//
// What may be stale depends on Removed:
//   - Removed false: the store may still hold the old values of Keys (or of the keys matching
//     Pattern, or tagged with Tags) until their TTL, in every instance. Retry the invalidation, or let an outbox
//     (package outbox) deliver it.
//   - Removed true: the store no longer holds them, so every read that goes to the store is
//     fresh, but the message to the other instances' local caches (WithLocalCache) was not
//     sent: they may serve the old value until their local TTL.
//
// In both cases this instance's own local cache has dropped the keys, and no load that began
// before the call can fill them in this instance's local cache.
type InvalidationError struct {
	Keys    []string // the keys of an Invalidate; of an InvalidateTags, those found tagged
	Pattern string   // the pattern of an InvalidatePattern ("" for keys)
	Tags    []string // the tags of an InvalidateTags (nil otherwise)
	Removed bool     // the store delete succeeded; only the broadcast to other instances failed
	Err     error    // the last failure
}

// Error names up to 10 keys, the part that failed and the cause.
func (e *InvalidationError) Error() string {
	var what string
	switch {
	case e.Pattern != "":
		what = fmt.Sprintf("pattern %q", e.Pattern)
	case e.Tags != nil:
		what = "entries tagged " + quoteSome(e.Tags, 10)
		if len(e.Keys) > 0 {
			what += " (keys " + quoteSome(e.Keys, 10) + ")"
		}
	default:
		what = "keys " + quoteSome(e.Keys, 10)
	}
	if e.Removed {
		return fmt.Sprintf("cacheaside: invalidation failed: %s removed from the store, but other instances' local caches were not told and may serve them until their local TTL: %v", what, e.Err)
	}
	return fmt.Sprintf("cacheaside: invalidation failed: %s may still hold their old value in the store: %v", what, e.Err)
}

// Unwrap returns ErrInvalidationFailed and the cause.
func (e *InvalidationError) Unwrap() []error { return []error{ErrInvalidationFailed, e.Err} }

// quoteSome quotes up to n of keys, then says how many more there are.
func quoteSome(keys []string, n int) string {
	var b strings.Builder
	for i, k := range keys {
		if i == n {
			fmt.Fprintf(&b, " and %d more", len(keys)-n)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(k))
	}
	return b.String()
}
