// Package proto is a cacheaside codec for Protocol Buffers messages
// (google.golang.org/protobuf), in their binary wire format. Use it with
// cacheaside.WithCodec(proto.Codec{}) on a Cache of a generated message pointer such as
// *pb.User. It lives in its own package so that programs that do not use it do not link
// protobuf.
package proto

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/cacheaside/cacheaside/codec"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

var (
	_ codec.Codec  = Codec{}
	_ codec.Binder = Codec{}
)

// Codec encodes Protocol Buffers messages. Its Name is "proto": values it stored before it
// moved out of package cacheaside (as cacheaside.ProtoCodec) still read. The cached type must
// be a pointer to a generated message, such as *pb.User: New fails with ErrInvalidOption
// otherwise. Values are fingerprinted by the message's full name, not its Go type: protobuf's
// own rules govern changes to a message (old encodings read with new fields unset). A Cache
// decodes without reflection. A nil message is returned to the callers that loaded it but not
// cached (it has no encoding distinct from an empty message).
type Codec struct{}

// Name implements codec.Codec.
func (Codec) Name() string { return "proto" }

var (
	errNotProto = errors.New("cacheaside: proto codec: value is not a proto.Message or a pointer to one")
	errNilProto = errors.New("cacheaside: proto codec: nil message")
	errType     = errors.New("the proto codec needs a pointer to a generated proto.Message type")
)

// Marshal implements codec.Codec: v is a proto.Message or a pointer to one.
func (Codec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return proto.Marshal(m)
	}
	m, err := messageAt(v)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(m)
}

// messageAt returns the message that v, a pointer to a message pointer, points to.
func messageAt(v any) (proto.Message, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() {
		if m, ok := rv.Elem().Interface().(proto.Message); ok {
			if rv.Elem().Kind() == reflect.Pointer && rv.Elem().IsNil() {
				return nil, errNilProto
			}
			return m, nil
		}
	}
	return nil, fmt.Errorf("%w: %T", errNotProto, v)
}

// Unmarshal implements codec.Codec: v is a message, which it resets and fills, or a pointer to
// a message pointer, which it sets to a new message.
func (Codec) Unmarshal(data []byte, v any) error {
	if m, ok := v.(proto.Message); ok {
		return proto.Unmarshal(data, m)
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() && rv.Elem().Kind() == reflect.Pointer {
		m, ok := reflect.New(rv.Elem().Type().Elem()).Interface().(proto.Message)
		if ok {
			if err := proto.Unmarshal(data, m); err != nil {
				return err
			}
			rv.Elem().Set(reflect.ValueOf(m))
			return nil
		}
	}
	return fmt.Errorf("%w: %T", errNotProto, v)
}

// Bind implements codec.Binder: t must be a pointer to a generated message. The schema is the
// message's full name; values are decoded into new messages of its type.
func (Codec) Bind(t reflect.Type) (b codec.Bound, err error) {
	if t.Kind() != reflect.Pointer || !t.Implements(reflect.TypeFor[proto.Message]()) {
		return b, errType
	}
	m := reflect.Zero(t).Interface().(proto.Message)
	defer func() {
		if recover() != nil { // a message type that cannot describe itself from a nil pointer
			b, err = codec.Bound{}, errType
		}
	}()
	// A generated message's ProtoReflect works on a nil pointer, and its Type makes new ones.
	typ := m.ProtoReflect().Type()
	if reflect.TypeOf(typ.New().Interface()) != t {
		return b, errType
	}
	return codec.Bound{
		Schema:        "proto message " + string(typ.Descriptor().FullName()),
		AppendMarshal: appendMarshal,
		Decode:        decoder(typ),
	}, nil
}

// appendMarshal encodes v, a pointer to a non-nil message pointer, appending to dst.
func appendMarshal(dst []byte, v any) ([]byte, error) {
	m, err := messageAt(v)
	if err != nil {
		return dst, err
	}
	if !m.ProtoReflect().IsValid() {
		return dst, errNilProto
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

func decoder(typ protoreflect.MessageType) func([]byte) (any, error) {
	return func(data []byte) (any, error) {
		m := typ.New().Interface()
		if err := proto.Unmarshal(data, m); err != nil {
			return nil, err
		}
		return m, nil
	}
}
