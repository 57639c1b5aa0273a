package cacheaside

// In-process transport of the invalidation broadcast, for the Caches sharing one MemoryStore:
// Publish calls every subscriber on the publisher's goroutine, so when Invalidate returns,
// every other Cache on the store has dropped the keys. A memory subscription never loses a
// message.

import (
	"context"
	"sync"
)

var _ Broadcaster = (*MemoryStore)(nil)

// memBus is a MemoryStore's set of subscribers, per channel.
type memBus struct {
	mu   sync.RWMutex
	subs map[string]map[*memSubscription]struct{}
}

type memSubscription struct {
	bus     *memBus
	channel string
	on      func(SubscriptionEvent, []byte) // set by Run, under bus.mu
}

// Publish implements broadcaster.
func (s *MemoryStore) Publish(ctx context.Context, channel string, msg []byte) error {
	s.bus.mu.RLock()
	defer s.bus.mu.RUnlock()
	for sub := range s.bus.subs[channel] {
		sub.on(SubscriptionMessage, msg)
	}
	return nil
}

// Subscribe implements broadcaster.
func (s *MemoryStore) Subscribe(channel string) Subscription {
	return &memSubscription{bus: &s.bus, channel: channel}
}

// Run implements subscription: live at once, until ctx ends.
func (m *memSubscription) Run(ctx context.Context, on func(SubscriptionEvent, []byte)) {
	m.bus.mu.Lock()
	if m.bus.subs == nil {
		m.bus.subs = make(map[string]map[*memSubscription]struct{})
	}
	if m.bus.subs[m.channel] == nil {
		m.bus.subs[m.channel] = make(map[*memSubscription]struct{})
	}
	m.on = on
	m.bus.subs[m.channel][m] = struct{}{}
	m.bus.mu.Unlock()

	on(SubscriptionLive, nil)
	<-ctx.Done()

	m.bus.mu.Lock()
	delete(m.bus.subs[m.channel], m)
	if len(m.bus.subs[m.channel]) == 0 {
		delete(m.bus.subs, m.channel)
	}
	m.bus.mu.Unlock()
}
