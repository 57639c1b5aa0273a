// Package codec is the vocabulary shared by cacheaside and its codecs: the Codec interface and
// the optional Binder a codec implements to check, fingerprint or speed up its work for one
// cached type. It has no dependencies, so a codec package (codec/msgpack, codec/proto, or your
// own) imports it rather than the cache.
//
// The cache stores, with every value, a fingerprint of the codec's Name and of a description
// of the cached type (Bound.Schema, or by default the Go type's import path, name and
// structure), so values written by another codec, or for another type or shape of it, read as
// misses, not garbage.
package codec

import "reflect"

// Codec turns values into bytes and back.
type Codec interface {
	// Name identifies the codec and its wire format; change it when the format changes.
	Name() string
	// Marshal encodes v, a pointer to the cached type's value.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a pointer to the cached type. It must neither keep nor
	// modify data: it may be the store's own copy, shared with other readers.
	Unmarshal(data []byte, v any) error
}

// Binder is an optional interface of a Codec that wants to know the cached type: to refuse a
// type it cannot encode, to describe the stored bytes by something other than the Go type, or
// to take a faster path. A cache calls Bind once, when it is created, with the cached type;
// an error makes the cache's constructor fail (cacheaside.New wraps it in ErrInvalidOption).
type Binder interface {
	Bind(t reflect.Type) (Bound, error)
}

// Bound is what a Binder declares for one cached type T. Its zero value means: the default
// fingerprint, Marshal and Unmarshal.
type Bound struct {
	// Schema, if not empty, describes what the stored bytes depend on besides the codec's
	// Name, in place of the Go type's description: for instance a protobuf message's full
	// name, since protobuf's own rules govern changes to a message. Values stored under
	// another Schema read as misses.
	Schema string
	// AppendMarshal, if not nil, is used instead of Marshal: it appends the encoding of v (a
	// *T) to dst and returns the extended slice. It lets a codec write straight into the
	// cache's buffer. The bytes must be those Marshal would produce.
	AppendMarshal func(dst []byte, v any) ([]byte, error)
	// Decode, if not nil, is used instead of Unmarshal: it decodes data into a new value of T,
	// returned as an any holding a T (not a *T). It must neither keep nor modify data. It
	// suits a T that is itself a pointer (a new message), where returning it costs nothing.
	Decode func(data []byte) (any, error)
}
