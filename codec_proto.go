package cacheaside

import (
	"errors"
	"fmt"
	"reflect"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

var _ Codec = ProtoCodec{}

// ProtoCodec encodes Protocol Buffers messages (google.golang.org/protobuf) in their binary wire
// format. Its Name is "proto". The cached type must be a pointer to a generated message, such
// as *pb.User: New fails with ErrInvalidOption otherwise. A Cache uses it without reflection. A
// nil message is returned to the callers that loaded it but not cached (it has no encoding
// distinct from an empty message).
type ProtoCodec struct{}

// Name implements Codec.
func (ProtoCodec) Name() string { return "proto" }

var (
	errNotProto = errors.New("cacheaside: proto codec: value is not a proto.Message or a pointer to one")
	errNilProto = errors.New("cacheaside: proto codec: nil message")
)

// Marshal implements Codec: v is a proto.Message or a pointer to one.
func (ProtoCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return proto.Marshal(m)
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && !rv.IsNil() {
		if m, ok := rv.Elem().Interface().(proto.Message); ok {
			if rv.Elem().IsNil() {
				return nil, errNilProto
			}
			return proto.Marshal(m)
		}
	}
	return nil, fmt.Errorf("%w: %T", errNotProto, v)
}

// Unmarshal implements Codec: v is a message, which it resets and fills, or a pointer to a
// message pointer, which it sets to a new message.
func (ProtoCodec) Unmarshal(data []byte, v any) error {
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

// bindProto returns the proto path for T, which must be a pointer to a generated message.
func bindProto[T any](ProtoCodec) (vc any, err error) {
	errType := errors.New("the proto codec needs a pointer to a generated proto.Message type")
	var zero T
	m, ok := any(zero).(proto.Message)
	if !ok || reflect.TypeFor[T]().Kind() != reflect.Pointer {
		return nil, errType
	}
	defer func() {
		if recover() != nil { // a message type that cannot describe itself from a nil pointer
			vc, err = nil, errType
		}
	}()
	// A generated message's ProtoReflect works on a nil pointer, and its Type makes new ones.
	typ := m.ProtoReflect().Type()
	if _, ok := typ.New().Interface().(T); !ok {
		return nil, errType
	}
	return protoCodec[T]{typ: typ}, nil
}

type protoCodec[T any] struct{ typ protoreflect.MessageType }

func (p protoCodec[T]) appendEncode(dst []byte, v *T) ([]byte, error) {
	m := any(*v).(proto.Message)
	if !m.ProtoReflect().IsValid() {
		return dst, errNilProto
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

func (p protoCodec[T]) decode(data []byte, _ ownership) (T, error) {
	m := p.typ.New().Interface()
	if err := proto.Unmarshal(data, m); err != nil {
		var zero T
		return zero, err
	}
	return m.(T), nil
}
