// Package msgpack is a cacheaside codec that encodes values as MessagePack
// (github.com/vmihailenco/msgpack/v5). Use it with cacheaside.WithCodec(msgpack.Codec{}). It
// lives in its own package so that programs that do not use it do not link the library.
package msgpack

import (
	"reflect"

	"github.com/cacheaside/cacheaside/codec"
	"github.com/vmihailenco/msgpack/v5"
)

var (
	_ codec.Codec  = Codec{}
	_ codec.Binder = Codec{}
)

// Codec encodes values as MessagePack with the library's default settings (struct fields by
// their `msgpack` tag, else their Go name). Its Name is "msgpack": values it stored before it
// moved out of package cacheaside (as cacheaside.MsgpackCodec) still read. It is usually
// smaller and faster than JSON for structs.
type Codec struct{}

// Name implements codec.Codec.
func (Codec) Name() string { return "msgpack" }

// Marshal implements codec.Codec.
func (Codec) Marshal(v any) ([]byte, error) { return msgpack.Marshal(v) }

// Unmarshal implements codec.Codec.
func (Codec) Unmarshal(data []byte, v any) error { return msgpack.Unmarshal(data, v) }

// Bind implements codec.Binder: any type, fingerprinted by its Go type, encoded straight into
// the cache's buffer.
func (Codec) Bind(reflect.Type) (codec.Bound, error) {
	return codec.Bound{AppendMarshal: appendMarshal}, nil
}

func appendMarshal(dst []byte, v any) ([]byte, error) {
	w := appendWriter{dst}
	enc := msgpack.GetEncoder()
	enc.Reset(&w)
	err := enc.Encode(v)
	msgpack.PutEncoder(enc)
	return w.b, err
}

// appendWriter is the msgpack encoder's writer: it appends to b.
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
