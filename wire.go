package cacheaside

import (
	"bytes"
	"errors"
	"sync/atomic"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// What a stored value looks like, from the codec out:
//
//	codec payload ─▶ compressed? (WithCompression: tag byte + S2 block)
//	              ─▶ sealed?     (WithEncryption: key id + nonce + AES-GCM ciphertext + tag)
//	              ─▶ framed      (internal/envelope: header with flags, expiry, load duration,
//	                              schema fingerprint of codec and type: schema.go)
//
// The Cache applies the transforms, not the codec, because sealing needs the store key and
// the header (both authenticated) and because the header's flags must say what was applied to
// this very value: a cache reads compressed and plain values alike, whatever its threshold.
// Decoding undoes them in reverse; anything that fails is a miss, counted by reason.

// wireOptions are the options of the transforms.
type wireOptions struct {
	compressAt int      // compress payloads of at least this many bytes; 0: never
	ring       *KeyRing // nil: no encryption
}

// wire is a Cache's transform state, bound at New.
type wire struct {
	wireOptions
	maxValue   int       // the max value size, envelope included; 0: none
	maxDecoded int       // the largest payload a compressed value may decompress to
	own        ownership // what the store's bytes allow a codec to alias
	keepsBytes bool      // the store keeps the slices it is given (ValueBytesStore): trim them
	rejects    *rejects
}

// rejectReason says why a stored value was a miss.
type rejectReason int

const (
	rejectFrame      rejectReason = iota // not a frame of this version, codec and type
	rejectPlain                          // unencrypted, in a cache that requires encryption
	rejectSealed                         // did not open: altered, moved, unknown key, or no key ring
	rejectCompressed                     // does not decompress within the limit
	rejectPayload                        // the codec could not decode it
	numRejects
)

// rejects counts the stored values read as misses, by reason (for metrics).
type rejects [numRejects]atomic.Uint64

func (r *rejects) add(why rejectReason) { r[why].Add(1) }

func newWire(cfg config, store Store) wire {
	w := wire{wireOptions: cfg.wire, maxValue: cfg.maxValueSize, maxDecoded: maxUnboundedDecoded, rejects: new(rejects)}
	if cfg.maxValueSize > 0 {
		w.maxDecoded = cfg.maxValueSize - envelope.HeaderSize
	}
	w.own, w.keepsBytes = borrowed, true
	if vb, ok := store.(ValueBytesStore); ok {
		if vb.ImmutableReads() {
			w.own = immutable
		}
		w.keepsBytes = vb.KeepsWrites()
	}
	return w
}

// frame encodes *v (nothing for a not-found) under header h for store key sk: codec, then
// compression, then encryption. ok is false when the value must not be stored: a codec error,
// or larger than the max value size (before compression, or as stored).
func (c *Cache[T]) frame(sk string, h envelope.Header, v *T) (data []byte, ok bool) {
	h.Flags &= envelope.FlagNotFound // the transforms below set the others
	var keys *keySet
	room := envelope.HeaderSize
	if c.wire.ring != nil {
		keys = c.wire.ring.set.Load()
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
		if buf, err = encodeValue(c.vc, buf, v); err != nil {
			return nil, false
		}
		n := len(buf) - room
		if c.wire.maxValue > 0 && envelope.HeaderSize+n > c.wire.maxValue {
			return nil, false
		}
		if c.wire.compressAt > 0 && n >= c.wire.compressAt && n <= c.wire.maxDecoded {
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
	if c.wire.maxValue > 0 && len(buf) > c.wire.maxValue {
		return nil, false
	}
	if c.wire.keepsBytes && cap(buf)-len(buf) > len(buf)/4 {
		buf = bytes.Clone(buf) // the store would keep the spare capacity, unaccounted
	}
	return buf, true
}

// unframe decodes the payload of frame, whose header h was just read, for store key sk. ok is
// false (and the reason counted) for a value this cache must treat as a miss.
func (c *Cache[T]) unframe(sk string, frame []byte, h envelope.Header, payload []byte) (v T, ok bool) {
	own := c.wire.own
	switch {
	case c.wire.ring != nil && !h.Encrypted():
		c.wire.rejects.add(rejectPlain)
		return v, false
	case h.Encrypted():
		var err error
		if c.wire.ring == nil {
			err = errUnsealed
		} else {
			payload, err = c.wire.ring.set.Load().open(frame, sk)
		}
		if err != nil {
			c.wire.rejects.add(rejectSealed)
			return v, false
		}
		own = exclusive
	}
	if h.NotFound() {
		if len(payload) != 0 {
			c.wire.rejects.add(rejectPayload)
			return v, false
		}
		return v, true
	}
	if h.Compressed() {
		if payload, ok = decompress(payload, c.wire.maxDecoded); !ok {
			c.wire.rejects.add(rejectCompressed)
			return v, false
		}
		own = exclusive
	}
	v, err := decodeValue(c.vc, payload, own)
	if err != nil {
		c.wire.rejects.add(rejectPayload)
		var zero T
		return zero, false
	}
	return v, true
}

// errCodecPanic is a codec that panicked: on bad data for decode (msgpack does on some), on an
// odd value for encode. Either way the value is a miss or not stored, never a panic.
var errCodecPanic = errors.New("cacheaside: codec panicked")

func encodeValue[T any](vc valueCodec[T], dst []byte, v *T) (out []byte, err error) {
	defer func() {
		if recover() != nil {
			out, err = nil, errCodecPanic
		}
	}()
	return vc.appendEncode(dst, v)
}

func decodeValue[T any](vc valueCodec[T], data []byte, own ownership) (v T, err error) {
	defer func() {
		if recover() != nil {
			var zero T
			v, err = zero, errCodecPanic
		}
	}()
	return vc.decode(data, own)
}
