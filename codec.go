package cacheaside

import "encoding/json"

// Codec turns values into bytes and back. A Cache stores the codec's Name with every value, so
// values written by another codec (or for another type) read as misses, not garbage.
type Codec interface {
	// Name identifies the codec and its wire format; change it when the format changes.
	Name() string
	// Marshal encodes v, a pointer to the cached type's value.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a pointer to the cached type. It must not keep data.
	Unmarshal(data []byte, v any) error
}

var _ Codec = JSONCodec{}

// JSONCodec is the default Codec: encoding/json.
type JSONCodec struct{}

// Name implements Codec.
func (JSONCodec) Name() string { return "json" }

// Marshal implements Codec.
func (JSONCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements Codec.
func (JSONCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
