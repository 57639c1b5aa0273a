package cacheaside

import "github.com/cacheaside/cacheaside/internal/envelope"

// schemaOf returns the fingerprint New stores with every value of a Cache under codec, whose
// Bind (or the default, for a codec without one) described the cached type as schema: a value
// whose fingerprint differs is a miss, reloaded, never decoded.
//
// It covers the codec's name and the type's identity: what the codec declares (codec/proto: the
// message's full name, since protobuf's own rules govern changes to a message and the codec
// reads old encodings with new fields unset), else the type's import path, name and structure
// (envelope.DescribeType): a struct gaining, losing, renaming or retyping an exported field, or
// changing a tag, makes every entry written before a miss.
func schemaOf(codec Codec, schema string) uint32 {
	return envelope.Schema(codec.Name(), schema)
}
