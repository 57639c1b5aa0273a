package cacheaside

import (
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
