package cacheaside

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/cacheaside/cacheaside/codec"
	"github.com/cacheaside/cacheaside/internal/envelope"
)

// Codec turns values into bytes and back: an alias of codec.Codec, the interface codec
// packages implement without importing this one. A Cache stores a fingerprint of the codec's
// Name and of the cached type (its import path, name and structure, or what the codec's Bind
// declares instead: codec.Binder) with every value, so values written by another codec, or for
// another type or another shape of it, read as misses, not garbage.
//
// JSONCodec (the default) and RawCodec (for []byte and string) are in this package; MessagePack
// is in codec/msgpack and Protocol Buffers in codec/proto, so that only the programs that use
// them link them. A codec that implements codec.Binder checks, at New, that it suits the cached
// type (New fails with ErrInvalidOption if not), declares the type's fingerprint and may offer
// faster paths. Compression and encryption are not codecs: the Cache applies them to whatever
// the codec produced (WithCompression, WithEncryption).
type Codec = codec.Codec

// TypedCodec is what a Codec also implements to encode values of type T without boxing them in
// an interface or reflecting on them (code generators such as easyjson or msgp fit it). A Cache
// of T whose codec implements TypedCodec[T] uses these two methods instead of Marshal and
// Unmarshal; the wire format must be the same.
type TypedCodec[T any] interface {
	// AppendEncode appends the encoding of *v to dst and returns the extended slice.
	AppendEncode(dst []byte, v *T) ([]byte, error)
	// Decode decodes data. It must neither keep nor modify data.
	Decode(data []byte) (T, error)
}

// ownership says what a codec may do with the bytes it decodes.
type ownership uint8

const (
	// borrowed bytes may change or be reused once decode returns (a Store of unknown habits):
	// the result must not alias them.
	borrowed ownership = iota
	// immutable bytes never change but are shared with the store or other readers (the
	// built-in stores): a string may alias them, a []byte must not (its holder could write).
	immutable
	// exclusive bytes were just produced by the Cache for this decode (decompressed or
	// decrypted) and nobody else holds them: the result may alias them.
	exclusive
)

// valueCodec is a Codec bound to the cached type T by New.
type valueCodec[T any] interface {
	// appendEncode appends the encoding of *v to dst.
	appendEncode(dst []byte, v *T) ([]byte, error)
	// decode decodes data, which it must not modify; own says whether the result may alias it.
	decode(data []byte, own ownership) (T, error)
}

// bindCodec returns codec's path for values of T and the description of T its fingerprint
// covers (schema.go), or an error wrapping ErrInvalidOption if the codec cannot encode T. What
// a codec can do is its own to say, through the interfaces it implements: none of this
// package's codecs is named here.
func bindCodec[T any](c Codec) (vc valueCodec[T], schema string, err error) {
	t := reflect.TypeFor[T]()
	switch x := c.(type) {
	case valueBinder: // this package's codecs, whose fast paths use what only it knows
		var v any
		if v, schema, err = x.bindValue(t); err == nil {
			vc = v.(valueCodec[T])
		}
	case TypedCodec[T]:
		vc, schema = typedCodec[T]{x}, envelope.DescribeType(t)
	case codec.Binder:
		var b codec.Bound
		if b, err = x.Bind(t); err == nil {
			vc, schema = boundCodec[T]{c, b}, b.Schema
			if schema == "" {
				schema = envelope.DescribeType(t)
			}
		}
	default:
		vc, schema = anyCodec[T]{c}, envelope.DescribeType(t)
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w: codec %q cannot encode %v: %w", ErrInvalidOption, c.Name(), t, err)
	}
	return vc, schema, nil
}

// valueBinder is a codec of this package: it binds itself to t, returning a valueCodec[t] (as
// an any, methods having no type parameters) and the description its fingerprint covers.
type valueBinder interface {
	bindValue(t reflect.Type) (vc any, schema string, err error)
}

// boundCodec is the path of a codec.Binder: its AppendMarshal and Decode if it has them, else
// Marshal and Unmarshal.
type boundCodec[T any] struct {
	c Codec
	b codec.Bound
}

func (p boundCodec[T]) appendEncode(dst []byte, v *T) ([]byte, error) {
	if p.b.AppendMarshal != nil {
		return p.b.AppendMarshal(dst, v)
	}
	b, err := p.c.Marshal(v)
	return append(dst, b...), err
}

func (p boundCodec[T]) decode(data []byte, _ ownership) (T, error) {
	if p.b.Decode == nil {
		return p.unmarshal(data)
	}
	x, err := p.b.Decode(data)
	if err != nil {
		var zero T
		return zero, err
	}
	v, ok := x.(T)
	if !ok {
		return v, fmt.Errorf("cacheaside: codec %q decoded a %T, want %v", p.c.Name(), x, reflect.TypeFor[T]())
	}
	return v, nil
}

// unmarshal is decode through Unmarshal, apart so that only this path moves a T to the heap.
func (p boundCodec[T]) unmarshal(data []byte) (v T, err error) {
	err = p.c.Unmarshal(data, &v)
	return v, err
}

// anyCodec is the path of a Codec that knows nothing of T: through Marshal and Unmarshal.
type anyCodec[T any] struct{ c Codec }

func (a anyCodec[T]) appendEncode(dst []byte, v *T) ([]byte, error) {
	b, err := a.c.Marshal(v)
	return append(dst, b...), err
}

func (a anyCodec[T]) decode(data []byte, _ ownership) (v T, err error) {
	err = a.c.Unmarshal(data, &v)
	return v, err
}

// typedCodec is the path of a Codec that implements TypedCodec[T].
type typedCodec[T any] struct{ c TypedCodec[T] }

func (t typedCodec[T]) appendEncode(dst []byte, v *T) ([]byte, error) {
	return t.c.AppendEncode(dst, v)
}

func (t typedCodec[T]) decode(data []byte, _ ownership) (T, error) { return t.c.Decode(data) }

var (
	_ Codec        = JSONCodec{}
	_ codec.Binder = JSONCodec{}
)

// JSONCodec is the default Codec: encoding/json. Its Name is "json".
type JSONCodec struct{}

// Name implements Codec.
func (JSONCodec) Name() string { return "json" }

// Marshal implements Codec.
func (JSONCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements Codec.
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Bind implements codec.Binder: any type, fingerprinted by its Go type, encoded straight into
// the Cache's buffer with the bytes json.Marshal writes.
func (JSONCodec) Bind(reflect.Type) (codec.Bound, error) {
	return codec.Bound{AppendMarshal: jsonAppend}, nil
}

func jsonAppend(dst []byte, v any) ([]byte, error) {
	w := appendWriter{dst}
	if err := json.NewEncoder(&w).Encode(v); err != nil {
		return dst, err
	}
	return w.b[:len(w.b)-1], nil // Encode ends the value with a newline Marshal does not write
}

// appendWriter is an io.Writer that appends to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
