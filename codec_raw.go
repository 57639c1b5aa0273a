package cacheaside

import (
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

var (
	_ Codec       = RawCodec{}
	_ valueBinder = RawCodec{}
)

// RawCodec stores []byte and string values as they are, with no encoding. Its Name is "raw".
// New fails with ErrInvalidOption if the cached type is not exactly []byte or string.
//
// It copies only what it must. A fill appends the value straight into the stored frame. A hit
// returns a string that shares memory with the bytes read (they never change), and a []byte
// that is a fresh copy, unless the Cache itself just produced those bytes by decompressing or
// decrypting: then it is returned as is, and nothing else holds it. A []byte result never
// shares memory with the store's copy of the value, so writing to it cannot corrupt what other
// reads decode. It is still one value for every caller that receives it: the callers of one
// shared load, and, with WithLocalCache, every hit on the local cache (which keeps decoded
// values). Treat it as read-only, as any cached value.
type RawCodec struct{}

// Name implements Codec.
func (RawCodec) Name() string { return "raw" }

var errRawType = errors.New("cacheaside: raw codec: value is not a *[]byte or *string")

// Marshal implements Codec: v must be a *[]byte or a *string. A []byte is returned as is.
func (RawCodec) Marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case *[]byte:
		return *v, nil
	case *string:
		return []byte(*v), nil
	}
	return nil, fmt.Errorf("%w: %T", errRawType, v)
}

// Unmarshal implements Codec: v must be a *[]byte or a *string. It copies data.
func (RawCodec) Unmarshal(data []byte, v any) error {
	switch v := v.(type) {
	case *[]byte:
		*v = append([]byte(nil), data...)
		return nil
	case *string:
		*v = string(data)
		return nil
	}
	return fmt.Errorf("%w: %T", errRawType, v)
}

// bindValue returns the raw path for t, which must be []byte or string: reads may alias the
// bytes as far as their ownership allows, which only this package knows.
func (RawCodec) bindValue(t reflect.Type) (any, string, error) {
	switch t {
	case reflect.TypeFor[[]byte]():
		return rawBytes{}, envelope.DescribeType(t), nil
	case reflect.TypeFor[string]():
		return rawString{}, envelope.DescribeType(t), nil
	}
	return nil, "", errors.New("the raw codec stores []byte and string only")
}

type rawBytes struct{}

func (rawBytes) appendEncode(dst []byte, v *[]byte) ([]byte, error) { return append(dst, *v...), nil }

func (rawBytes) decode(data []byte, own ownership) ([]byte, error) {
	if own == exclusive {
		return data[:len(data):len(data)], nil
	}
	return append(make([]byte, 0, len(data)), data...), nil
}

type rawString struct{}

func (rawString) appendEncode(dst []byte, v *string) ([]byte, error) { return append(dst, *v...), nil }

func (rawString) decode(data []byte, own ownership) (string, error) {
	if own == borrowed || len(data) == 0 {
		return string(data), nil
	}
	return unsafe.String(&data[0], len(data)), nil
}
