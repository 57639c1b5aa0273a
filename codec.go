package cacheaside

import (
	"encoding/json"
	"fmt"
	"reflect"
)

// Codec turns values into bytes and back. A Cache stores a fingerprint of the codec's Name and
// of the cached type (its import path, name and structure) with every value, so values written
// by another codec, or for another type or another shape of it, read as misses, not garbage.
//
// The built-in codecs are JSONCodec (the default), MsgpackCodec, ProtoCodec (for proto.Message
// types) and RawCodec (for []byte and string). New checks that the codec suits the cached type
// and fails with ErrInvalidOption if it does not. Compression and encryption are not codecs:
// the Cache applies them to whatever the codec produced (WithCompression, WithEncryption).
type Codec interface {
	// Name identifies the codec and its wire format; change it when the format changes.
	Name() string
	// Marshal encodes v, a pointer to the cached type's value.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a pointer to the cached type. It must neither keep nor
	// modify data: it may be the store's own copy, shared with other readers.
	Unmarshal(data []byte, v any) error
}

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

// bindCodec returns codec's path for values of T, or an error wrapping ErrInvalidOption if the
// codec cannot encode T.
func bindCodec[T any](codec Codec) (valueCodec[T], error) {
	var vc any
	var err error
	switch c := codec.(type) {
	case JSONCodec:
		vc = jsonCodec[T]{}
	case MsgpackCodec:
		vc = msgpackCodec[T]{}
	case ProtoCodec:
		vc, err = bindProto[T](c)
	case RawCodec:
		vc, err = bindRaw[T]()
	case TypedCodec[T]:
		vc = typedCodec[T]{c}
	default:
		vc = anyCodec[T]{codec}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: codec %q cannot encode %v: %w", ErrInvalidOption, codec.Name(), reflect.TypeFor[T](), err)
	}
	return vc.(valueCodec[T]), nil
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

var _ Codec = JSONCodec{}

// JSONCodec is the default Codec: encoding/json. Its Name is "json".
type JSONCodec struct{}

// Name implements Codec.
func (JSONCodec) Name() string { return "json" }

// Marshal implements Codec.
func (JSONCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements Codec.
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// jsonCodec encodes straight into the Cache's buffer, with the bytes json.Marshal writes.
type jsonCodec[T any] struct{}

func (jsonCodec[T]) appendEncode(dst []byte, v *T) ([]byte, error) {
	w := appendWriter{dst}
	if err := json.NewEncoder(&w).Encode(v); err != nil {
		return dst, err
	}
	return w.b[:len(w.b)-1], nil // Encode ends the value with a newline Marshal does not write
}

func (jsonCodec[T]) decode(data []byte, _ ownership) (v T, err error) {
	err = json.Unmarshal(data, &v)
	return v, err
}

// appendWriter is an io.Writer (and msgpack's writer) that appends to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *appendWriter) WriteByte(c byte) error {
	w.b = append(w.b, c)
	return nil
}

func (w *appendWriter) WriteString(s string) (int, error) {
	w.b = append(w.b, s...)
	return len(s), nil
}
