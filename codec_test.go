package cacheaside

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	msgpackcodec "github.com/cacheaside/cacheaside/codec/msgpack"
	protocodec "github.com/cacheaside/cacheaside/codec/proto"
	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// wireDoc is a struct with the field kinds JSON and MessagePack handle differently.
type wireDoc struct {
	ID      int64
	Name    string
	Score   float64
	Active  bool
	Tags    []string
	Blob    []byte
	Attrs   map[string]int
	Parent  *wireDoc
	Created time.Time
}

func smallDoc() wireDoc {
	return wireDoc{ID: 7, Name: "Ada", Score: 1.5, Active: true, Tags: []string{"a"}, Blob: []byte{0, 1, 255},
		Attrs: map[string]int{"x": 1}, Parent: &wireDoc{ID: 1}, Created: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

// largeDoc is a compressible document of about n bytes of JSON.
func largeDoc(n int) wireDoc {
	d := smallDoc()
	for i := 0; len(d.Tags)*16 < n; i++ {
		d.Tags = append(d.Tags, fmt.Sprintf("tag-%d-repeated", i%50))
	}
	return d
}

func testKey(t testing.TB) []byte {
	k := make([]byte, KeySize)
	_, _ = rand.Read(k)
	return k
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return string(b)
}

// steady returns opts after slowMachine: these tests count loader calls or read what a fill
// stored, which a store operation timing out on a busy machine (and failing open) would upset.
func steady(opts ...Option) []Option {
	return append(append([]Option{}, slowMachine...), opts...)
}

func testRing(t testing.TB) *KeyRing {
	r, err := NewKeyRing(1, testKey(t))
	require.NoError(t, err)
	return r
}

// storedFrame returns the bytes stored at store key sk, which must hold a value.
func storedFrame(t testing.TB, s Store, sk string) []byte {
	t.Helper()
	lk, err := s.GetOrLease(bg(), sk, "probe", time.Second)
	require.NoError(t, err)
	require.NotNil(t, lk.Value, "no value stored at %s", sk)
	return lk.Value
}

// rtEnv is where a round trip runs: two stores of one backend (two processes), made by the
// backend's test (a backend's server lives as long as the test that first asked for it).
type rtEnv struct{ s, s2 Store }

// roundTrip stores want through a Cache of T built with opts on e's first store, reads it back
// through it and through a cache on the second store (single and batch reads), and checks the
// stored frame's flags.
func roundTrip[T any](t *testing.T, e rtEnv, opts []Option, want T, equal func(a, b T) bool, compressed, encrypted bool) {
	t.Helper()
	s := e.s
	prefix := testPrefix(t)
	c := newTestCache[T](t, s, steady(append([]Option{WithPrefix(prefix)}, opts...)...)...)
	var loads atomic.Int32
	load := func(context.Context) (T, error) { loads.Add(1); return want, nil }

	got, err := c.GetOrLoad(bg(), "k", load)
	require.NoError(t, err)
	require.True(t, equal(want, got), "the loaded value")
	require.EqualValues(t, 1, loads.Load())

	frame := storedFrame(t, s, prefix+"k")
	h, _, ok := envelope.Decode(frame, c.entries.schema)
	require.True(t, ok, "stored frame decodes")
	require.Equal(t, compressed, h.Compressed(), "compressed flag")
	require.Equal(t, encrypted, h.Encrypted(), "encrypted flag")

	// A second cache (another process, on its own client) reads it.
	other := newTestCache[T](t, e.s2, steady(append([]Option{WithPrefix(prefix)}, opts...)...)...)
	for _, r := range []*Cache[T]{c, other} {
		got, err = r.GetOrLoad(bg(), "k", load)
		require.NoError(t, err)
		require.True(t, equal(want, got), "the value read back: got %v", got)
		m, err := r.GetOrLoadMany(bg(), []string{"k"}, func(context.Context, []string) (map[string]T, error) {
			loads.Add(1)
			return nil, nil
		})
		require.NoError(t, err)
		require.True(t, equal(want, m["k"]), "the value read back by GetOrLoadMany")
	}
	require.EqualValues(t, 1, loads.Load(), "read back from the store, not loaded again")

	// A not-found round-trips too, sealed when encrypted, never compressed.
	for range 2 {
		_, err = other.GetOrLoad(bg(), "missing", func(context.Context) (T, error) {
			loads.Add(1)
			var zero T
			return zero, ErrNotFound
		})
		require.ErrorIs(t, err, ErrNotFound)
	}
	require.EqualValues(t, 2, loads.Load(), "the not-found is cached")
	h, _, ok = envelope.Decode(storedFrame(t, s, prefix+"missing"), c.entries.schema)
	require.True(t, ok)
	require.True(t, h.NotFound())
	require.False(t, h.Compressed())
	require.Equal(t, encrypted, h.Encrypted())
	for _, r := range []*Cache[T]{c, other} {
		for i := range r.entries.wire.rejects {
			require.Zero(t, r.entries.wire.rejects[i].Load(), "rejects[%d]", i)
		}
	}
}

// Every codec x compression x encryption combination round-trips through every store, small
// values stored as they are and large ones compressed when compression is on.
func TestCodecRoundTrips(t *testing.T) {
	type codecCase struct {
		name string
		run  func(t *testing.T, b rtEnv, opts []Option, large, compress, encrypt bool)
	}
	structCase := func(codec Codec) func(t *testing.T, b rtEnv, opts []Option, large, compress, encrypt bool) {
		return func(t *testing.T, b rtEnv, opts []Option, large, compress, encrypt bool) {
			v := smallDoc()
			if large {
				v = largeDoc(20 << 10)
			}
			roundTrip(t, b, append(opts, WithCodec(codec)), v, func(a, b wireDoc) bool {
				return reflect.DeepEqual(a.Tags, b.Tags) && a.Created.Equal(b.Created) && a.Name == b.Name &&
					bytes.Equal(a.Blob, b.Blob) && reflect.DeepEqual(a.Attrs, b.Attrs) && a.Parent.ID == b.Parent.ID
			}, large && compress, encrypt)
		}
	}
	cases := []codecCase{
		{"json", structCase(JSONCodec{})},
		{"msgpack", structCase(msgpackcodec.Codec{})},
		{"proto", func(t *testing.T, b rtEnv, opts []Option, large, compress, encrypt bool) {
			fields := map[string]any{"id": 7, "name": "Ada", "tags": []any{"a", "b"}, "nested": map[string]any{"ok": true}}
			if large {
				for i := range 1000 {
					fields[fmt.Sprint("field-", i)] = "some repeated text value"
				}
			}
			v, err := structpb.NewStruct(fields)
			require.NoError(t, err)
			roundTrip(t, b, append(opts, WithCodec(protocodec.Codec{})), v,
				func(a, b *structpb.Struct) bool { return proto.Equal(a, b) }, large && compress, encrypt)
		}},
		{"raw-bytes", func(t *testing.T, b rtEnv, opts []Option, large, compress, encrypt bool) {
			v := []byte("hello \x00\xff bytes")
			if large {
				v = bytes.Repeat([]byte("0123456789abcdef"), 4096)
			}
			roundTrip(t, b, append(opts, WithCodec(RawCodec{})), v, bytes.Equal, large && compress, encrypt)
		}},
		{"raw-string", func(t *testing.T, b rtEnv, opts []Option, large, compress, encrypt bool) {
			v := "hello string"
			if large {
				v = strings.Repeat("lorem ipsum dolor sit amet ", 2000)
			}
			roundTrip(t, b, append(opts, WithCodec(RawCodec{})), v, func(a, b string) bool { return a == b }, large && compress, encrypt)
		}},
	}
	forEachBackend(t, func(t *testing.T, b backend) {
		e := rtEnv{b.newStore(t), b.newStore(t)}
		for _, cc := range cases {
			for _, compress := range []bool{false, true} {
				for _, encrypt := range []bool{false, true} {
					for _, large := range []bool{false, true} {
						name := fmt.Sprintf("%s/compress=%v/encrypt=%v/large=%v", cc.name, compress, encrypt, large)
						t.Run(name, func(t *testing.T) {
							opts := []Option{WithCompression(0)}
							if compress {
								opts = []Option{WithCompression(DefaultCompressionThreshold)}
							}
							if encrypt {
								opts = append(opts, WithEncryption(testRing(t)))
							}
							cc.run(t, e, opts, large, compress, encrypt)
						})
					}
				}
			}
		}
	})
}

// Compression is on by default, from DefaultCompressionThreshold.
func TestCompressionDefault(t *testing.T) {
	s := NewMemoryStore()
	c := newTestCache[string](t, s, WithCodec(RawCodec{}))
	for _, tc := range []struct {
		key        string
		v          string
		compressed bool
	}{
		{"small", strings.Repeat("a", DefaultCompressionThreshold-1), false},
		{"large", strings.Repeat("a", DefaultCompressionThreshold), true},
		{"incompressible", randomString(2 << 10), false},
	} {
		_, err := c.GetOrLoad(bg(), tc.key, func(context.Context) (string, error) { return tc.v, nil })
		require.NoError(t, err)
		h, _, ok := envelope.Decode(storedFrame(t, s, c.cfg.prefix+tc.key), c.entries.schema)
		require.True(t, ok)
		require.Equal(t, tc.compressed, h.Compressed(), tc.key)
	}
}

// New refuses a codec that cannot encode the cached type, instead of failing on every fill.
func TestCodecMustSuitType(t *testing.T) {
	s := NewMemoryStore()
	invalid := func(err error) {
		t.Helper()
		require.ErrorIs(t, err, ErrInvalidOption)
	}
	_, err := New[wireDoc](s, WithCodec(RawCodec{}))
	invalid(err)
	_, err = New[[]int](s, WithCodec(RawCodec{}))
	invalid(err)
	type named []byte
	_, err = New[named](s, WithCodec(RawCodec{}))
	invalid(err)
	_, err = New[wireDoc](s, WithCodec(protocodec.Codec{}))
	invalid(err)
	_, err = New[proto.Message](s, WithCodec(protocodec.Codec{}))
	invalid(err)
	_, err = New[structpb.Struct](s, WithCodec(protocodec.Codec{})) // not a pointer
	invalid(err)
	require.Contains(t, err.Error(), "structpb.Struct")

	for _, ok := range []func() error{
		func() error { c, err := New[[]byte](s, WithCodec(RawCodec{})); closeIf(c); return err },
		func() error { c, err := New[string](s, WithCodec(RawCodec{})); closeIf(c); return err },
		func() error {
			c, err := New[*structpb.Struct](s, WithCodec(protocodec.Codec{}))
			closeIf(c)
			return err
		},
		func() error {
			c, err := New[*wrapperspb.StringValue](s, WithCodec(protocodec.Codec{}))
			closeIf(c)
			return err
		},
		func() error { c, err := New[wireDoc](s, WithCodec(msgpackcodec.Codec{})); closeIf(c); return err },
	} {
		require.NoError(t, ok())
	}
}

func closeIf[T any](c *Cache[T]) {
	if c != nil {
		c.Close()
	}
}

// A nil proto message is returned to its callers but not cached: it has no encoding of its own.
func TestProtoNilNotCached(t *testing.T) {
	c := newTestCache[*wrapperspb.StringValue](t, NewMemoryStore(), WithCodec(protocodec.Codec{}))
	var loads atomic.Int32
	for range 2 {
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (*wrapperspb.StringValue, error) { loads.Add(1); return nil, nil })
		require.NoError(t, err)
		require.Nil(t, v)
	}
	require.EqualValues(t, 2, loads.Load())
}

// The codecs' untyped methods work as a Codec on their own (for wrappers and other users).
func TestCodecUntyped(t *testing.T) {
	doc := smallDoc()
	for _, codec := range []Codec{JSONCodec{}, msgpackcodec.Codec{}} {
		b, err := codec.Marshal(&doc)
		require.NoError(t, err)
		var got wireDoc
		require.NoError(t, codec.Unmarshal(b, &got))
		require.Equal(t, doc.Tags, got.Tags, codec.Name())
	}
	msg := wrapperspb.String("hi")
	for _, v := range []any{msg, &msg} {
		b, err := protocodec.Codec{}.Marshal(v)
		require.NoError(t, err)
		var got *wrapperspb.StringValue
		require.NoError(t, protocodec.Codec{}.Unmarshal(b, &got))
		require.Equal(t, "hi", got.GetValue())
		into := &wrapperspb.StringValue{}
		require.NoError(t, protocodec.Codec{}.Unmarshal(b, into))
		require.Equal(t, "hi", into.GetValue())
	}
	var nilMsg *wrapperspb.StringValue
	_, err := protocodec.Codec{}.Marshal(&nilMsg)
	require.Error(t, err)
	_, err = protocodec.Codec{}.Marshal(42)
	require.Error(t, err)
	require.Error(t, protocodec.Codec{}.Unmarshal(nil, new(int)))

	bs, s := []byte("bytes"), "string"
	for _, v := range []any{&bs, &s} {
		b, err := RawCodec{}.Marshal(v)
		require.NoError(t, err)
		require.NoError(t, RawCodec{}.Unmarshal(b, v))
	}
	_, err = RawCodec{}.Marshal(42)
	require.Error(t, err)
	require.Error(t, RawCodec{}.Unmarshal(nil, new(int)))
}

// The typed JSON path writes exactly what json.Marshal writes: values written before it (or by
// an untyped JSON codec) read the same.
func TestJSONTypedMatchesMarshal(t *testing.T) {
	doc := smallDoc()
	doc.Name = "<html> & \u2028"
	want, err := JSONCodec{}.Marshal(&doc)
	require.NoError(t, err)
	got, err := jsonAppend([]byte("prefix"), &doc)
	require.NoError(t, err)
	require.Equal(t, "prefix"+string(want), string(got))
}

// A []byte from RawCodec never shares memory with the store's copy: writing to it leaves the
// cached value intact. Results of decompressed or decrypted values are the caller's alone too.
func TestRawBytesDoNotAliasTheStore(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := b.newStore(t)
		for _, opts := range [][]Option{
			{WithCompression(0)},
			{WithCompression(1)},
			{WithEncryption(testRing(t))},
		} {
			c := newTestCache[[]byte](t, s, steady(append(opts, WithCodec(RawCodec{}))...)...)
			want := bytes.Repeat([]byte("abcd"), 100)
			load := func(context.Context) ([]byte, error) { return bytes.Clone(want), nil }
			_, err := c.GetOrLoad(bg(), "k", load)
			require.NoError(t, err)
			for range 2 {
				got, err := c.GetOrLoad(bg(), "k", func(context.Context) ([]byte, error) {
					return nil, errors.New("must be a hit")
				})
				require.NoError(t, err)
				require.Equal(t, want, got)
				clear(got)
			}
		}
	})
}

// The memory store keeps the slices it is given: a stored frame carries no spare capacity the
// store's weigher would not count.
func TestStoredFramesAreTrimmed(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	for _, opts := range [][]Option{nil, {WithCompression(0)}, {WithEncryption(testRing(t))}} {
		c := newTestCache[wireDoc](t, s, opts...)
		for i, v := range []wireDoc{smallDoc(), largeDoc(300), largeDoc(5000), largeDoc(100 << 10)} {
			k := fmt.Sprint(i)
			_, err := c.GetOrLoad(bg(), k, func(context.Context) (wireDoc, error) { return v, nil })
			require.NoError(t, err)
			e, ok := s.c.GetIfPresent(c.cfg.prefix + k)
			require.True(t, ok)
			require.LessOrEqual(t, cap(e.value), len(e.value)+len(e.value)/4, "value %d: %d bytes, capacity %d", i, len(e.value), cap(e.value))
		}
	}
}
