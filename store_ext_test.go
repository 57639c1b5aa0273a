package cacheaside_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
)

// busStore is a third-party Store with its own broadcast: the exported Broadcaster and
// Subscription are all it needs for WithLocalCache.
type busStore struct {
	cacheaside.Store // MemoryStore behind the interface: none of its own extras show
	mu               sync.Mutex
	subs             map[*busSub]string
	live             chan struct{}
}

var (
	_ cacheaside.Broadcaster  = (*busStore)(nil)
	_ cacheaside.Subscription = (*busSub)(nil)
)

type busSub struct {
	s       *busStore
	channel string
	on      func(cacheaside.SubscriptionEvent, []byte)
}

func (s *busStore) Publish(_ context.Context, channel string, msg []byte) error {
	s.mu.Lock()
	var to []*busSub
	for sub, ch := range s.subs {
		if ch == channel {
			to = append(to, sub)
		}
	}
	s.mu.Unlock()
	for _, sub := range to {
		sub.on(cacheaside.SubscriptionMessage, msg)
	}
	return nil
}

func (s *busStore) Subscribe(channel string) cacheaside.Subscription {
	return &busSub{s: s, channel: channel}
}

func (b *busSub) Run(ctx context.Context, on func(cacheaside.SubscriptionEvent, []byte)) {
	b.on = on
	b.s.mu.Lock()
	b.s.subs[b] = b.channel
	b.s.mu.Unlock()
	on(cacheaside.SubscriptionLive, nil)
	b.s.live <- struct{}{}
	<-ctx.Done()
	b.s.mu.Lock()
	delete(b.s.subs, b)
	b.s.mu.Unlock()
}

// Two instances over a third-party broadcasting store: the local cache serves hits, and one
// instance's Invalidate drops the other's local entry.
func TestThirdPartyBroadcaster(t *testing.T) {
	m := cacheaside.NewMemoryStore()
	defer m.Close()
	s := &busStore{Store: m, subs: map[*busSub]string{}, live: make(chan struct{}, 2)}
	opts := []cacheaside.Option{cacheaside.WithPrefix("ext-bus:"), cacheaside.WithLocalCache(100, time.Minute)}
	a, err := cacheaside.New[string](s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := cacheaside.New[string](s, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	<-s.live
	<-s.live

	ctx := context.Background()
	value := "v1"
	load := func(context.Context) (string, error) { return value, nil }
	for range 2 {
		if v, err := b.GetOrLoad(ctx, "k", load); err != nil || v != "v1" {
			t.Fatalf("GetOrLoad = %q, %v", v, err)
		}
	}
	if st := b.Stats(); st.L1Hits != 1 {
		t.Fatalf("L1 hits %d, want 1", st.L1Hits)
	}
	value = "v2"
	if err := a.Invalidate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.GetOrLoad(ctx, "k", load); err != nil || v != "v2" {
		t.Fatalf("after the other instance's Invalidate: %q, %v, want v2", v, err)
	}
	if st := b.Stats(); st.L1BroadcastDrops != 1 {
		t.Fatalf("L1 broadcast drops %d, want 1", st.L1BroadcastDrops)
	}
}
