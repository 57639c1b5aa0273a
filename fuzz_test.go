package cacheaside

import (
	"bytes"
	"testing"
	"time"

	msgpackcodec "github.com/cacheaside/cacheaside/codec/msgpack"
	protocodec "github.com/cacheaside/cacheaside/codec/proto"
	"github.com/cacheaside/cacheaside/internal/envelope"
	"google.golang.org/protobuf/types/known/structpb"
)

// Fuzz targets for everything that reads stored bytes: decompression, decryption, and each
// codec through the Cache's decode path (the envelope's own is in internal/envelope). Seeds
// are in testdata/fuzz; `make test` runs each target briefly, `make fuzz` longer.

// fuzzKey is a fixed key, so that committed sealed seeds open.
var fuzzKey = bytes.Repeat([]byte{0x5A}, KeySize)

const fuzzStoreKey = "fuzz:k"

// fuzzExpiry is the expiry of every fuzzed frame: it is authenticated with sealed ones, so it
// must not change between runs for committed seeds to open.
const fuzzExpiry = int64(4102444800) * int64(time.Second)

// FuzzDecompress: decompression never panics or exceeds its limit, and what compress writes
// decompresses to its input.
func FuzzDecompress(f *testing.F) {
	for _, p := range [][]byte{[]byte("hello hello hello hello"), bytes.Repeat([]byte("ab"), 2000), nil} {
		if c, ok := compress(nil, p, 0); ok {
			f.Add(c)
		}
		f.Add(append([]byte{tagS2}, p...))
	}
	f.Add([]byte{tagS2, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F}) // claims 4 GiB
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 20
		if out, ok := decompress(data, limit); ok && len(out) > limit {
			t.Fatalf("decompressed %d bytes, over the limit", len(out))
		}
		c, ok := compress([]byte("hdr"), data, 0)
		if !ok {
			return
		}
		out, ok := decompress(c[3:], len(data))
		if !ok || !bytes.Equal(out, data) {
			t.Fatalf("round trip of %x: %x, %v", data, out, ok)
		}
	})
}

// FuzzOpen: a sealed payload opens only as sealed (the same bytes, the same store key), and
// nothing else opens or panics.
func FuzzOpen(f *testing.F) {
	ring, err := NewKeyRing(1, fuzzKey)
	if err != nil {
		f.Fatal(err)
	}
	keys := ring.set.Load()
	hdr := envelope.AppendHeader(nil, envelope.Header{Flags: envelope.FlagEncrypted, Expiry: 1, Schema: 7})
	for _, p := range []string{"", "plaintext", "a longer plaintext that spans more than one AES block"} {
		sealed := keys.seal(append(append(bytes.Clone(hdr), 0, 0, 0, 0), p...), fuzzStoreKey)
		f.Add(sealed, fuzzStoreKey, []byte(p))
	}
	f.Fuzz(func(t *testing.T, frame []byte, sk string, plain []byte) {
		if len(frame) < envelope.HeaderSize {
			return
		}
		if out, err := keys.open(frame, sk); err == nil {
			// Only a frame sealed under the fuzz key opens: the fuzzer cannot forge a tag, so
			// this is a committed seed, unchanged.
			sealed := keys.seal(append(bytes.Clone(frame[:sealedAt]), out...), sk)
			if again, err := keys.open(sealed, sk); err != nil || !bytes.Equal(again, out) {
				t.Fatalf("resealed %x does not open as %x", sealed, out)
			}
		}
		// Whatever the plaintext, sealing then opening gives it back, for this key only.
		sealed := keys.seal(append(bytes.Clone(frame[:envelope.HeaderSize]), append([]byte{0, 0, 0, 0}, plain...)...), sk)
		out, err := keys.open(sealed, sk)
		if err != nil || !bytes.Equal(out, plain) {
			t.Fatalf("sealed %x opens as %x, %v", plain, out, err)
		}
		if _, err := keys.open(sealed, sk+"x"); err == nil {
			t.Fatal("opened under another store key")
		}
	})
}

// fuzzDecode fuzzes a Cache[T]'s decode path with codec: frames of this cache's schema with
// any flags and payload, read by a cache with compression and one with encryption. Whatever
// decodes must encode and decode again. Seeds are the frames of seeds' values.
func fuzzDecode[T any](f *testing.F, codec Codec, seeds ...T) {
	ring, err := NewKeyRing(1, fuzzKey)
	if err != nil {
		f.Fatal(err)
	}
	s := NewMemoryStore()
	f.Cleanup(func() { s.Close() })
	var caches []*Cache[T]
	for _, opts := range [][]Option{{WithCompression(1)}, {WithCompression(64), WithEncryption(ring)}} {
		c, err := New[T](s, append(opts, WithCodec(codec), WithPrefix("fuzz:"))...)
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { c.Close() })
		caches = append(caches, c)
	}
	for _, c := range caches {
		for _, v := range seeds {
			if frame, ok := c.entries.frame(fuzzStoreKey, envelope.Header{Expiry: fuzzExpiry, Schema: c.entries.schema}, &v); ok {
				f.Add(frame[2], frame[envelope.HeaderSize:])
			}
			if p, err := c.entries.vc.appendEncode(nil, &v); err == nil {
				f.Add(byte(0), p)
			}
		}
		nf := envelope.Header{Expiry: fuzzExpiry, Schema: c.entries.schema, Flags: envelope.FlagNotFound}
		if frame, ok := c.entries.frame(fuzzStoreKey, nf, nil); ok {
			f.Add(frame[2], frame[envelope.HeaderSize:])
		}
	}
	f.Fuzz(func(t *testing.T, flags byte, payload []byte) {
		for _, c := range caches {
			h := envelope.Header{Flags: envelope.Flags(flags), Expiry: fuzzExpiry, Schema: c.entries.schema}
			frame := append(envelope.AppendHeader(nil, h), payload...)
			v, got, ok := c.entries.decode(fuzzStoreKey, frame)
			if !ok || got.NotFound() {
				continue
			}
			again, ok := c.entries.frame(fuzzStoreKey, h, &v)
			if !ok {
				continue // too large, or a value the codec decodes but cannot encode
			}
			h2, payload2, ok := envelope.Decode(again, c.entries.schema)
			if !ok {
				t.Fatalf("re-encoded frame %x does not parse", again)
			}
			if _, ok := c.entries.unframe(fuzzStoreKey, again, h2, payload2); !ok {
				t.Fatalf("%v (from %x) re-encoded as %x does not decode", v, payload, again)
			}
		}
	})
}

func FuzzDecodeJSON(f *testing.F) {
	fuzzDecode(f, JSONCodec{}, smallDoc(), largeDoc(4<<10), wireDoc{})
}

func FuzzDecodeMsgpack(f *testing.F) {
	fuzzDecode(f, msgpackcodec.Codec{}, smallDoc(), largeDoc(4<<10), wireDoc{})
}

func FuzzDecodeProto(f *testing.F) {
	small, _ := structpb.NewStruct(map[string]any{"id": 7, "name": "Ada", "tags": []any{"a", 1.5, nil, true}})
	large := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for i := range 200 {
		large.Fields[string(rune('a'+i%26))+"field"] = structpb.NewStringValue("repeated text")
	}
	fuzzDecode(f, protocodec.Codec{}, small, large, &structpb.Struct{})
}

func FuzzDecodeRaw(f *testing.F) {
	fuzzDecode(f, RawCodec{}, []byte("raw bytes"), bytes.Repeat([]byte("0123456789"), 500), []byte{})
}
