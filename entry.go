package cacheaside

import (
	"bytes"
	"context"
	"math/rand/v2"
	"time"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// A stored entry: the envelope header (expiry, load time, schema, not-found flag), then the
// codec's encoding of the value, through the wire (compression, encryption, limits: wire.go).

// entries turns values of T into stored entries and back: a Cache's codec bound to T, its
// type fingerprint, the wire (compression, encryption, limits), and the TTLs a fill gets.
type entries[T any] struct {
	vc          valueCodec[T] // the codec, bound to T (codec.go)
	schema      uint32        // the fingerprint of codec and type (schema.go)
	wire        wire          // compression, encryption, limits (wire.go)
	ttl         time.Duration // WithTTL
	negativeTTL time.Duration // WithNegativeTTL
	jitter      float64       // WithTTLJitter
	fresh       *refresher    // the clock of expiries, and the stale windows' extra TTL
	obs         *observer
}

// decode reads a stored entry at store key sk and its header (h.NotFound() for a cached
// not-found). ok is false for anything that is not a well-formed entry of this cache's codec
// and type, or that does not open (wire.go).
func (en *entries[T]) decode(sk string, b []byte) (v T, h envelope.Header, ok bool) {
	h, payload, ok := envelope.Decode(b, en.schema)
	if !ok {
		en.wire.rejects.add(rejectFrame)
		en.obs.undecodableValue()
		return v, h, false
	}
	if v, ok = en.unframe(sk, b, h, payload); !ok {
		en.obs.undecodableValue()
		return v, envelope.Header{}, false
	}
	return v, h, true
}

// encode frames a loaded value (or a not-found) for store key sk, with its jittered TTL: the
// TTL of the call whose load it is (callopts.go), else the cache's. ok is false when it must
// not be stored: negative caching off, a codec error, or too large.
func (en *entries[T]) encode(ctx context.Context, sk string, v T, notFound bool, delta time.Duration) (data []byte, ttl time.Duration, ok bool) {
	ttl = fillTTL(ctx, notFound, en.ttl, en.negativeTTL)
	if ttl == 0 {
		return nil, 0, false
	}
	if en.jitter > 0 {
		ttl -= time.Duration(float64(ttl) * en.jitter * rand.Float64())
	}
	h := envelope.Header{Expiry: en.fresh.now() + int64(ttl), Delta: delta, Schema: en.schema}
	ttl += en.fresh.extraTTL
	if notFound {
		h.Flags = envelope.FlagNotFound
	}
	data, ok = en.frame(sk, h, &v)
	return data, ttl, ok
}

// frame encodes *v (nothing for a not-found) under header h for store key sk: codec, then
// compression, then encryption. ok is false when the value must not be stored: a codec error,
// or larger than the max value size (before compression, or as stored).
func (en *entries[T]) frame(sk string, h envelope.Header, v *T) (data []byte, ok bool) {
	h.Flags &= envelope.FlagNotFound // the transforms below set the others
	var keys *keySet
	room := envelope.HeaderSize
	if en.wire.ring != nil {
		keys = en.wire.ring.set.Load()
		room = sealedAt
		h.Flags |= envelope.FlagEncrypted
	}
	spare := sealOverhead + envelope.HeaderSize + len(sk) // what sealing needs past the payload
	if !h.NotFound() {
		spare += 256 // a first guess at the payload; appending grows it
	}
	buf := make([]byte, room, room+spare)
	if !h.NotFound() {
		var err error
		if buf, err = encodeValue(en.vc, buf, v); err != nil {
			return nil, false
		}
		n := len(buf) - room
		if en.wire.maxValue > 0 && envelope.HeaderSize+n > en.wire.maxValue {
			return nil, false
		}
		if en.wire.compressAt > 0 && n >= en.wire.compressAt && n <= en.wire.maxDecoded {
			extra := 0
			if keys != nil {
				extra = sealOverhead + envelope.HeaderSize + len(sk)
			}
			if cb, ok := compress(make([]byte, room), buf[room:], extra); ok {
				buf = cb
				h.Flags |= envelope.FlagCompressed
			}
		}
	}
	envelope.AppendHeader(buf[:0], h) // in place
	if keys != nil {
		buf = keys.seal(buf, sk)
	}
	if en.wire.maxValue > 0 && len(buf) > en.wire.maxValue {
		return nil, false
	}
	if en.wire.keepsBytes && cap(buf)-len(buf) > len(buf)/4 {
		buf = bytes.Clone(buf) // the store would keep the spare capacity, unaccounted
	}
	return buf, true
}

// unframe decodes the payload of frame, whose header h was just read, for store key sk. ok is
// false (and the reason counted) for a value this cache must treat as a miss.
func (en *entries[T]) unframe(sk string, frame []byte, h envelope.Header, payload []byte) (v T, ok bool) {
	own := en.wire.own
	switch {
	case en.wire.ring != nil && !h.Encrypted():
		en.wire.rejects.add(rejectPlain)
		return v, false
	case h.Encrypted():
		var err error
		if en.wire.ring == nil {
			err = errUnsealed
		} else {
			payload, err = en.wire.ring.set.Load().open(frame, sk)
		}
		if err != nil {
			en.wire.rejects.add(rejectSealed)
			return v, false
		}
		own = exclusive
	}
	if h.NotFound() {
		if len(payload) != 0 {
			en.wire.rejects.add(rejectPayload)
			return v, false
		}
		return v, true
	}
	if h.Compressed() {
		if payload, ok = decompress(payload, en.wire.maxDecoded); !ok {
			en.wire.rejects.add(rejectCompressed)
			return v, false
		}
		own = exclusive
	}
	v, err := decodeValue(en.vc, payload, own)
	if err != nil {
		en.wire.rejects.add(rejectPayload)
		var zero T
		return zero, false
	}
	return v, true
}
