package cacheaside

// Redis transport of the invalidation broadcast: classic pub/sub.
//
// Each subscribing Cache holds one pub/sub connection. On Cluster it goes to the master of the
// channel's hash slot, and Publish is sent to that same master, so a message normally reaches
// its subscribers without crossing the cluster bus (classic PUBLISH reaches the subscribers
// of every node anyway, through the bus, when the slot moved). On a Ring, Publish goes to
// every shard.
//
// go-redis's PubSub reconnects silently; this subscriber does not let it. It reads with
// ReceiveTimeout in its own loop: the SUBSCRIBE confirmation makes the subscription live; any
// error, an unexpected unsubscribe, or a PING unanswered for pubsubPongWait after
// pubsubIdle of silence ends the connection and reports the loss, and a new connection is made
// after a backoff. A dead connection is therefore noticed within pubsubIdle + pubsubPongWait
// (plus one read timeout), and a subscription is only ever reported live by a confirmation
// received on the connection that will carry the messages.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
)

var _ Broadcaster = (*RedisStore)(nil)

// pubsubTiming overrides the liveness constants of broadcast.go (tests); zero fields keep them.
type pubsubTiming struct {
	idle, pongWait, backoffMin time.Duration
}

func (t pubsubTiming) or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Publish implements broadcaster with PUBLISH.
func (s *RedisStore) Publish(ctx context.Context, channel string, msg []byte) error {
	_, err := guard(ctx, s.trusted, func(ctx context.Context) (struct{}, error) {
		switch {
		case s.cluster != nil:
			node, err := s.cluster.MasterForKey(ctx, channel)
			if err != nil {
				return struct{}{}, err
			}
			return struct{}{}, node.Publish(ctx, channel, msg).Err()
		case s.ring != nil:
			return struct{}{}, s.ring.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
				return c.Publish(ctx, channel, msg).Err()
			})
		default:
			return struct{}{}, s.client.Publish(ctx, channel, msg).Err()
		}
	})
	return err
}

// deleteAndPublish implements deletePublisher on a standalone or Sentinel client: UNLINK and
// PUBLISH in one pipeline on one connection, which Redis runs in order.
func (s *RedisStore) deleteAndPublish(ctx context.Context, keys []string, channel string, msg []byte) (bool, error) {
	if s.cluster != nil || s.ring != nil {
		return false, nil
	}
	_, err := guard(ctx, s.trusted, func(ctx context.Context) (struct{}, error) {
		pipe := s.client.Pipeline()
		del := pipe.Unlink(ctx, keys...)
		pub := pipe.Publish(ctx, channel, msg)
		_, err := pipe.Exec(ctx)
		switch {
		case del.Err() != nil:
			return struct{}{}, del.Err()
		case pub.Err() != nil:
			return struct{}{}, fmt.Errorf("publish to other instances: %w", pub.Err())
		}
		return struct{}{}, err
	})
	return true, err
}

// Subscribe implements broadcaster.
func (s *RedisStore) Subscribe(channel string) Subscription {
	return &redisSubscription{client: s.client, channel: channel, timing: s.pubsub}
}

type redisSubscription struct {
	client  redis.UniversalClient
	channel string
	timing  pubsubTiming
}

// Run implements subscription.
func (r *redisSubscription) Run(ctx context.Context, on func(SubscriptionEvent, []byte)) {
	minBackoff := r.timing.or(r.timing.backoffMin, pubsubBackoffMin)
	backoff := minBackoff
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		if r.session(ctx, on) {
			if ctx.Err() == nil {
				on(SubscriptionLost, nil)
			}
			backoff = minBackoff
		}
		timer.Reset(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		backoff = min(2*backoff, pubsubBackoffMax)
	}
}

// open makes a PubSub and sends SUBSCRIBE on a new connection.
func (r *redisSubscription) open(ctx context.Context) (ps *redis.PubSub, err error) {
	ring, ok := r.client.(*redis.Ring)
	if !ok {
		ps = r.client.Subscribe(ctx) // no channel yet: no I/O
		return ps, ps.Subscribe(ctx, r.channel)
	}
	// A Ring subscribes on the shard of the channel, and panics when no shard is up.
	defer func() {
		if p := recover(); p != nil {
			ps, err = nil, fmt.Errorf("ring subscribe: %v", p)
		}
	}()
	return ring.Subscribe(ctx, r.channel), nil
}

// session runs one pub/sub connection until it fails or ctx ends, and reports whether it had
// become live.
func (r *redisSubscription) session(ctx context.Context, on func(SubscriptionEvent, []byte)) (live bool) {
	idle := r.timing.or(r.timing.idle, pubsubIdle)
	pongWait := r.timing.or(r.timing.pongWait, pubsubPongWait)
	ps, err := r.open(ctx)
	if ps == nil {
		return false
	}
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer func() {
		stop()
		_ = ps.Close()
	}()
	if err != nil {
		return false
	}
	var pinged time.Time // when a PING went unanswered so far; zero: none
	for {
		m, err := ps.ReceiveTimeout(ctx, idle)
		if err != nil {
			var ne net.Error
			if ctx.Err() != nil || !errors.As(err, &ne) || !ne.Timeout() {
				return live
			}
			if pinged.IsZero() {
				if ps.Ping(ctx) != nil {
					return live
				}
				pinged = time.Now()
			} else if time.Since(pinged) >= pongWait {
				return live
			}
			continue
		}
		pinged = time.Time{} // the connection answers
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Channel != r.channel {
				continue
			}
			if m.Kind != "subscribe" {
				return live // unsubscribed by someone else
			}
			if !live {
				live = true
				on(SubscriptionLive, nil)
			}
		case *redis.Message:
			if live && m.Channel == r.channel {
				on(SubscriptionMessage, []byte(m.Payload))
			}
		}
	}
}
