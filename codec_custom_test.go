package cacheaside

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cacheaside/cacheaside/codec"
	msgpackcodec "github.com/cacheaside/cacheaside/codec/msgpack"
	"github.com/cacheaside/cacheaside/internal/envelope"
	"github.com/stretchr/testify/require"
)

// upperCodec is a user codec with a typed fast path, which the Cache must use.
type upperCodec struct{ typed *atomic.Int32 }

func (upperCodec) Name() string                       { return "upper" }
func (upperCodec) Marshal(v any) ([]byte, error)      { return []byte(strings.ToUpper(*v.(*string))), nil }
func (upperCodec) Unmarshal(data []byte, v any) error { *v.(*string) = string(data); return nil }
func (u upperCodec) AppendEncode(dst []byte, v *string) ([]byte, error) {
	u.typed.Add(1)
	return append(dst, strings.ToUpper(*v)...), nil
}
func (u upperCodec) Decode(data []byte) (string, error) { u.typed.Add(1); return string(data), nil }

var _ TypedCodec[string] = upperCodec{}

func TestTypedCodecIsUsed(t *testing.T) {
	var typed atomic.Int32
	c := newTestCache[string](t, NewMemoryStore(), WithCodec(upperCodec{&typed}))
	for range 2 {
		v, err := c.GetOrLoad(bg(), "k", func(context.Context) (string, error) { return "abc", nil })
		require.NoError(t, err)
		_ = v
	}
	require.EqualValues(t, 2, typed.Load(), "one typed encode, one typed decode")

	// A codec without the typed path goes through Marshal and Unmarshal.
	plain := newTestCache[wireDoc](t, NewMemoryStore(), WithCodec(struct{ Codec }{JSONCodec{}}))
	want := smallDoc()
	for range 2 {
		got, err := plain.GetOrLoad(bg(), "k", func(context.Context) (wireDoc, error) { return want, nil })
		require.NoError(t, err)
		require.Equal(t, want.Tags, got.Tags)
	}
}

// boundTestCodec is a third-party codec.Binder: it refuses ints, declares its own schema, and has
// its own encode and decode paths, which the Cache must use.
type boundTestCodec struct {
	schema           string
	appends, decodes *atomic.Int32
}

func (boundTestCodec) Name() string                       { return "bound" }
func (boundTestCodec) Marshal(v any) ([]byte, error)      { return []byte(*v.(*string)), nil }
func (boundTestCodec) Unmarshal(data []byte, v any) error { *v.(*string) = string(data); return nil }
func (b boundTestCodec) Bind(t reflect.Type) (codec.Bound, error) {
	if t.Kind() != reflect.String {
		return codec.Bound{}, errors.New("strings only")
	}
	return codec.Bound{
		Schema: b.schema,
		AppendMarshal: func(dst []byte, v any) ([]byte, error) {
			b.appends.Add(1)
			return append(dst, *v.(*string)...), nil
		},
		Decode: func(data []byte) (any, error) { b.decodes.Add(1); return string(data), nil },
	}, nil
}

func TestBinderCodec(t *testing.T) {
	var appends, decodes atomic.Int32
	s := NewMemoryStore()
	newCodec := func(schema string) Codec { return boundTestCodec{schema, &appends, &decodes} }
	_, err := New[int](s, WithCodec(newCodec("v1")))
	require.ErrorIs(t, err, ErrInvalidOption)
	require.ErrorContains(t, err, "strings only")

	prefix := WithPrefix(testPrefix(t))
	var loads atomic.Int32
	load := func(context.Context) (string, error) { loads.Add(1); return "abc", nil }
	v1, err := New[string](s, prefix, WithCodec(newCodec("v1")))
	require.NoError(t, err)
	defer v1.Close()
	for range 2 {
		v, err := v1.GetOrLoad(bg(), "k", load)
		require.NoError(t, err)
		require.Equal(t, "abc", v)
	}
	require.EqualValues(t, 1, loads.Load())
	require.EqualValues(t, 1, appends.Load(), "the codec's own encode")
	require.EqualValues(t, 1, decodes.Load(), "the codec's own decode")

	// The declared schema is in the fingerprint: another schema reads the value as a miss,
	// and the default (the Go type) differs from both.
	v2, err := New[string](s, prefix, WithCodec(newCodec("v2")))
	require.NoError(t, err)
	defer v2.Close()
	_, err = v2.GetOrLoad(bg(), "k", load)
	require.NoError(t, err)
	require.EqualValues(t, 2, loads.Load(), "a value of another schema is a miss")
	def, err := New[string](s, prefix, WithCodec(newCodec("")))
	require.NoError(t, err)
	defer def.Close()
	require.NotEqual(t, v1.entries.schema, def.entries.schema)
	require.NotEqual(t, v2.entries.schema, def.entries.schema)
}

// panicCodec panics on Marshal or Unmarshal, as msgpack does on some bad data.
type panicCodec struct{ onMarshal, onUnmarshal bool }

func (panicCodec) Name() string { return "panic" }
func (p panicCodec) Marshal(v any) ([]byte, error) {
	if p.onMarshal {
		panic("marshal")
	}
	return JSONCodec{}.Marshal(v)
}
func (p panicCodec) Unmarshal(data []byte, v any) error {
	if p.onUnmarshal {
		panic("unmarshal")
	}
	return JSONCodec{}.Unmarshal(data, v)
}

// Guarantee 4 holds for a codec that panics: a value it cannot decode is a miss, one it cannot
// encode is returned but not stored. msgpack panics on this stored payload (found by
// FuzzDecodeMsgpack: a nil where a time.Time is expected).
func TestCodecPanicIsAMiss(t *testing.T) {
	s := NewMemoryStore()
	prefix := testPrefix(t)
	writer := newTestCache[string](t, s, WithPrefix(prefix), WithCodec(panicCodec{}))
	reader := newTestCache[string](t, s, WithPrefix(prefix), WithCodec(panicCodec{onUnmarshal: true}))
	failing := newTestCache[string](t, s, WithCodec(panicCodec{onMarshal: true}))
	var loads atomic.Int32
	load := func(context.Context) (string, error) { loads.Add(1); return "v", nil }
	for _, c := range []*Cache[string]{writer, reader, failing, failing} {
		v, err := c.GetOrLoad(bg(), "k", load)
		require.NoError(t, err)
		require.Equal(t, "v", v)
	}
	require.EqualValues(t, 4, loads.Load())
	require.Equal(t, uint64(1), reader.entries.wire.rejects[rejectPayload].Load())

	mp := newTestCache[wireDoc](t, s, WithCodec(msgpackcodec.Codec{}))
	bad := []byte("\x89\xa200\xd300000000\xa40000\xa3000\xa500000\xcb00000000\xa60000000\xa40000\x91\xa10\xa40000\xc4Y" +
		strings.Repeat("0", 89) + "\xa70000000\xc7\f0000000000000\xa7Created\xc0")
	frame := append(envelope.AppendHeader(nil, envelope.Header{Schema: mp.entries.schema}), bad...)
	_, _, ok := mp.entries.decode("k", frame)
	require.False(t, ok)
}
