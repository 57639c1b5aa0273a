package cacheaside

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// A stored entry: the envelope header (expiry, load time, schema, not-found flag), then the
// codec's encoding of the value, through the wire (compression, encryption, limits: wire.go).

// decode reads a stored entry at store key sk and its header (h.NotFound() for a cached
// not-found). ok is false for anything that is not a well-formed entry of this cache's codec
// and type, or that does not open (wire.go).
func (c *Cache[T]) decode(sk string, b []byte) (v T, h envelope.Header, ok bool) {
	h, payload, ok := envelope.Decode(b, c.schema)
	if !ok {
		c.wire.rejects.add(rejectFrame)
		c.obs.undecodableValue()
		return v, h, false
	}
	if v, ok = c.unframe(sk, b, h, payload); !ok {
		c.obs.undecodableValue()
		return v, envelope.Header{}, false
	}
	return v, h, true
}

// encode frames a loaded value (or a not-found) for store key sk, with its jittered TTL: the
// TTL of the call whose load it is (callopts.go), else the cache's. ok is false when it must
// not be stored: negative caching off, a codec error, or too large.
func (c *Cache[T]) encode(ctx context.Context, sk string, v T, notFound bool, delta time.Duration) (data []byte, ttl time.Duration, ok bool) {
	ttl = c.fillTTL(ctx, notFound)
	if ttl == 0 {
		return nil, 0, false
	}
	if c.cfg.jitter > 0 {
		ttl -= time.Duration(float64(ttl) * c.cfg.jitter * rand.Float64())
	}
	h := envelope.Header{Expiry: c.fresh.now() + int64(ttl), Delta: delta, Schema: c.schema}
	ttl += c.fresh.extraTTL
	if notFound {
		h.Flags = envelope.FlagNotFound
	}
	data, ok = c.frame(sk, h, &v)
	return data, ttl, ok
}
