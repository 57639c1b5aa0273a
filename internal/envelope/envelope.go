// Package envelope is the versioned binary frame around every value cacheaside stores.
//
// Layout (big-endian), 19 bytes of header then the codec's payload:
//
//	0      magic 0xCA
//	1      format version (1)
//	2      flags (FlagNotFound, FlagCompressed, FlagEncrypted)
//	3..10  logical expiry, Unix nanoseconds (int64)
//	11..14 duration of the load that produced the value, microseconds (uint32, saturating)
//	15..18 schema: a fingerprint of the codec and the Go type behind the payload (schema.go)
//	19..   payload
//
// The flags say what the payload is: FlagEncrypted, a sealed box (the key id, nonce, ciphertext
// and tag of cacheaside's key ring) whose plaintext is the rest; FlagCompressed, a compressed
// codec payload (an algorithm tag byte, then the compressed bytes); neither, the codec's bytes
// as they are. A negative entry (FlagNotFound) has no payload, or, encrypted, a sealed empty
// one; it is never compressed.
//
// Decode never panics: anything that is not a well-formed frame of this version and schema is
// reported as not ok, and the caller treats it as a miss.
package envelope

import (
	"encoding/binary"
	"time"
)

const (
	magic   = 0xCA
	version = 1

	// HeaderSize is the number of bytes before the payload.
	HeaderSize = 19
)

// Flags describe the payload.
type Flags uint8

const (
	// FlagNotFound marks a negative entry: the loader said the record does not exist. It has
	// no payload.
	FlagNotFound Flags = 1 << iota
	// FlagCompressed marks a compressed payload.
	FlagCompressed
	// FlagEncrypted marks a sealed payload.
	FlagEncrypted

	knownFlags = FlagNotFound | FlagCompressed | FlagEncrypted
)

// Header is the decoded frame header.
type Header struct {
	Flags  Flags
	Expiry int64         // logical expiry, Unix nanoseconds
	Delta  time.Duration // how long the load that produced the value took
	Schema uint32
}

// NotFound reports whether the entry is negative.
func (h Header) NotFound() bool { return h.Flags&FlagNotFound != 0 }

// Compressed reports whether the payload is compressed.
func (h Header) Compressed() bool { return h.Flags&FlagCompressed != 0 }

// Encrypted reports whether the payload is sealed.
func (h Header) Encrypted() bool { return h.Flags&FlagEncrypted != 0 }

// AppendHeader appends the header for h to dst and returns the extended slice.
func AppendHeader(dst []byte, h Header) []byte {
	micros := h.Delta / time.Microsecond
	if micros < 0 {
		micros = 0
	}
	if micros > 0xFFFFFFFF {
		micros = 0xFFFFFFFF
	}
	dst = append(dst, magic, version, byte(h.Flags))
	dst = binary.BigEndian.AppendUint64(dst, uint64(h.Expiry))
	dst = binary.BigEndian.AppendUint32(dst, uint32(micros))
	dst = binary.BigEndian.AppendUint32(dst, h.Schema)
	return dst
}

// Encode returns a frame of h followed by payload.
func Encode(h Header, payload []byte) []byte {
	b := make([]byte, 0, HeaderSize+len(payload))
	b = AppendHeader(b, h)
	return append(b, payload...)
}

// Decode parses a frame. It returns ok false for anything that is not a frame of this version
// with the given schema, with unknown flags, or a negative entry that is compressed or carries
// a payload without being encrypted. The payload aliases b.
func Decode(b []byte, schema uint32) (h Header, payload []byte, ok bool) {
	if len(b) < HeaderSize || b[0] != magic || b[1] != version {
		return Header{}, nil, false
	}
	h.Flags = Flags(b[2])
	if h.Flags&^knownFlags != 0 {
		return Header{}, nil, false
	}
	h.Expiry = int64(binary.BigEndian.Uint64(b[3:11]))
	h.Delta = time.Duration(binary.BigEndian.Uint32(b[11:15])) * time.Microsecond
	h.Schema = binary.BigEndian.Uint32(b[15:19])
	if h.Schema != schema {
		return Header{}, nil, false
	}
	payload = b[HeaderSize:]
	if h.NotFound() && (h.Flags&FlagCompressed != 0 || (len(payload) != 0 && h.Flags&FlagEncrypted == 0)) {
		return Header{}, nil, false
	}
	return h, payload, true
}
