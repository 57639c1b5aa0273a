package cacheaside

// Invalidation broadcast: how the L1s of all instances of a cache (one prefix) learn of each
// other's invalidations.
//
// Invalidate and InvalidatePattern publish what they removed, after the store delete, on the
// channel "cacheaside:inv:" + prefix. Every instance with a local cache subscribes to it and,
// for each message from another instance, bumps the generation of the keys named (of every
// key, for a pattern) and drops their L1 entries. A message is sent after the store delete,
// so an instance that applied it and then reads the store gets no older data.
//
// Transport: the store's (RedisStore: Redis pub/sub; MemoryStore: in-process, delivered on the
// publisher's goroutine before Publish returns). Pub/sub delivers at most once and only while
// subscribed, so the subscriber reports when it is subscribed (from then on every message
// reaches it) and when it may have missed messages; the Cache flushes its L1 at both and uses
// no L1 in between.
//
// Why not RESP3 client-side caching (CLIENT TRACKING): go-redis v9 pools connections and does
// not route invalidation pushes to the application, so tracking needs a dedicated connection
// per node in REDIRECT mode plus per-connection bookkeeping of which keys it read; on Cluster
// that is one tracking connection per master and a remapping at every slot move, and tracking
// also fires on every write to a tracked key, our own lease grants and fills included. One
// pub/sub connection per instance, on the node that owns the channel's slot, is simpler to get
// right on standalone, Sentinel and Cluster alike, and the Cache decides what is an
// invalidation.

import (
	"context"
	"encoding/binary"
	"time"
)

// Broadcaster is an optional interface of a Store that can carry messages between the Caches
// using it, in this process and others: WithLocalCache requires it, and Invalidate and
// InvalidatePattern publish on it (see the top of this file for the messages). RedisStore
// (Redis pub/sub) and MemoryStore (in process) implement it; a Store of your own that does can
// serve local caches too.
//
// The guarantee a Cache builds on: a message published after a subscription reported
// SubscriptionLive, and before it reports SubscriptionLost, reaches that subscription. Delivery
// at most once is enough; order between publishers need not be kept.
type Broadcaster interface {
	// Publish sends msg to every current subscriber of channel, this process's included. It
	// returns once the message is handed to the transport (MemoryStore: once delivered).
	Publish(ctx context.Context, channel string, msg []byte) error
	// Subscribe returns a subscription to channel. Nothing is received before its Run.
	Subscribe(channel string) Subscription
}

// Subscription is one subscriber's view of a channel (Broadcaster).
type Subscription interface {
	// Run subscribes and delivers events to on until ctx ends, then releases what it holds and
	// returns. It reports SubscriptionLive once subscribed, SubscriptionMessage for each
	// message, and SubscriptionLost whenever messages may have been missed (a broken
	// connection), then keeps resubscribing and reports SubscriptionLive again once it is
	// back. A Cache drops its whole local cache at each Live and Lost, and uses no local cache
	// between a Lost and the next Live. on may be called concurrently (the memory transport
	// delivers on the publishers' goroutines) and must not block for long.
	Run(ctx context.Context, on func(ev SubscriptionEvent, msg []byte))
}

// SubscriptionEvent is what a Subscription reports to its Run callback.
type SubscriptionEvent uint8

const (
	// SubscriptionLive says that from now on every message published on the channel is
	// delivered, until SubscriptionLost. The msg argument is nil.
	SubscriptionLive SubscriptionEvent = iota + 1
	// SubscriptionLost says that messages may have been missed since SubscriptionLive. The msg
	// argument is nil.
	SubscriptionLost
	// SubscriptionMessage carries one message, in msg, which the callback must not keep or
	// modify after it returns.
	SubscriptionMessage
)

// invalidationChannel is the channel of a cache prefix.
func invalidationChannel(prefix string) string { return "cacheaside:inv:" + prefix }

// Message format: version, kind, sender id (uvarint length + bytes), then for msgKeys each key
// as uvarint length + bytes, for msgAll the pattern (informational).
const (
	msgVersion = 1
	msgKeys    = 'k'
	msgAll     = 'a'
)

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeKeysMsg(sender string, keys []string) []byte {
	n := 3 + len(sender)
	for _, k := range keys {
		n += binary.MaxVarintLen64 + len(k)
	}
	b := append(make([]byte, 0, n), msgVersion, msgKeys)
	b = appendString(b, sender)
	for _, k := range keys {
		b = appendString(b, k)
	}
	return b
}

func encodeAllMsg(sender, pattern string) []byte {
	b := []byte{msgVersion, msgAll}
	b = appendString(b, sender)
	return append(b, pattern...)
}

func readString(b []byte) (string, []byte, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}

// decodeMsg parses a message. ok false means it is not one this version understands: the
// receiver must then assume anything was invalidated.
func decodeMsg(b []byte) (sender string, all bool, keys []string, ok bool) {
	if len(b) < 2 || b[0] != msgVersion || (b[1] != msgKeys && b[1] != msgAll) {
		return "", false, nil, false
	}
	kind := b[1]
	sender, b, ok = readString(b[2:])
	if !ok {
		return "", false, nil, false
	}
	if kind == msgAll {
		return sender, true, nil, true
	}
	for len(b) > 0 {
		var k string
		if k, b, ok = readString(b); !ok {
			return "", false, nil, false
		}
		keys = append(keys, k)
	}
	return sender, false, keys, true
}

// onBroadcast applies a subscription event to the L1. self is this instance's sender id: its
// own messages were applied before they were published.
func (l *local[T]) onBroadcast(ev SubscriptionEvent, msg []byte, self string, obs *observer) {
	switch ev {
	case SubscriptionLive:
		flushLocal(l.gens, l) // messages sent while unsubscribed were missed
		if l.subscribed.Swap(true) {
			obs.l1Flushed() // not the first subscription
		}
		l.live.Store(true)
	case SubscriptionLost:
		l.live.Store(false)
		flushLocal(l.gens, l)
		obs.l1Flushed()
	case SubscriptionMessage:
		sender, all, keys, ok := decodeMsg(msg)
		switch {
		case ok && sender == self:
			return // this instance applied it before publishing
		case !ok:
			flushLocal(l.gens, l) // a message this version cannot read: assume the worst
			obs.l1Flushed()
		case all:
			obs.l1Dropped(l.dropAll())
		default:
			for _, k := range keys {
				l.gens.bump(k)
			}
			obs.l1Dropped(l.forget(keys))
		}
		if f := l.onMessage.Load(); f != nil {
			(*f)()
		}
	}
}

// subscribe starts the L1's subscriber to channel on bus, on a goroutine life owns (Close
// stops it). The L1 goes live when the subscription does.
func (l *local[T]) subscribe(bus Broadcaster, channel, self string, obs *observer, life *lifecycle) {
	sub := bus.Subscribe(channel)
	life.goOwned(func() {
		sub.Run(life.ctx, func(ev SubscriptionEvent, msg []byte) { l.onBroadcast(ev, msg, self, obs) })
	})
}

// Liveness of a Redis subscription (broadcast_redis.go): after pubsubIdle without traffic it
// sends a PING; no answer within pubsubPongWait of it means the connection is dead.
const (
	pubsubIdle       = time.Second
	pubsubPongWait   = 3 * time.Second
	pubsubBackoffMin = 50 * time.Millisecond
	pubsubBackoffMax = 2 * time.Second
)
