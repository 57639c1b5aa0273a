package cacheaside

import (
	"errors"
	"fmt"
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

	// ErrClosed is returned by every method of a Cache after Close.
	ErrClosed = errors.New("cacheaside: cache closed")
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
