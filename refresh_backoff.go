package cacheaside

import (
	"sync"
	"sync/atomic"
	"time"
)

// Backing off the background refreshes of a key whose reload failed.
//
// Early refresh and stale-while-revalidate reload a key on hits. Without a pause, a key whose
// loader fails fast (the database refuses connections) would be reloaded again by the very
// next hit, once per failed load, by every process: a hot key would hammer a sick database
// as hard as no cache at all. After a background reload fails (an error other than
// ErrNotFound, a timeout or a panic), this process starts no background reload of the key
// for minRefreshBackoff, doubling with each consecutive failure up to maxRefreshBackoff; a
// reload that succeeds clears it. Callers keep being served the value they were served; a
// caller whose value has expired past its stale window loads as on any miss.
const (
	minRefreshBackoff = time.Second
	maxRefreshBackoff = 30 * time.Second
	// maxBackoffKeys bounds the keys remembered: past it, lapsed entries are dropped, and a
	// key that finds no room is not backed off.
	maxBackoffKeys = 4096
)

// refreshBackoff remembers, per store key, when a background refresh may run again.
type refreshBackoff struct {
	n    atomic.Int32 // len(keys): zero lets refreshes skip the lock
	mu   sync.Mutex
	keys map[string]backoffEntry
}

type backoffEntry struct {
	until int64         // Unix nanoseconds (the Cache clock) before which no refresh starts
	delay time.Duration // the pause just applied
}

// allow reports whether a background refresh of sk may start at now.
func (b *refreshBackoff) allow(sk string, now int64) bool {
	if b.n.Load() == 0 {
		return true
	}
	b.mu.Lock()
	e, ok := b.keys[sk]
	b.mu.Unlock()
	return !ok || now >= e.until
}

// failed records a failed background refresh of sk at now.
func (b *refreshBackoff) failed(sk string, now int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.keys == nil {
		b.keys = make(map[string]backoffEntry)
	}
	e, ok := b.keys[sk]
	switch {
	case !ok || now >= e.until+int64(e.delay): // first failure, or the last pause long past
		e.delay = minRefreshBackoff
	default:
		e.delay = min(2*e.delay, maxRefreshBackoff)
	}
	e.until = now + int64(e.delay)
	if !ok && len(b.keys) >= maxBackoffKeys {
		for k, old := range b.keys {
			if now >= old.until {
				delete(b.keys, k)
			}
		}
		if len(b.keys) >= maxBackoffKeys {
			return
		}
	}
	b.keys[sk] = e
	b.n.Store(int32(len(b.keys)))
}

// succeeded clears sk's pause after a background refresh that worked.
func (b *refreshBackoff) succeeded(sk string) {
	if b.n.Load() == 0 {
		return
	}
	b.mu.Lock()
	delete(b.keys, sk)
	b.n.Store(int32(len(b.keys)))
	b.mu.Unlock()
}
