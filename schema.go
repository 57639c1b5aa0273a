package cacheaside

import (
	"reflect"

	"github.com/cacheaside/cacheaside/internal/envelope"
)

// schemaOf returns the fingerprint New stores with every value of a Cache[T] under codec,
// bound to T as vc: a value whose fingerprint differs is a miss, reloaded, never decoded.
//
// It covers the codec's name and T's identity: for ProtoCodec the message's full name
// (protobuf's own rules govern changes to a message: the codec reads old encodings with new
// fields unset), for any other codec T's import path, name and structure
// (envelope.DescribeType): a struct gaining, losing, renaming or retyping an exported field,
// or changing a tag, makes every entry written before a miss.
func schemaOf[T any](codec Codec, vc valueCodec[T]) uint32 {
	if p, ok := vc.(protoCodec[T]); ok {
		return envelope.Schema(codec.Name(), "proto message "+string(p.typ.Descriptor().FullName()))
	}
	return envelope.Schema(codec.Name(), envelope.DescribeType(reflect.TypeFor[T]()))
}
