package cacheaside

import "github.com/vmihailenco/msgpack/v5"

var _ Codec = MsgpackCodec{}

// MsgpackCodec encodes values as MessagePack (github.com/vmihailenco/msgpack/v5, its default
// settings: struct fields by their `msgpack` tag, else their Go name). Its Name is "msgpack".
// It is usually smaller and faster than JSON for structs.
type MsgpackCodec struct{}

// Name implements Codec.
func (MsgpackCodec) Name() string { return "msgpack" }

// Marshal implements Codec.
func (MsgpackCodec) Marshal(v any) ([]byte, error) { return msgpack.Marshal(v) }

// Unmarshal implements Codec.
func (MsgpackCodec) Unmarshal(data []byte, v any) error { return msgpack.Unmarshal(data, v) }

// msgpackCodec encodes straight into the Cache's buffer.
type msgpackCodec[T any] struct{}

func (msgpackCodec[T]) appendEncode(dst []byte, v *T) ([]byte, error) {
	w := appendWriter{dst}
	enc := msgpack.GetEncoder()
	enc.Reset(&w)
	err := enc.Encode(v)
	msgpack.PutEncoder(enc)
	return w.b, err
}

func (msgpackCodec[T]) decode(data []byte, _ ownership) (v T, err error) {
	err = msgpack.Unmarshal(data, &v)
	return v, err
}
