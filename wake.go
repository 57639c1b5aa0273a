package cacheaside

// Waking the waiters of another process's lease when it is filled.
//
// A call that finds a key leased by another process waits for the fill (waitLease, wait.go).
// Polling alone costs a waiter up to its backoff (100 ms at most, by default) after the fill.
// So the store records that someone waits (RedisStore: field "w" of the key's hash, set by the
// read-or-lease that found the lease held), and the fill or release of that lease publishes
// the key on WakeChannel; every Cache that has a waiter subscribes to the channel (lazily, on
// its store's Broadcaster, one subscription per Cache) and wakes its waiters of the key, which
// read the store again at once. Nothing depends on the message: the polling stays, and a
// message lost (the subscription down, a Ring whose shards do not share pub/sub, a fill by an
// older version) only leaves the waiter to it. A message never serves a value: the waiter
// reads the store, with the same read-or-lease as any call (guarantee 2 is the lease's).

import (
	"context"
	"strings"
	"sync"
)

// WakeChannel is the Broadcaster channel of wake-ups: each message is a store key (prefix and
// key) whose lease was filled or released while a GetOrLease found it held.
const WakeChannel = "cacheaside:wake"

// WakingStore is an optional interface of a Broadcaster Store that wakes lease waiters: when
// a GetOrLease (or GetOrLeaseMany) finds a key's lease held, the store remembers it, and the
// Fill or Release of that lease publishes the key on WakeChannel. A Cache over one subscribes
// and reads a waited-for key again at once instead of at its next poll. Waiters poll all the
// same, so a lost message only costs time. RedisStore and MemoryStore implement it.
type WakingStore interface {
	Broadcaster
	// WakesWaiters does nothing: it declares that the store publishes wake-ups.
	WakesWaiters()
}

// WakesWaiters implements WakingStore.
func (s *RedisStore) WakesWaiters() {}

// WakesWaiters implements WakingStore.
func (s *MemoryStore) WakesWaiters() {}

// wakes is a Cache's waiters per store key, and its subscription to WakeChannel.
type wakes struct {
	life    *lifecycle // the subscriber runs on a goroutine the Cache owns
	bus     Broadcaster
	prefix  string
	started sync.Once
	mu      sync.Mutex
	keys    map[string]*wakeSlot
}

// wakeSlot is the waiters of one key: ch is closed (and replaced) when the key is published.
type wakeSlot struct {
	ch chan struct{}
	n  int // waiters watching it
}

// watch returns the wake-ups of sk: ch() is a channel closed at the next message for sk
// after ch() was called, and unwatch ends the watch. Without a wake transport (w is nil) it
// returns nils: a nil channel, never ready.
func (w *wakes) watch(sk string) (ch func() <-chan struct{}, unwatch func()) {
	if w == nil {
		return func() <-chan struct{} { return nil }, func() {}
	}
	w.started.Do(func() {
		sub := w.bus.Subscribe(WakeChannel)
		w.life.goOwned(func() { sub.Run(w.life.ctx, w.on) })
	})
	w.mu.Lock()
	s := w.keys[sk]
	if s == nil {
		s = &wakeSlot{ch: make(chan struct{})}
		w.keys[sk] = s
	}
	s.n++
	w.mu.Unlock()
	return func() <-chan struct{} {
			w.mu.Lock()
			defer w.mu.Unlock()
			return s.ch
		}, func() {
			w.mu.Lock()
			if s.n--; s.n == 0 && w.keys[sk] == s {
				delete(w.keys, sk)
			}
			w.mu.Unlock()
		}
}

// on handles the wake subscription's events: a message names a store key.
func (w *wakes) on(ev SubscriptionEvent, msg []byte) {
	if ev != SubscriptionMessage || !strings.HasPrefix(string(msg), w.prefix) {
		return // Live and Lost change nothing: the waiters poll anyway
	}
	w.mu.Lock()
	if s := w.keys[string(msg)]; s != nil {
		close(s.ch)
		s.ch = make(chan struct{})
	}
	w.mu.Unlock()
}

// newWakes returns the wake-ups of a Cache over store, or nil if the store has none.
func newWakes(store Store, prefix string, life *lifecycle) *wakes {
	ws, ok := store.(WakingStore)
	if !ok {
		return nil
	}
	return &wakes{life: life, bus: ws, prefix: prefix, keys: make(map[string]*wakeSlot)}
}

// wake publishes key on WakeChannel if any Cache watches it (MemoryStore's fills and releases).
func (s *MemoryStore) wake(key string) {
	s.bus.mu.RLock()
	none := len(s.bus.subs[WakeChannel]) == 0
	s.bus.mu.RUnlock()
	if !none {
		_ = s.Publish(context.Background(), WakeChannel, []byte(key))
	}
}
