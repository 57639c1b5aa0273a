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

// broadcaster is implemented by a Store that can carry messages between the Caches using it.
// RedisStore and MemoryStore implement it; WithLocalCache requires it.
type broadcaster interface {
	// Publish sends msg to every current subscriber of channel.
	Publish(ctx context.Context, channel string, msg []byte) error
	// Subscribe returns a subscription to channel. Nothing is received before its Run.
	Subscribe(channel string) subscription
}

// subscription is one subscriber's view of a channel.
type subscription interface {
	// Run subscribes and delivers events to on until ctx ends, then releases what it holds and
	// returns. subLive: from now on every message published on the channel is delivered, until
	// subLost. subLost: messages may have been missed since subLive. subMessage carries one
	// message. Run keeps resubscribing after a loss. on may be called concurrently (the
	// memory transport delivers on the publishers' goroutines).
	Run(ctx context.Context, on func(ev subEvent, msg []byte))
}

type subEvent uint8

const (
	subLive subEvent = iota + 1
	subLost
	subMessage
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

// onBroadcast applies a subscription event to the L1.
func (c *Cache[T]) onBroadcast(ev subEvent, msg []byte) {
	l := c.l1
	switch ev {
	case subLive:
		c.l1Flush() // messages sent while unsubscribed were missed
		if l.subscribed.Swap(true) {
			c.obs.l1Flushed() // not the first subscription
		}
		l.live.Store(true)
	case subLost:
		l.live.Store(false)
		c.l1Flush()
		c.obs.l1Flushed()
	case subMessage:
		sender, all, keys, ok := decodeMsg(msg)
		switch {
		case ok && sender == c.tokens.id:
			return // this instance applied it before publishing
		case !ok:
			c.l1Flush() // a message this version cannot read: assume the worst
			c.obs.l1Flushed()
		case all:
			c.obs.l1Dropped(c.l1DropAll())
		default:
			for _, k := range keys {
				c.gens.bump(k)
			}
			c.obs.l1Dropped(c.l1Forget(keys))
		}
		if f := l.onMessage.Load(); f != nil {
			(*f)()
		}
	}
}

// startLocal builds the L1 and starts its subscriber, on a goroutine Close stops.
func (c *Cache[T]) startLocal(bus broadcaster) {
	c.l1 = newLocal[T](c.cfg.localMax, c.cfg.localTTL, c.cfg.beta > 0)
	sub := bus.Subscribe(c.channel)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		sub.Run(c.life, c.onBroadcast)
	}()
}

// Liveness of a Redis subscription (broadcast_redis.go): after pubsubIdle without traffic it
// sends a PING; no answer within pubsubPongWait of it means the connection is dead.
const (
	pubsubIdle       = time.Second
	pubsubPongWait   = 3 * time.Second
	pubsubBackoffMin = 50 * time.Millisecond
	pubsubBackoffMax = 2 * time.Second
)
