package envelope

import (
	"hash/fnv"
	"reflect"
	"strconv"
	"strings"
)

// Schema fingerprints a codec name and a description of the type behind the payload
// (DescribeType, or another identity the codec defines), so that a change of either behind a
// prefix makes old entries undecodable (a miss) instead of garbage. It is stored with every
// value: it depends on nothing but its arguments, the same in every process and Go version.
func Schema(codec, typeDesc string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(codec))
	h.Write([]byte{0})
	h.Write([]byte(typeDesc))
	return h.Sum32()
}

// DescribeType returns a canonical description of t for Schema: the same for the same type in
// every process, and different for types a codec may read differently.
//
// It is t's identity and shape, recursively: every named type by its import path and name
// (generic instantiations with their type arguments), then its underlying structure: kinds,
// array lengths, element, key, parameter and method types, and for structs each field's
// name, type and whole tag (json, msgpack, protobuf, or a custom codec's), in order. Struct
// fields that codecs skip are left out: unexported fields, unless embedded (encoding/json
// promotes an embedded type's exported fields). So a type whose state is unexported, such as
// time.Time, is described by its name alone, and its internals may change with the Go
// version without changing the fingerprint. A named type seen before in the description is
// referred to by its number ("@1" is the first one), which keeps recursive types finite and
// the description linear in the number of types.
//
// Example: for
//
//	package models
//	type User struct {
//		ID      int `json:"id"`
//		Friends []*User
//	}
//
// it returns `example.com/models.User=struct{ID int "json:\"id\"";Friends []*@1}`.
func DescribeType(t reflect.Type) string {
	d := describer{seen: map[reflect.Type]int{}}
	d.typ(t)
	return d.b.String()
}

type describer struct {
	b    strings.Builder
	seen map[reflect.Type]int // named types described so far, numbered from 1 in order
}

func (d *describer) typ(t reflect.Type) {
	if t.Name() != "" {
		if t.PkgPath() == "" { // predeclared: bool, int, string, error, ...
			d.b.WriteString(t.Name())
			return
		}
		if n, ok := d.seen[t]; ok {
			d.b.WriteByte('@')
			d.b.WriteString(strconv.Itoa(n))
			return
		}
		d.seen[t] = len(d.seen) + 1
		d.b.WriteString(t.PkgPath())
		d.b.WriteByte('.')
		d.b.WriteString(t.Name())
		d.b.WriteByte('=')
	}
	switch k := t.Kind(); k {
	case reflect.Array:
		d.b.WriteByte('[')
		d.b.WriteString(strconv.Itoa(t.Len()))
		d.b.WriteByte(']')
		d.typ(t.Elem())
	case reflect.Slice:
		d.b.WriteString("[]")
		d.typ(t.Elem())
	case reflect.Pointer:
		d.b.WriteByte('*')
		d.typ(t.Elem())
	case reflect.Map:
		d.b.WriteString("map[")
		d.typ(t.Key())
		d.b.WriteByte(']')
		d.typ(t.Elem())
	case reflect.Chan:
		switch t.ChanDir() {
		case reflect.RecvDir:
			d.b.WriteString("<-chan ")
		case reflect.SendDir:
			d.b.WriteString("chan<- ")
		default:
			d.b.WriteString("chan ")
		}
		d.typ(t.Elem())
	case reflect.Func:
		d.b.WriteString("func(")
		for i := range t.NumIn() {
			if i > 0 {
				d.b.WriteByte(',')
			}
			if t.IsVariadic() && i == t.NumIn()-1 {
				d.b.WriteString("...")
				d.typ(t.In(i).Elem())
				continue
			}
			d.typ(t.In(i))
		}
		d.b.WriteString(")(")
		for i := range t.NumOut() {
			if i > 0 {
				d.b.WriteByte(',')
			}
			d.typ(t.Out(i))
		}
		d.b.WriteByte(')')
	case reflect.Interface:
		d.b.WriteString("interface{")
		for i := range t.NumMethod() { // sorted by name
			m := t.Method(i)
			if i > 0 {
				d.b.WriteByte(';')
			}
			d.b.WriteString(m.Name)
			d.typ(m.Type)
		}
		d.b.WriteByte('}')
	case reflect.Struct:
		d.b.WriteString("struct{")
		first := true
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() && !f.Anonymous {
				continue
			}
			if !first {
				d.b.WriteByte(';')
			}
			first = false
			if f.Anonymous {
				d.b.WriteString("embed ")
			}
			d.b.WriteString(f.Name)
			d.b.WriteByte(' ')
			d.typ(f.Type)
			if f.Tag != "" {
				d.b.WriteByte(' ')
				d.b.WriteString(strconv.Quote(string(f.Tag)))
			}
		}
		d.b.WriteByte('}')
	default: // bool, numbers, string, unsafe.Pointer
		d.b.WriteString(k.String())
	}
}
