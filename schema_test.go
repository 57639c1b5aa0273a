package cacheaside

import (
	"context"
	"reflect"
	"sync/atomic"
	"testing"

	msgpackcodec "github.com/cacheaside/cacheaside/codec/msgpack"
	protocodec "github.com/cacheaside/cacheaside/codec/proto"
	"github.com/cacheaside/cacheaside/internal/envelope"
	v1 "github.com/cacheaside/cacheaside/internal/schematest/v1/models"
	v2 "github.com/cacheaside/cacheaside/internal/schematest/v2/models"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// checkShapeChange writes a as an A under one prefix, then reads the key with a cache of B,
// of another shape but the same reflect String, and back: each side's read of the other's
// entry is a miss, counted as undecodable and reloaded, never a decode into the wrong shape.
func checkShapeChange[A, B any](t *testing.T, codec Codec, a A, b B) {
	t.Helper()
	require.Equal(t, reflect.TypeFor[A]().String(), reflect.TypeFor[B]().String(), "the types must look alike by name")
	forEachBackend(t, func(t *testing.T, be backend) {
		s := be.newStore(t)
		opts := steady(WithPrefix(testPrefix(t)), WithCodec(codec))
		ca, cb := newTestCache[A](t, s, opts...), newTestCache[B](t, s, opts...)
		var loads atomic.Int32
		loadA := func(context.Context) (A, error) { loads.Add(1); return a, nil }
		loadB := func(context.Context) (B, error) { loads.Add(1); return b, nil }

		gotA, err := ca.GetOrLoad(bg(), "k", loadA)
		require.NoError(t, err)
		require.Equal(t, a, gotA)
		gotB, err := cb.GetOrLoad(bg(), "k", loadB)
		require.NoError(t, err)
		require.Equal(t, b, gotB, "the new shape's loader value, not the old entry decoded")
		require.EqualValues(t, 2, loads.Swap(0), "the old shape's entry is a miss")
		require.EqualValues(t, 1, cb.Stats().UndecodableValues)
		gotB, err = cb.GetOrLoad(bg(), "k", loadB)
		require.NoError(t, err)
		require.Equal(t, b, gotB)
		require.Zero(t, loads.Swap(0), "the reloaded entry is a hit for its shape")

		gotA, err = ca.GetOrLoad(bg(), "k", loadA)
		require.NoError(t, err)
		require.Equal(t, a, gotA)
		require.EqualValues(t, 1, loads.Swap(0), "and back: the new shape's entry is a miss for the old")
	})
}

// A struct changed behind a prefix (a field added, replaced or retagged, or the type moved to
// another import path) reads the entries written before as misses: reloaded, never garbage.
func TestTypeShapeChangeIsAMiss(t *testing.T) {
	t.Run("local types of one name", func(t *testing.T) {
		type User struct {
			ID    int
			Email string
		}
		old := User{ID: 1, Email: "ada@example.com"}
		func() {
			type User struct {
				ID     int
				Phone  string
				Active bool
			}
			checkShapeChange(t, JSONCodec{}, old, User{ID: 1, Phone: "555", Active: true})
		}()
	})
	t.Run("an added optional field", func(t *testing.T) {
		type User struct {
			ID    int    `msgpack:"id"`
			Email string `msgpack:"email"`
		}
		old := User{ID: 1, Email: "ada@example.com"}
		func() {
			type User struct {
				ID    int    `msgpack:"id"`
				Email string `msgpack:"email"`
				Phone string `msgpack:"phone,omitempty"`
			}
			checkShapeChange(t, msgpackcodec.Codec{}, old, User{ID: 1, Email: "ada@example.com", Phone: "555"})
		}()
	})
	t.Run("a retagged field", func(t *testing.T) {
		type User struct {
			ID int `json:"id"`
		}
		old := User{ID: 1}
		func() {
			type User struct {
				ID int `json:"user_id"`
			}
			checkShapeChange(t, JSONCodec{}, old, User{ID: 1})
		}()
	})
	t.Run("v1 and v2 packages", func(t *testing.T) {
		checkShapeChange(t, JSONCodec{}, v1.User{ID: 1, Email: "ada@example.com"}, v2.User{ID: 1, Phone: "555", Active: true})
	})
}

// schemaGolden is a fixed type whose fingerprint is pinned below.
type schemaGolden struct {
	ID   int64             `json:"id"`
	Tags []string          `json:"tags,omitempty"`
	Next *schemaGolden     `json:"next"`
	Meta map[string]string `json:"meta"`
}

// The fingerprint New computes is stored in Redis and compared by every other process: it is
// fixed for a type and codec, whatever the process (the values below were also computed
// independently of this code: FNV-1a 32 of codec name, a zero byte, and the description). A
// proto message under codec/proto is known by its full name.
func TestSchemaGolden(t *testing.T) {
	const desc = `github.com/cacheaside/cacheaside.schemaGolden=struct{` +
		`ID int64 "json:\"id\"";Tags []string "json:\"tags,omitempty\"";` +
		`Next *@1 "json:\"next\"";Meta map[string]string "json:\"meta\""}`
	require.Equal(t, desc, envelope.DescribeType(reflect.TypeFor[schemaGolden]()))
	for _, tc := range []struct {
		name   string
		schema uint32
		want   uint32
	}{
		{"json struct", newTestCache[schemaGolden](t, NewMemoryStore()).entries.schema, 0x8539ad09},
		{"msgpack struct", newTestCache[schemaGolden](t, NewMemoryStore(), WithCodec(msgpackcodec.Codec{})).entries.schema, 0x7bdf1ed1},
		{"raw bytes", newTestCache[[]byte](t, NewMemoryStore(), WithCodec(RawCodec{})).entries.schema, 0x90ed7565},
		{"proto message", newTestCache[*structpb.Struct](t, NewMemoryStore(), WithCodec(protocodec.Codec{})).entries.schema, 0x841f4d43},
	} {
		require.Equal(t, tc.want, tc.schema, "%s: %#x", tc.name, tc.schema)
	}
	require.Equal(t, envelope.Schema("proto", "proto message google.protobuf.Struct"),
		newTestCache[*structpb.Struct](t, NewMemoryStore(), WithCodec(protocodec.Codec{})).entries.schema)
	require.NotEqual(t,
		newTestCache[*wrapperspb.StringValue](t, NewMemoryStore(), WithCodec(protocodec.Codec{})).entries.schema,
		newTestCache[*wrapperspb.BytesValue](t, NewMemoryStore(), WithCodec(protocodec.Codec{})).entries.schema)
}
