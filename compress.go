package cacheaside

import (
	"slices"

	"github.com/klauspost/compress/s2"
)

// DefaultCompressionThreshold is the default size from which a value's codec payload is
// compressed: 1 KiB.
const DefaultCompressionThreshold = 1 << 10

// WithCompression compresses each value whose codec payload is threshold bytes or more, with S2
// (github.com/klauspost/compress/s2), when that saves at least an eighth of it; each stored value
// says whether it is compressed, so compressed and plain values coexist and a change of
// threshold (or turning compression off) needs no flush: a cache reads both. 0 disables.
// Default: DefaultCompressionThreshold (1 KiB). It must not be negative.
//
// A compressed value is only stored if its decompressed payload fits the max value size
// (WithMaxValueSize; without a limit, 64 MiB), and a stored value whose header claims more is a
// miss before anything is allocated.
//
// S2 rather than zstd (bench/ BenchmarkCompression, zstd at its fastest and default levels): on
// a 10 KiB JSON document S2 compressed about 5x as fast and decompressed 5-6x as fast, and on
// incompressible data it gave up about 5x as fast, while zstd stored JSON 35-38% smaller. A
// cache decompresses on every hit and compresses on every fill, in the caller's path; S2 also
// needs no encoder or decoder state, pools or goroutines.
func WithCompression(threshold int) Option {
	return func(c *config) {
		if threshold < 0 {
			c.invalid("compression threshold must not be negative, got %d", threshold)
			return
		}
		c.wire.compressAt = threshold
	}
}

// maxUnboundedDecoded bounds decompression for a cache without a max value size.
const maxUnboundedDecoded = 64 << 20

// A compressed payload is an algorithm tag then the compressed bytes. Only S2 is written; the tag
// lets another algorithm be read alongside it later.
const tagS2 byte = 1

// compress appends to dst the compressed form of p, leaving at least spare bytes of capacity
// after it, and reports whether it saves at least an eighth of p (otherwise dst is returned
// unchanged and p should be stored as it is).
func compress(dst, p []byte, spare int) ([]byte, bool) {
	n := s2.MaxEncodedLen(len(p))
	if n < 0 {
		return dst, false
	}
	start := len(dst)
	out := slices.Grow(dst, 1+n+spare)
	out = append(out, tagS2)
	enc := s2.Encode(out[len(out):len(out)+n], p)
	if 1+len(enc) > len(p)-len(p)/8 {
		return dst[:start], false
	}
	return out[:len(out)+len(enc)], true
}

// decompress returns the payload p compresses, in a new buffer, if it is well formed and
// decompresses to at most limit bytes. It never allocates more than limit (plus nothing) for a
// payload that claims more.
func decompress(p []byte, limit int) ([]byte, bool) {
	if len(p) == 0 || p[0] != tagS2 {
		return nil, false
	}
	p = p[1:]
	n, err := s2.DecodedLen(p)
	if err != nil || n > limit {
		return nil, false
	}
	out, err := s2.Decode(make([]byte, n), p)
	if err != nil || len(out) != n {
		return nil, false
	}
	return out, true
}
