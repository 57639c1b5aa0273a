package bench

// BenchmarkCompression weighs the compression WithCompression uses (S2) against zstd, both from
// github.com/klauspost/compress, on the values a cache would compress:
//
//	BenchmarkCompression/<value>/<algorithm>   one compression and one decompression of value
//
// Values: the 10 KiB JSON document of BenchmarkCodec (10KiB-json), a JSON document of the same
// records grown to 1 MiB (1MiB-json), and the 1 MiB random blob of BenchmarkCodec as JSON
// stores it (base64, incompressible: 1MiB-blob-json). Algorithms: s2 (s2.Encode, what the
// library writes), zstd at its fastest and default levels (EncodeAll/DecodeAll, one Encoder
// and one Decoder reused, as a cache would keep them). It reports encode-ns/op and
// decode-ns/op apart (ns/op is their sum), and bytes/value, the compressed size (in-bytes is
// the value's own). Serial only: the work is one CPU's, a call at a time.

import (
	"bytes"
	"encoding/json"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// oneMiBJSON is a document of the same records as tenKiB, grown to about 1 MiB of JSON.
func oneMiBJSON(b *testing.B) []byte {
	r := mrand.New(mrand.NewPCG(1, 2))
	var d document
	for range 1 << 20 / 256 { // each record is about 256 bytes of JSON
		d.Records = append(d.Records, newRecord(r))
	}
	for {
		j, err := json.Marshal(d)
		if err != nil {
			b.Fatal(err)
		}
		if len(j) >= 1<<20 {
			return j
		}
		d.Records = append(d.Records, newRecord(r))
	}
}

// compressor compresses src into dst (reused) and decompresses it back into dst (reused).
type compressor struct {
	name       string
	compress   func(dst, src []byte) []byte
	decompress func(dst, src []byte) ([]byte, error)
}

func compressors(b *testing.B) []compressor {
	out := []compressor{{
		name: "s2",
		compress: func(dst, src []byte) []byte {
			return s2.Encode(dst[:cap(dst)], src)
		},
		decompress: func(dst, src []byte) ([]byte, error) {
			return s2.Decode(dst[:cap(dst)], src)
		},
	}}
	for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1))
		if err != nil {
			b.Fatal(err)
		}
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			enc.Close()
			dec.Close()
		})
		out = append(out, compressor{
			name:       "zstd-" + level.String(),
			compress:   func(dst, src []byte) []byte { return enc.EncodeAll(src, dst[:0]) },
			decompress: func(dst, src []byte) ([]byte, error) { return dec.DecodeAll(src, dst[:0]) },
		})
	}
	return out
}

func BenchmarkCompression(b *testing.B) {
	doc, err := json.Marshal(tenKiB())
	if err != nil {
		b.Fatal(err)
	}
	blobJSON, err := json.Marshal(blob{randomBlob()})
	if err != nil {
		b.Fatal(err)
	}
	values := []struct {
		name string
		v    []byte
	}{{"10KiB-json", doc}, {"1MiB-json", oneMiBJSON(b)}, {"1MiB-blob-json", blobJSON}}
	for _, val := range values {
		for _, c := range compressors(b) {
			b.Run(val.name+"/"+c.name, func(b *testing.B) {
				packed := make([]byte, 0, s2.MaxEncodedLen(len(val.v))+1024)
				plain := make([]byte, 0, len(val.v))
				packed = c.compress(packed, val.v)
				size := len(packed)
				out, err := c.decompress(plain, packed)
				if err != nil || !bytes.Equal(out, val.v) {
					b.Fatalf("round trip: %v", err)
				}
				b.ReportAllocs()
				var tEnc, tDec time.Duration
				for b.Loop() {
					t0 := time.Now()
					packed = c.compress(packed, val.v)
					t1 := time.Now()
					if _, err := c.decompress(plain, packed); err != nil {
						b.Fatal(err)
					}
					tEnc += t1.Sub(t0)
					tDec += time.Since(t1)
				}
				b.ReportMetric(float64(tEnc.Nanoseconds())/float64(b.N), "encode-ns/op")
				b.ReportMetric(float64(tDec.Nanoseconds())/float64(b.N), "decode-ns/op")
				b.ReportMetric(float64(size), "bytes/value")
				b.ReportMetric(float64(len(val.v)), "in-bytes")
			})
		}
	}
}
